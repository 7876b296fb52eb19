"""A restricted unpickler for data files such as CIFAR-10's python batches.

``pickle.load`` runs whatever a file asks for, so it must never see untrusted input. This unpickler
refuses every global except the handful needed to rebuild plain numpy arrays (under both the
``numpy.core`` names of old files and the ``numpy._core`` names of numpy 2), plus ``_codecs.encode``
restricted to latin-1 (how Python 3 protocol-2 pickles store ``bytes``). Containers, strings, bytes
and numbers need no globals at all.
"""
from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Tuple, Union

import numpy as np

from coophash.data.errors import DataError

__all__ = ["load_restricted_pickle", "loads_restricted_pickle", "ALLOWED_GLOBALS"]


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; any codec but latin-1 is refused."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    if not isinstance(text, str):
        raise pickle.UnpicklingError("_codecs.encode expects a str")
    return text.encode("latin-1", errors)


def _numpy_reconstructors() -> Tuple[Callable[..., Any], Callable[..., Any]]:
    """numpy's own array rebuild functions, taken from its reductions (no private imports)."""
    sample = np.zeros(1, dtype=np.uint8)
    return sample.__reduce__()[0], sample.__reduce_ex__(5)[0]


@functools.lru_cache(maxsize=1)
def _allowed() -> Mapping[Tuple[str, str], Any]:
    """(module, name) → the object the unpickler may hand out."""
    reconstruct, frombuffer = _numpy_reconstructors()
    table: Dict[Tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return MappingProxyType(table)


ALLOWED_GLOBALS: Tuple[Tuple[str, str], ...] = tuple(sorted(_allowed()))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` only resolves :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global, refuse every other one."""
        allowed = _allowed()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return allowed[(module, name)]


def loads_restricted_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` (keys and strings stay ``bytes``: ``encoding="bytes"``) with the restricted unpickler."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{source}: refused to unpickle ({exc}); only plain data and numpy arrays are read") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise DataError(f"{source}: corrupt pickle ({type(exc).__name__}: {exc})") from exc


def load_restricted_pickle(path: Union[str, Path]) -> Any:
    """Read a pickle file safely (see module docstring); errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    return loads_restricted_pickle(data, str(path))
