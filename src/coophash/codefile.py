"""Packed code files: codes, ids and (optional) labels in one safetensors file, written atomically.

Layout: tensors ``codes`` (n, ceil(nbits/8)) uint8 LSB-first, ``ids`` (n,) int64, optionally ``labels``
(n, C) float32 multi-hot; metadata ``format = coophash-codes``, ``version``, ``nbits``, free-form
``source`` and (version 2 on) ``sha256``, a checksum of the whole file verified on load
(:mod:`coophash.utils.integrity`); version-1 files, without one, are read as they are.  No pickle is
involved in reading or writing.

The labels of an index's codes live beside it in ``<index>.labels.safetensors``, a code file holding the
same codes and ids (:func:`save_index_labels`); :func:`load_index_labels` refuses one whose codes or ids
differ from the index's, so labels can never be shown for other codes than those they were written with.
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
from coophash.utils.integrity import IntegrityError, read_safetensors, seal_safetensors
from coophash.utils.io import atomic_write_bytes

__all__ = ["CodeFile", "save_codes", "load_codes", "CodeFileError", "index_labels_path", "save_index_labels",
           "load_index_labels"]

FORMAT = "coophash-codes"
VERSION = "2"
_SEALED_VERSION = 2  # first version with a checksum: from here on a file without one is damaged


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
    atomic_write_bytes(Path(path), seal_safetensors(st_save, tensors, meta))


def load_codes(path: str | Path, nbits: Optional[int] = None) -> CodeFile:
    """Read a code file, verifying its checksum; raise CodeFileError naming the file when it is not a valid one."""
    p = Path(path)
    if not p.is_file():
        raise CodeFileError(f"{p}: code file not found")
    try:
        data = p.read_bytes()
        meta, sealed = read_safetensors(data)
    except (IntegrityError, OSError) as exc:
        raise CodeFileError(f"{p}: unreadable code file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CodeFileError(f"{p}: not a coophash code file (format={meta.get('format')!r})")
    version = _int_field(p, meta, "version")
    if version > int(VERSION):
        raise CodeFileError(f"{p}: code file version {version} is newer than this coophash reads ({VERSION})")
    if version >= _SEALED_VERSION and not sealed:
        raise CodeFileError(f"{p}: unreadable code file: its checksum is missing (damaged)")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CodeFileError(f"{p}: unreadable code file (corrupted tensors): {exc}") from None
    file_bits = _int_field(p, meta, "nbits")
    if nbits is not None and file_bits != int(nbits):
        raise CodeFileError(f"{p}: holds {file_bits}-bit codes, expected {nbits}")
    if "codes" not in tensors or "ids" not in tensors:
        raise CodeFileError(f"{p}: missing 'codes' or 'ids'")
    try:
        codes = check_packed(tensors["codes"].numpy(), file_bits)
    except (TypeError, ValueError) as exc:
        raise CodeFileError(f"{p}: {exc}") from exc
    ids = tensors["ids"].numpy()
    labels = tensors["labels"].numpy() if "labels" in tensors else None
    if ids.shape != (codes.shape[0],) or (labels is not None and (labels.ndim != 2 or len(labels) != len(codes))):
        raise CodeFileError(f"{p}: {len(codes)} codes but ids of shape {ids.shape}"
                            + ("" if labels is None else f" and labels of shape {labels.shape}"))
    return CodeFile(codes, file_bits, ids, labels, meta.get("source", ""))


def _int_field(p: Path, meta: dict, key: str) -> int:
    """An integer metadata field (CodeFileError naming the file and field when absent or not an integer)."""
    try:
        return int(meta.get(key, ""))
    except ValueError:
        raise CodeFileError(f"{p}: bad metadata field {key!r}: {meta.get(key)!r:.40}") from None


# ------------------------------------------------------------------------------------------ index labels
def index_labels_path(index_path: str | Path) -> Path:
    """The code file holding the labels of an index's codes: ``<index>.labels.safetensors``."""
    p = Path(index_path)
    return p.with_name(p.name + ".labels.safetensors")


def save_index_labels(index_path: str | Path, cf: CodeFile) -> Optional[Path]:
    """Write the labels of the codes just indexed at ``index_path`` (``cf``: the code file indexed).

    Without labels, a labels file left by an earlier index at that path is removed (it belongs to other
    codes).  Returns the labels file, or None.
    """
    path = index_labels_path(index_path)
    if cf.labels is None:
        path.unlink(missing_ok=True)
        return None
    save_codes(path, cf.codes, cf.nbits, ids=cf.ids, labels=cf.labels, source=cf.source)
    return path


def load_index_labels(index_path: str | Path, codes: np.ndarray, ids: np.ndarray) -> Optional[dict[int, np.ndarray]]:
    """id -> label vector of the index at ``index_path`` whose ``codes``/``ids`` are given (None: no labels file).

    Raises CodeFileError when the labels file is damaged or holds other codes or ids than the index (a stale
    file from an earlier index at that path).
    """
    path = index_labels_path(index_path)
    if not path.exists():
        return None
    lf = load_codes(path)
    if lf.labels is None:
        raise CodeFileError(f"{path}: a labels file without labels")
    if not (np.array_equal(lf.ids, np.asarray(ids)) and np.array_equal(lf.codes, np.asarray(codes))):
        raise CodeFileError(f"{path}: these labels belong to other codes than the index {Path(index_path).name} "
                            "(stale); build the index again with `coophash index`")
    return dict(zip(lf.ids.tolist(), lf.labels))
