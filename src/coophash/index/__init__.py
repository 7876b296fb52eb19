"""Exact Hamming-space retrieval: :class:`HammingIndex` (numba / NumPy / FAISS backends, multi-index
hashing for radius search, versioned checksummed files); :class:`MilvusIndex`, the same API on a Milvus
server (binary vectors, BIN_FLAT / BIN_IVF_FLAT), for collections larger than one machine.

    >>> from coophash.index import HammingIndex, IndexFileError
"""
from .fileio import IndexFileError
from .hamming_index import BACKENDS, HammingIndex, available_backends
from .milvus import MilvusIndex, MilvusIndexError  # pymilvus is imported only when a MilvusIndex is opened

__all__ = ["HammingIndex", "IndexFileError", "BACKENDS", "available_backends", "MilvusIndex", "MilvusIndexError"]
