"""Exact Hamming-space retrieval: :class:`HammingIndex` (numba / NumPy / FAISS backends, multi-index
hashing for radius search, versioned checksummed files).

    >>> from coophash.index import HammingIndex, IndexFileError
"""
from .fileio import IndexFileError
from .hamming_index import BACKENDS, HammingIndex, available_backends

__all__ = ["HammingIndex", "IndexFileError", "BACKENDS", "available_backends"]
