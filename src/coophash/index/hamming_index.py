"""`HammingIndex`: exact Hamming-space retrieval over packed binary codes (FAISS-like API).

Contract shared by every backend (``"numba"``, ``"numpy"``, ``"faiss"``), which give identical answers:

* codes are packed LSB-first ``uint8`` arrays of shape ``(n, ceil(nbits / 8))`` (the FAISS layout, see
  :mod:`coophash.codes`); unused high bits of the last byte must be zero;
* every code carries an ``int64`` id (non-negative; default ``0, 1, 2, ...`` continuing across ``add``
  calls);
* ``search`` returns, per query, the ``k`` nearest codes sorted by distance, **ties broken by insertion
  order** (the code added first comes first; ``remove_ids`` keeps the order of the rest).  Where fewer
  than ``k`` codes exist the row is padded with id ``-1`` and distance ``2**31 - 1`` (FAISS's values);
* ``range_search`` returns every code with distance ``<= r`` (inclusive, unlike FAISS's strict
  ``< radius``), each query's hits sorted by (distance, insertion order), in FAISS's ``lims`` layout.
  Small radii are answered by multi-index hashing (exact, sublinear, tables built lazily on the first
  radius query and dropped by ``add``/``remove_ids``/``reset``); large radii fall back to the scan.

Internally codes are zero-padded to whole 64-bit words (distances are unchanged) and stored word-major,
``(W, capacity)``, so that every scan reads contiguous memory.  Not thread-safe for concurrent
``add``/``remove_ids`` and searches.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Union

import numpy as np
import torch

from ..codes import check_packed, n_bytes
from . import _faiss_backend, _kernels, _numpy_backend, mih
from .fileio import IndexFileError, read_index_file, write_index_file

__all__ = ["HammingIndex", "IndexFileError", "BACKENDS", "available_backends"]

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, "os.PathLike[str]"]

BACKENDS = ("numba", "numpy", "faiss")
#: Estimated linear-scan cost per code word (ns) for each backend, used to decide MIH vs scan.
_SCAN_NS_PER_WORD = {"numba": 0.4, "numpy": 1.5, "faiss": 1.0}
#: MIH table sets kept at once (one per substring split).
_MAX_TABLE_SETS = 2


def available_backends() -> list[str]:
    """Backends usable in this environment."""
    out = []
    if _kernels.HAVE_NUMBA:
        out.append("numba")
    out.append("numpy")
    if _faiss_backend.have_faiss():
        out.append("faiss")
    return out


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "numba" if _kernels.HAVE_NUMBA else "numpy"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of 'auto', {', '.join(map(repr, BACKENDS))}")
    if backend == "numba" and not _kernels.HAVE_NUMBA:
        raise ImportError("the 'numba' backend needs numba installed (pip install numba)")
    if backend == "faiss":
        _faiss_backend.import_faiss()
    return backend


class HammingIndex:
    """Exact Hamming index over ``nbits``-bit packed codes with ids, top-k and radius search.

    ``backend``: ``"auto"`` (numba when importable, else numpy), ``"numba"``, ``"numpy"`` or ``"faiss"``.
    ``n_threads``: threads for the numba top-k scan (None: numba's current setting; 1: the single-thread
    kernel).  The FAISS backend follows ``faiss.omp_set_num_threads``.
    """

    def __init__(self, nbits: int, backend: str = "auto", n_threads: int | None = None) -> None:
        """Create an empty index for ``nbits``-bit codes."""
        if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or int(nbits) <= 0:
            raise ValueError(f"nbits must be a positive integer, got {nbits!r}")
        if n_threads is not None and int(n_threads) < 1:
            raise ValueError(f"n_threads must be >= 1 or None, got {n_threads!r}")
        self._nbits = int(nbits)
        self._nbytes = n_bytes(self._nbits)
        self._W = (self._nbytes + 7) // 8
        self._backend = _resolve_backend(backend)
        self.n_threads = None if n_threads is None else int(n_threads)
        self._wm = np.zeros((self._W, 0), dtype=np.uint64)
        self._ids = np.zeros(0, dtype=np.int64)
        self._n = 0
        self._next_id = 0
        self._faiss_index: Any = None
        self._tables: OrderedDict[int, mih.MIHTables] = OrderedDict()
        #: "mih" or "scan": how the last ``range_search`` was answered.
        self.last_range_method: str | None = None

    # ------------------------------------------------------------------ properties
    @property
    def nbits(self) -> int:
        """Code length in bits."""
        return self._nbits

    @property
    def code_size(self) -> int:
        """Bytes per packed code (``ceil(nbits / 8)``)."""
        return self._nbytes

    @property
    def ntotal(self) -> int:
        """Number of codes in the index."""
        return self._n

    @property
    def backend(self) -> str:
        """Resolved backend name."""
        return self._backend

    @property
    def ids(self) -> np.ndarray:
        """Copy of the ids in insertion order, ``(ntotal,)`` int64."""
        return self._ids[: self._n].copy()

    @property
    def codes(self) -> np.ndarray:
        """Copy of the packed codes in insertion order, ``(ntotal, code_size)`` uint8."""
        return self._unpad(self._db().T)

    def __len__(self) -> int:
        """Number of codes in the index."""
        return self._n

    def __repr__(self) -> str:
        """Short description."""
        return f"HammingIndex(nbits={self._nbits}, ntotal={self._n}, backend={self._backend!r})"

    # ------------------------------------------------------------------ conversions
    def _check_codes(self, codes: ArrayLike, name: str) -> np.ndarray:
        arr = check_packed(codes, self._nbits, name)
        rem = self._nbits % 8
        if rem and arr.shape[0] and np.any(arr[:, -1] >> rem):
            raise ValueError(
                f"{name}: bits above bit {self._nbits - 1} of the last byte must be zero for {self._nbits}-bit codes"
            )
        return arr

    def _pad(self, arr: np.ndarray) -> np.ndarray:
        """Packed uint8 codes (m, code_size) -> zero-padded native uint64 words (m, W)."""
        m = arr.shape[0]
        if self._nbytes == 8 * self._W:
            padded = np.ascontiguousarray(arr)
        else:
            padded = np.zeros((m, 8 * self._W), dtype=np.uint8)
            padded[:, : self._nbytes] = arr
        return padded.view("<u8").reshape(m, self._W).astype(np.uint64, copy=False)

    def _unpad(self, words: np.ndarray) -> np.ndarray:
        """Native uint64 words (m, W) -> packed uint8 codes (m, code_size)."""
        m = words.shape[0]
        b = np.ascontiguousarray(words.astype("<u8", copy=False)).view(np.uint8).reshape(m, 8 * self._W)
        return np.ascontiguousarray(b[:, : self._nbytes])

    def _queries(self, q: ArrayLike) -> np.ndarray:
        return self._pad(self._check_codes(q, "queries"))

    def _invalidate(self) -> None:
        self._tables.clear()
        self._faiss_index = None

    # ------------------------------------------------------------------ mutation
    def add(self, codes: ArrayLike, ids: ArrayLike | None = None) -> None:
        """Append packed codes ``(n, ceil(nbits/8))`` uint8 with optional int64 ids (default: continuing 0, 1, ...)."""
        arr = self._check_codes(codes, "codes")
        m = arr.shape[0]
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + m, dtype=np.int64)
        else:
            if isinstance(ids, torch.Tensor):
                ids = ids.detach().cpu().numpy()
            raw = np.asarray(ids)
            if raw.ndim != 1 or raw.shape[0] != m:
                raise ValueError(f"ids must have shape ({m},) to match the codes, got {raw.shape}")
            if m and not np.issubdtype(raw.dtype, np.integer):
                raise TypeError(f"ids must be integers, got dtype {raw.dtype}")
            new_ids = raw.astype(np.int64)
            if m and new_ids.min() < 0:
                raise ValueError("ids must be non-negative (-1 marks a missing result)")
        if m == 0:
            return
        words = self._pad(arr)
        need = self._n + m
        if need > self._wm.shape[1]:
            cap = max(need, 2 * self._wm.shape[1], 1024)
            grown_w = np.zeros((self._W, cap), dtype=np.uint64)
            grown_w[:, : self._n] = self._wm[:, : self._n]
            grown_i = np.zeros(cap, dtype=np.int64)
            grown_i[: self._n] = self._ids[: self._n]
            self._wm, self._ids = grown_w, grown_i
        self._wm[:, self._n : need] = words.T
        self._ids[self._n : need] = new_ids
        self._n = need
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        self._tables.clear()
        if self._faiss_index is not None:
            self._faiss_index.add(self._row_bytes(words))

    def remove_ids(self, ids: ArrayLike) -> int:
        """Remove every code whose id is in ``ids``; the rest keep their order.  Returns the number removed."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        targets = np.asarray(ids, dtype=np.int64).ravel()
        keep = ~np.isin(self._ids[: self._n], targets)
        removed = int(self._n - keep.sum())
        if removed:
            kept_w = self._db()[:, keep]
            kept_i = self._ids[: self._n][keep]
            self._n = kept_i.shape[0]
            self._wm[:, : self._n] = kept_w
            self._ids[: self._n] = kept_i
            self._invalidate()
        return removed

    def reset(self) -> None:
        """Remove every code (ids restart at 0)."""
        self._wm = np.zeros((self._W, 0), dtype=np.uint64)
        self._ids = np.zeros(0, dtype=np.int64)
        self._n = 0
        self._next_id = 0
        self._invalidate()

    # ------------------------------------------------------------------ search
    def _db(self) -> np.ndarray:
        """Word-major view ``(W, ntotal)`` of the stored codes."""
        return self._wm[:, : self._n]

    @staticmethod
    def _row_bytes(words: np.ndarray) -> np.ndarray:
        """Row-major words ``(m, W)`` -> padded packed bytes ``(m, 8W)`` (the FAISS input)."""
        m = words.shape[0]
        return np.ascontiguousarray(words.astype("<u8", copy=False)).view(np.uint8).reshape(m, -1)

    def _faiss(self) -> Any:
        if self._faiss_index is None:
            self._faiss_index = _faiss_backend.build_flat(self._row_bytes(self._db().T))
        return self._faiss_index

    def _threads(self) -> int:
        n = _kernels.numba_threads() if self.n_threads is None else self.n_threads
        return max(1, min(int(n), _kernels.max_numba_threads()))

    def search(self, q: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes of each query: ``(D int32 (nq, k), I int64 (nq, k))``, ties in insertion order."""
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        qw = self._queries(q)
        nq = qw.shape[0]
        if self._n == 0 or nq == 0:
            return (
                np.full((nq, k), _kernels.SENTINEL, dtype=np.int32),
                np.full((nq, k), -1, dtype=np.int64),
            )
        ids = self._ids[: self._n]
        if self._backend == "numpy":
            return _numpy_backend.topk(self._db(), qw, ids, k, self._nbits)
        if self._backend == "faiss":
            return _faiss_backend.topk(self._faiss(), self._row_bytes(qw), ids, k)
        D = np.empty((nq, k), dtype=np.int32)
        I = np.empty((nq, k), dtype=np.int64)
        db = self._wm
        n = self._n
        qf = np.ascontiguousarray(qw).reshape(-1)
        threads = self._threads()
        if threads == 1:
            _kernels.topk_serial(db, n, qf, ids, k, self._nbits, D, I)
        else:
            previous = _kernels.numba_threads()
            _kernels.set_numba_threads(threads)
            try:
                _kernels.topk_parallel(db, n, qf, ids, k, self._nbits, D, I)
            finally:
                _kernels.set_numba_threads(previous)
        return D, I

    def _mih_compiled(self) -> bool:
        return _kernels.HAVE_NUMBA and self._backend != "numpy"

    def _tables_for(self, plan: mih.MIHPlan) -> mih.MIHTables:
        tables = self._tables.get(plan.m)
        if tables is None:
            tables = mih.build_tables(self._db(), plan.starts, plan.lens, with_codes=self._mih_compiled())
            self._tables[plan.m] = tables
            while len(self._tables) > _MAX_TABLE_SETS:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(plan.m)
        return tables

    def range_search(
        self, q: ArrayLike, r: int, method: str = "auto"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All codes within distance ``<= r`` of each query: ``(lims int64 (nq+1), D int32, I int64)``.

        Hits of query ``i`` are ``D[lims[i]:lims[i+1]]``, ``I[...]``, sorted by (distance, insertion order).
        ``method``: ``"auto"`` (multi-index hashing when the cost model says it beats the scan), ``"mih"`` or
        ``"scan"``.
        """
        if isinstance(r, bool) or int(r) != r or int(r) < 0:
            raise ValueError(f"r must be a non-negative integer, got {r!r}")
        if method not in ("auto", "mih", "scan"):
            raise ValueError(f"method must be 'auto', 'mih' or 'scan', got {method!r}")
        r = min(int(r), self._nbits)
        qw = self._queries(q)
        nq = qw.shape[0]
        if self._n == 0 or nq == 0:
            self.last_range_method = "scan"
            return np.zeros(nq + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        ids = self._ids[: self._n]
        use_mih = method == "mih"
        plan = None
        if method != "scan":
            plan = mih.plan(
                self._nbits,
                self._n,
                r,
                _SCAN_NS_PER_WORD[self._backend],
                prefer=tuple(self._tables),
                forced=use_mih,
            )
            use_mih = use_mih or (plan is not None and plan.beats_scan)
        if use_mih and plan is not None:
            self.last_range_method = "mih"
            tables = self._tables_for(plan)
            masks, nmasks = mih.masks_for(tables, plan.s)
            if self._mih_compiled():
                return _kernels.mih_range(
                    tables.tcodes, self._n, np.ascontiguousarray(qw).reshape(-1), ids, r, plan.s,
                    tables.starts, tables.lens, tables.shifts, tables.keys, tables.perm, tables.offs,
                    masks, nmasks,
                )
            return mih.query_numpy(self._db(), qw, ids, r, plan.s, tables, masks, nmasks)
        self.last_range_method = "scan"
        if self._backend == "numpy":
            return _numpy_backend.range_scan(self._db(), qw, ids, r, self._nbits)
        if self._backend == "faiss":
            return _faiss_backend.range_search(self._faiss(), self._row_bytes(qw), ids, r)
        return _kernels.range_scan(self._wm, self._n, np.ascontiguousarray(qw).reshape(-1), ids, r)

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike) -> None:
        """Write the index to ``path`` (versioned binary format with SHA-256, written atomically)."""
        write_index_file(path, self._nbits, self.codes, self.ids)

    @classmethod
    def load(
        cls, path: PathLike, nbits: int | None = None, backend: str = "auto", n_threads: int | None = None
    ) -> "HammingIndex":
        """Read an index written by :meth:`save`; ``nbits`` (optional) is checked against the file."""
        file_nbits, codes, ids = read_index_file(path, nbits=nbits)
        index = cls(file_nbits, backend=backend, n_threads=n_threads)
        try:
            index.add(codes, ids)
        except (TypeError, ValueError) as exc:
            raise IndexFileError(f"{path}: invalid content: {exc}") from exc
        return index

    # ------------------------------------------------------------------ FAISS interop
    def to_faiss(self) -> Any:
        """A FAISS index with the same codes: IndexBinaryFlat, wrapped in IndexBinaryIDMap unless ids are 0..n-1.

        FAISS needs ``d % 8 == 0``: for ``nbits`` not a multiple of 8 the FAISS dimension is ``8 * code_size``
        (the zero padding bits do not change distances).  FAISS's own tie order may differ from ours.
        """
        faiss = _faiss_backend.import_faiss()
        flat = faiss.IndexBinaryFlat(8 * self._nbytes)
        codes = self.codes
        ids = self.ids
        if np.array_equal(ids, np.arange(self._n, dtype=np.int64)):
            if self._n:
                flat.add(codes)
            return flat
        idmap = faiss.IndexBinaryIDMap(flat)
        idmap.add_with_ids(codes, ids)
        return idmap

    @classmethod
    def from_faiss(
        cls, faiss_index: Any, nbits: int | None = None, backend: str = "auto", n_threads: int | None = None
    ) -> "HammingIndex":
        """Build from a faiss IndexBinaryFlat or IndexBinaryIDMap(IndexBinaryFlat); ``nbits`` defaults to ``d``."""
        faiss = _faiss_backend.import_faiss()
        index = faiss.downcast_IndexBinary(faiss_index)
        ids = None
        if isinstance(index, faiss.IndexBinaryIDMap):
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            index = faiss.downcast_IndexBinary(index.index)
        if not isinstance(index, faiss.IndexBinaryFlat):
            raise TypeError(
                "from_faiss supports IndexBinaryFlat and IndexBinaryIDMap(IndexBinaryFlat), "
                f"got {type(index).__name__}"
            )
        d = int(index.d)
        nb = int(nbits) if nbits is not None else d
        if n_bytes(nb) != index.code_size:
            raise ValueError(
                f"nbits={nb} needs {n_bytes(nb)} bytes per code but the FAISS index has {index.code_size}"
            )
        n = int(index.ntotal)
        codes = np.zeros((0, index.code_size), dtype=np.uint8)
        if n:
            codes = faiss.vector_to_array(index.xb).astype(np.uint8).reshape(n, index.code_size)
        out = cls(nb, backend=backend, n_threads=n_threads)
        out.add(codes, ids)
        return out

