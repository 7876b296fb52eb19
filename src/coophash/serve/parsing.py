"""Request fields to arrays: packed codes from hex or base64 text, ids and label lists, with 4xx messages.

Codes travel packed LSB-first, ``ceil(bits / 8)`` bytes each (the layout of :mod:`coophash.codes` and FAISS):
bit ``j`` of a code is bit ``j % 8`` of byte ``j // 8``; unused high bits of the last byte must be zero.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Optional

import numpy as np

from coophash.codes import n_bytes

from .config import ServeError

__all__ = ["parse_codes", "parse_ids", "parse_int_list", "parse_labels", "format_code"]

ENCODINGS = ("hex", "base64")
_INT64_MAX = 2**63 - 1


def _decode_one(text: str, encoding: str, position: int) -> bytes:
    """One code string → its bytes (ServeError 400 when the text is not valid in ``encoding``)."""
    if not isinstance(text, str):
        raise ServeError(400, f"codes[{position}]: expected a string, got {type(text).__name__}")
    try:
        if encoding == "hex":
            return bytes.fromhex(text.strip())
        return base64.b64decode(text.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise ServeError(400, f"codes[{position}]: not valid {encoding} text: {text[:40]!r}") from None


def parse_codes(texts: Sequence[str], encoding: str, nbits: int, limit: int) -> np.ndarray:
    """Code strings → packed uint8 codes ``(n, ceil(nbits/8))``; 400 on a wrong width or non-zero padding bits."""
    if encoding not in ENCODINGS:
        raise ServeError(400, f"encoding must be 'hex' or 'base64', got {encoding!r}")
    if len(texts) == 0:
        raise ServeError(400, "codes: give at least one code")
    if len(texts) > limit:
        raise ServeError(413, f"codes: {len(texts)} codes in one request, the limit is {limit}")
    width = n_bytes(nbits)
    out = np.zeros((len(texts), width), dtype=np.uint8)
    for i, text in enumerate(texts):
        raw = _decode_one(text, encoding, i)
        if len(raw) != width:
            raise ServeError(
                400, f"codes[{i}]: {len(raw)} bytes, but {nbits}-bit codes are {width} bytes "
                f"({2 * width} hex digits) packed LSB-first"
            )
        out[i] = np.frombuffer(raw, dtype=np.uint8)
    rem = nbits % 8
    if rem and np.any(out[:, -1] >> rem):
        bad = int(np.flatnonzero(out[:, -1] >> rem)[0])
        raise ServeError(400, f"codes[{bad}]: bits above bit {nbits - 1} must be zero for {nbits}-bit codes")
    return out


def format_code(code: np.ndarray) -> str:
    """A packed code as lowercase hex (the form ``parse_codes`` reads back)."""
    return bytes(np.asarray(code, dtype=np.uint8)).hex()


def parse_int_list(text: str, field: str) -> list[int]:
    """``"3, 5,8"`` → ``[3, 5, 8]`` (empty text → ``[]``); 400 when an entry is not an integer."""
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise ServeError(400, f"{field}: {part[:40]!r} is not an integer") from None
    return out


def parse_ids(ids: Sequence[int], count: int) -> np.ndarray:
    """Item ids for ``count`` new items: non-negative, unique, one per item (400 otherwise)."""
    values = [int(i) for i in ids]
    if any(not 0 <= i <= _INT64_MAX for i in values):
        raise ServeError(400, f"ids: ids must be integers in 0..{_INT64_MAX}")
    arr = np.asarray(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)
    if arr.shape[0] != count:
        raise ServeError(400, f"ids: {arr.shape[0]} ids for {count} items; give one id per item")
    if np.unique(arr).shape[0] != count:
        raise ServeError(400, "ids: the same id appears twice in one request")
    return arr


def parse_labels(
    labels: Optional[Sequence[Sequence[int]]], count: int, n_classes: int, field: str = "labels"
) -> list[Optional[tuple[int, ...]]]:
    """Class indices per item (None: unknown); a single list applies to every item; 400 when out of range."""
    if labels is None or len(labels) == 0:
        return [None] * count
    if len(labels) == 1 and count > 1:
        labels = list(labels) * count
    if len(labels) != count:
        raise ServeError(400, f"{field}: {len(labels)} label lists for {count} items")
    out: list[Optional[tuple[int, ...]]] = []
    for i, row in enumerate(labels):
        classes = tuple(sorted({int(c) for c in row}))
        if any(c < 0 or c >= n_classes for c in classes):
            raise ServeError(400, f"{field}[{i}]: class indices must be in 0..{n_classes - 1}, got {list(row)}")
        out.append(classes or None)
    return out
