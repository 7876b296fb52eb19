"""Checksums sealed inside a file: a SHA-256 of every byte of the file, written into the file itself.

A writer puts :data:`PLACEHOLDER` (64 zeros) where the digest goes, e.g. as the value of a ``"sha256"``
field, hashes the whole file, then writes the digest over the placeholder (:func:`seal`).  A reader puts
the placeholder back, hashes and compares (:func:`verify`).  Every byte is covered: a change anywhere,
the digest included, is a mismatch; a truncation too.  Checkpoints, code files and fakes files (safetensors,
the digest in the header's metadata: :func:`seal_safetensors` / :func:`read_safetensors`), manifests,
run configs and metrics lines use it.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Callable, Optional

__all__ = ["CHECKSUM_KEY", "PLACEHOLDER", "IntegrityError", "seal", "verify", "seal_safetensors",
           "read_safetensors"]

CHECKSUM_KEY = "sha256"
PLACEHOLDER = b"0" * 64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ST_FIELD = b'"' + CHECKSUM_KEY.encode() + b'":"'  # how the digest appears in a safetensors header (compact JSON)


class IntegrityError(ValueError):
    """A file is truncated, damaged or not of the expected layout (callers prefix the file name)."""


def _find(data: bytes, needle: bytes, start: int, end: Optional[int]) -> int:
    """The one position of ``needle`` in ``data[start:end]``; IntegrityError when absent or repeated."""
    region = data[start:end] if (start or end is not None) else data
    count = region.count(needle)
    if count != 1:
        raise IntegrityError("the checksum field is missing" if count == 0 else "the checksum field is repeated")
    return start + region.find(needle)


def seal(data: bytes, field: bytes, start: int = 0, end: Optional[int] = None) -> bytes:
    """``data`` with the placeholder after ``field`` (exactly once in ``data[start:end]``) replaced by the digest."""
    pos = _find(data, field + PLACEHOLDER, start, end) + len(field)
    digest = hashlib.sha256(data).hexdigest().encode()
    return b"".join((data[:pos], digest, data[pos + len(PLACEHOLDER):]))


def verify(data: bytes, field: bytes, digest: str, start: int = 0, end: Optional[int] = None) -> None:
    """Raise IntegrityError unless ``digest`` (after ``field`` in ``data[start:end]``) is the seal of ``data``."""
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise IntegrityError(f"the checksum {str(digest)[:70]!r} is not 64 hexadecimal digits (damaged)")
    pos = _find(data, field + digest.encode(), start, end) + len(field)
    h = hashlib.sha256()
    h.update(memoryview(data)[:pos])
    h.update(PLACEHOLDER)
    h.update(memoryview(data)[pos + len(PLACEHOLDER):])
    if h.hexdigest() != digest:
        raise IntegrityError("checksum mismatch (SHA-256): the file was damaged or changed after it was written")


def seal_safetensors(save: Callable[..., bytes], tensors: Mapping, metadata: Mapping[str, str]) -> bytes:
    """The bytes of a safetensors file of ``tensors`` (``save``: ``safetensors.*.save``) with a sealed
    ``sha256`` entry in its metadata."""
    meta = dict(metadata)
    meta[CHECKSUM_KEY] = PLACEHOLDER.decode()
    data = save(dict(tensors), metadata=meta)
    n = int.from_bytes(data[:8], "little")
    return seal(data, _ST_FIELD, 8, 8 + n)


def read_safetensors(data: bytes) -> tuple[dict[str, str], bool]:
    """(metadata, sealed) of safetensors bytes, checking the layout and, where there is one, the checksum.

    ``sealed`` is False for a file without a checksum (written before checksums; callers decide whether
    to accept it).  Raises IntegrityError for anything that is not a complete, intact safetensors file.
    """
    if len(data) < 8:
        raise IntegrityError(f"not a safetensors file ({len(data)} bytes; truncated or empty)")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or 8 + n > len(data):
        raise IntegrityError(f"not a safetensors file (header of {n} bytes in a file of {len(data)}; "
                             "truncated or corrupted)")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError("not a safetensors file (its header is not valid JSON; corrupted)") from None
    if not isinstance(header, dict):
        raise IntegrityError("not a safetensors file (its header is not a JSON object; corrupted)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise IntegrityError("corrupted safetensors header (metadata is not a mapping of strings)")
    end = _data_end(header)
    if 8 + n + end != len(data):
        kind = "truncated" if 8 + n + end > len(data) else "has trailing bytes"
        raise IntegrityError(f"safetensors file {kind}: {len(data)} bytes, its header describes {8 + n + end}")
    if CHECKSUM_KEY not in meta:
        return meta, False
    verify(data, _ST_FIELD, meta[CHECKSUM_KEY], 8, 8 + n)
    return meta, True


def _data_end(header: dict) -> int:
    """The end of the data section described by a safetensors header (its tensors' largest end offset)."""
    end = 0
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise IntegrityError(f"corrupted safetensors header (entry {str(name)[:60]!r} has no valid data offsets)")
        end = max(end, offsets[1])
    return end
