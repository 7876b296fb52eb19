"""Datasets, readers, augmentations and seeded split protocols (see DESIGN.md §4).

``load_dataset(name, root, image_size, channels, **kw)`` returns a :class:`HashDataset`;
``make_protocol(dataset, protocol, seed, label_fraction, **params)`` returns a :class:`Manifest`
of split indices that ``save``/``load`` as deterministic JSON.
"""
from coophash.data.dataset import HashDataset, ImageFiles, one_hot
from coophash.data.errors import DataError
from coophash.data.pixels import IMAGE_EXTENSIONS, prepare_pixels, read_image_file, to_float
from coophash.data.protocols import PROTOCOLS, SPLITS, Manifest, make_protocol
from coophash.data.readers import (
    DATASETS,
    list_datasets,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_image_list,
    load_mnist5k,
    load_mnist_idx,
    read_idx,
)
from coophash.data.safe_pickle import load_restricted_pickle

__all__ = [
    "HashDataset",
    "read_image_file",
    "ImageFiles",
    "DataError",
    "one_hot",
    "prepare_pixels",
    "to_float",
    "IMAGE_EXTENSIONS",
    "DATASETS",
    "list_datasets",
    "load_dataset",
    "load_mnist5k",
    "load_digits",
    "load_cifar10",
    "load_image_list",
    "load_image_folder",
    "load_mnist_idx",
    "read_idx",
    "load_restricted_pickle",
    "Manifest",
    "make_protocol",
    "PROTOCOLS",
    "SPLITS",
]
