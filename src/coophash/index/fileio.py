"""Versioned binary file format of a :class:`~coophash.index.HammingIndex` (no pickle).

Layout (all integers little-endian)::

    offset  size         field
    0       5            magic  b"CHIDX"
    5       1            format version (1)
    6       2            flags (0, reserved)
    8       4            nbits
    12      4            byte width per code (ceil(nbits / 8))
    16      8            count n
    24      n * width    codes, packed LSB-first (the FAISS layout), row-major
    ...     n * 8        ids, int64
    ...     32           SHA-256 of every preceding byte (header + codes + ids)

The file is written to a temporary file in the destination directory, flushed, fsynced and moved into
place with ``os.replace`` (atomic on POSIX and Windows), so a crash never leaves a half-written index
under the final name.
"""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Union

import numpy as np

from coophash.utils.io import atomic_write_bytes

from ..codes import n_bytes

__all__ = ["FORMAT_VERSION", "MAGIC", "IndexFileError", "read_index_file", "write_index_file"]

PathLike = Union[str, "os.PathLike[str]"]

MAGIC = b"CHIDX"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<5sBHIIQ")
_DIGEST = 32


class IndexFileError(ValueError):
    """An index file is unreadable: truncated, corrupted, of another format/version or of unexpected nbits."""


def write_index_file(path: PathLike, nbits: int, codes: np.ndarray, ids: np.ndarray) -> None:
    """Write codes ``(n, ceil(nbits/8))`` uint8 and ids ``(n,)`` atomically to ``path``."""
    path = Path(path)
    width = n_bytes(nbits)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    ids_le = np.ascontiguousarray(ids, dtype="<i8")
    if codes.shape != (ids_le.shape[0], width):
        raise ValueError(f"codes shape {codes.shape} does not match {ids_le.shape[0]} ids of width {width}")
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, int(nbits), width, int(ids_le.shape[0]))
    digest = hashlib.sha256()

    def blocks():
        for block in (header, memoryview(codes.reshape(-1)).cast("B"), memoryview(ids_le).cast("B")):
            digest.update(block)
            yield block
        yield digest.digest()

    atomic_write_bytes(path, blocks())


def read_index_file(path: PathLike, nbits: int | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Read and verify an index file; return ``(nbits, codes (n, width) uint8, ids (n,) int64)``.

    Raises :class:`IndexFileError` naming the file when it is truncated, has trailing bytes, a wrong magic
    or version, a checksum mismatch, or (``nbits`` given) codes of another length.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise IndexFileError(
            f"{path}: truncated index file ({len(data)} bytes, a header alone is {_HEADER.size} bytes)"
        )
    magic, version, _flags, file_nbits, width, count = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise IndexFileError(f"{path}: not a coophash index file (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise IndexFileError(
            f"{path}: unsupported index format version {version} (this coophash reads version {FORMAT_VERSION})"
        )
    if file_nbits <= 0 or width != n_bytes(file_nbits):
        raise IndexFileError(
            f"{path}: corrupted header: nbits={file_nbits} with byte width {width} "
            f"(expected width {n_bytes(file_nbits) if file_nbits > 0 else '?'})"
        )
    expected = _HEADER.size + count * width + count * 8 + _DIGEST
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise IndexFileError(
            f"{path}: index file {kind}: {len(data)} bytes, expected {expected} for {count} codes of {width} bytes"
        )
    body = memoryview(data)[: expected - _DIGEST]
    if hashlib.sha256(body).digest() != data[expected - _DIGEST :]:
        raise IndexFileError(f"{path}: checksum mismatch (SHA-256); the file is corrupted")
    if nbits is not None and int(nbits) != file_nbits:
        raise IndexFileError(f"{path}: index holds {file_nbits}-bit codes, expected {int(nbits)}-bit codes")
    off = _HEADER.size
    codes = np.frombuffer(data, dtype=np.uint8, count=count * width, offset=off).reshape(count, width).copy()
    off += count * width
    ids = np.frombuffer(data, dtype="<i8", count=count, offset=off).astype(np.int64)
    return int(file_nbits), codes, ids
