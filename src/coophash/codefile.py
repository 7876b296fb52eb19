"""Packed code files: codes, ids and (optional) labels in one safetensors file, written atomically.

Layout: tensors ``codes`` (n, ceil(nbits/8)) uint8 LSB-first, ``ids`` (n,) int64, optionally ``labels``
(n, C) float32 multi-hot; metadata ``format = coophash-codes``, ``version``, ``nbits`` and free-form
``source``.  No pickle is involved in reading or writing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from coophash.codes import check_packed
from coophash.utils.io import atomic_write_bytes

__all__ = ["CodeFile", "save_codes", "load_codes", "CodeFileError"]

FORMAT = "coophash-codes"
VERSION = "1"


class CodeFileError(ValueError):
    """A code file is missing, corrupt or not what was expected."""


@dataclass
class CodeFile:
    """Contents of a code file."""

    codes: np.ndarray
    nbits: int
    ids: np.ndarray
    labels: Optional[np.ndarray] = None
    source: str = ""


def save_codes(
    path: str | Path,
    codes: np.ndarray,
    nbits: int,
    ids: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    source: str = "",
) -> None:
    """Write packed codes (and ids/labels) atomically."""
    codes = check_packed(codes, nbits)
    n = codes.shape[0]
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
    tensors = {"codes": torch.from_numpy(codes.copy()), "ids": torch.from_numpy(ids.copy())}
    if labels is not None:
        lab = np.asarray(labels, dtype=np.float32)
        if lab.ndim != 2 or lab.shape[0] != n:
            raise ValueError(f"labels must have shape ({n}, C), got {lab.shape}")
        tensors["labels"] = torch.from_numpy(lab.copy())
    meta = {"format": FORMAT, "version": VERSION, "nbits": str(int(nbits)), "source": source}
    atomic_write_bytes(Path(path), st_save(tensors, metadata=meta))


def load_codes(path: str | Path, nbits: Optional[int] = None) -> CodeFile:
    """Read a code file; raise CodeFileError naming the file when it is not a valid one."""
    p = Path(path)
    if not p.is_file():
        raise CodeFileError(f"{p}: code file not found")
    data = p.read_bytes()
    try:
        tensors = st_load(data)
        from safetensors import safe_open  # metadata needs the file API

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, ValueError, OSError) as exc:
        raise CodeFileError(f"{p}: not a readable code file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CodeFileError(f"{p}: not a coophash code file (format={meta.get('format')!r})")
    file_bits = int(meta.get("nbits", "0"))
    if nbits is not None and file_bits != int(nbits):
        raise CodeFileError(f"{p}: holds {file_bits}-bit codes, expected {nbits}")
    if "codes" not in tensors or "ids" not in tensors:
        raise CodeFileError(f"{p}: missing 'codes' or 'ids'")
    try:
        codes = check_packed(tensors["codes"].numpy(), file_bits)
    except (TypeError, ValueError) as exc:
        raise CodeFileError(f"{p}: {exc}") from exc
    labels = tensors["labels"].numpy() if "labels" in tensors else None
    return CodeFile(codes, file_bits, tensors["ids"].numpy(), labels, meta.get("source", ""))
