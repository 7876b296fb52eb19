"""`MilvusIndex`: the :class:`~coophash.index.HammingIndex` API on a Milvus collection.

Milvus is a distributed vector database that stores binary vectors and searches them by Hamming distance,
exactly (``BIN_FLAT``) or approximately (``BIN_IVF_FLAT``: codes clustered into ``nlist`` lists of which
``nprobe`` are scanned), and runs as a cluster at billions of vectors.  See ``docs/scale.md``.

Contract, as :class:`HammingIndex` wherever Milvus allows it:

* codes are packed LSB-first ``uint8`` arrays ``(n, ceil(nbits / 8))`` and go to Milvus unchanged, as a
  ``BINARY_VECTOR`` of dimension ``8 * ceil(nbits / 8)`` (the zero padding bits change no distance);
* every code carries a non-negative ``int64`` id, the collection's primary key (default ``0, 1, 2, ...``
  continuing across this object's ``add`` calls), and optional labels, stored in an ``ARRAY<INT64>``
  field as class indices (so that searches can filter on them: ``filter="array_contains(labels, 3)"``);
* ``search`` returns ``(D int32 (nq, k), I int64 (nq, k))`` sorted by (distance, id), padded with id
  ``-1`` and distance ``2**31 - 1``.  With ``BIN_FLAT`` the distances equal HammingIndex's; which of
  several codes tied at the k-th distance come back is Milvus's choice (HammingIndex takes the earliest
  added).  ``range_search`` returns every code with distance ``<= r`` in FAISS's ``lims`` layout, sorted
  by (distance, id); Milvus caps one query's hits at 16,384, beyond which it raises;
* ids must be unique: Milvus does not deduplicate primary keys, so re-adding an id keeps both codes.

Reads use Milvus's ``Session`` consistency by default: a search sees every earlier ``add``/``remove_ids``
made from this process, and other clients' writes a moment later (``"Strong"`` sees every client's writes
but waits for a time tick, about 200 ms, on every request).  ``add`` leaves new codes in Milvus's growing
segments, searched by brute force; :meth:`MilvusIndex.flush` seals them and waits until the index (e.g.
the IVF lists) is built and serving.  ``pymilvus`` is imported on first use; errors from
the server become :class:`MilvusIndexError`, one line naming the URI and the collection.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
import warnings
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch

from ..codes import check_packed, n_bytes

__all__ = ["MilvusIndex", "MilvusIndexError", "INDEX_TYPES", "MAX_TOPK", "embedded_server", "import_pymilvus"]

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Milvus index types for binary vectors that coophash supports.
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
#: Milvus's read consistency levels.
CONSISTENCY_LEVELS = ("Session", "Strong", "Bounded", "Eventually")
#: Milvus's cap on ``limit`` (results per query) and on queries per request.
MAX_TOPK = 16384
#: Distance reported where results run out (as HammingIndex and FAISS).
SENTINEL = np.int32(np.iinfo(np.int32).max)
ID_FIELD, CODE_FIELD, LABEL_FIELD = "id", "code", "labels"
_DESCRIPTION = "coophash packed Hamming codes, nbits={nbits}"
#: Rows per insert request are chosen to keep a request near this many bytes.
_INSERT_BYTES = 16 << 20
#: Hits per search request (queries x limit).
_SEARCH_HITS = 1 << 18
#: Ids per ``id in [...]`` expression.
_EXPR_IDS = 4096


class MilvusIndexError(RuntimeError):
    """A Milvus server is unreachable, refused a request, or holds a collection that does not fit."""


def import_pymilvus() -> Any:
    """Import pymilvus or raise an ImportError that says how to get it."""
    try:
        with warnings.catch_warnings():  # pymilvus 2.3 imports pkg_resources and environs, both deprecated
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import pymilvus  # noqa: PLC0415 - lazy on purpose
    except ImportError as exc:
        raise ImportError("MilvusIndex needs pymilvus: pip install 'coophash[milvus]'") from exc
    return pymilvus


def _one_line(exc: BaseException) -> str:
    """The message of a (pymilvus) exception on one line."""
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(msg).split())


def _as_ids(ids: ArrayLike, name: str = "ids") -> np.ndarray:
    """Integer ids as a 1-D int64 array."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    raw = np.asarray(ids)
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {raw.dtype}")
    return raw.astype(np.int64).ravel()


def _label_lists(labels: ArrayLike, m: int, max_labels: int) -> list[list[int]]:
    """Labels ``(m,)`` class indices or ``(m, C)`` multi-hot -> per-code lists of class indices."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    lab = np.asarray(labels)
    if lab.ndim == 1 and lab.shape[0] == m:
        if m and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0):
            raise ValueError("1-D labels must be non-negative integer class indices")
        return [[int(c)] for c in lab]
    if lab.ndim != 2 or lab.shape[0] != m:
        raise ValueError(f"labels must have shape ({m},) or ({m}, C) to match the codes, got {lab.shape}")
    out = [np.flatnonzero(row).tolist() for row in lab]
    if out and max(map(len, out)) > max_labels:
        raise ValueError(f"a code has more than max_labels={max_labels} labels")
    return out


class MilvusIndex:
    """Hamming index over ``nbits``-bit packed codes in the Milvus collection ``collection`` at ``uri``.

    Opens the collection when it exists (``nbits`` may then be omitted: it is read from the collection and
    checked against it when given) and creates it otherwise, with an index of ``index_type``
    (``"BIN_FLAT"``, exact, the default; or ``"BIN_IVF_FLAT"`` with ``nlist`` lists, of which ``nprobe``
    are scanned per query).  ``consistency_level``: ``"Session"``, ``"Strong"``, ``"Bounded"`` or
    ``"Eventually"`` (Milvus's levels, see the module docstring); ``shards_num``: write channels of a new
    collection (Milvus hashes each id to one); ``replicas``: in-memory copies the query nodes serve, for
    throughput and availability (a cluster needs that many query nodes); ``token``: ``"user:password"``
    or an API key where the server wants one; ``timeout``: seconds to wait for the server when connecting.
    """

    def __init__(
        self,
        uri: str,
        collection: str,
        nbits: Optional[int] = None,
        index_type: Optional[str] = None,
        nlist: int = 1024,
        nprobe: int = 16,
        max_labels: int = 4096,
        consistency_level: str = "Session",
        shards_num: int = 1,
        replicas: int = 1,
        token: str = "",
        timeout: float = 10.0,
    ) -> None:
        """Connect to ``uri`` and open or create ``collection``."""
        if nbits is not None and (isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits <= 0):
            raise ValueError(f"nbits must be a positive integer or None, got {nbits!r}")
        if index_type is not None and index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
        if consistency_level not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency_level must be one of {', '.join(CONSISTENCY_LEVELS)}, "
                             f"got {consistency_level!r}")
        if min(int(nlist), int(nprobe), int(max_labels), int(shards_num), int(replicas)) < 1:
            raise ValueError("nlist, nprobe, max_labels, shards_num and replicas must be positive")
        self._pm = import_pymilvus()
        self._uri, self._name = str(uri), str(collection)
        self._nlist, self.nprobe, self._max_labels = int(nlist), int(nprobe), int(max_labels)
        self._consistency = consistency_level
        self._shards, self._replicas = int(shards_num), int(replicas)
        self._alias = f"coophash-{uuid.uuid4().hex}"
        try:
            self._pm.connections.connect(self._alias, uri=self._uri, token=token, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - pymilvus raises several kinds; all mean "unreachable"
            raise MilvusIndexError(f"cannot reach Milvus at {self._uri}: {_one_line(exc)}") from None
        self._next_id: Optional[int] = None
        try:
            with self._rpc("open"):
                if self._pm.utility.has_collection(self._name, using=self._alias):
                    self._open(None if nbits is None else int(nbits), index_type)
                else:
                    if nbits is None:
                        raise self._error("does not exist; give nbits to create it")
                    self._create(int(nbits), index_type or "BIN_FLAT")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ errors and plumbing
    def _error(self, msg: str) -> MilvusIndexError:
        return MilvusIndexError(f"Milvus at {self._uri}, collection {self._name!r}: {msg}")

    def _rpc(self, what: str) -> "_Rpc":
        """Context manager turning a pymilvus error into a one-line MilvusIndexError naming URI and collection."""
        return _Rpc(self, what)

    def _create(self, nbits: int, index_type: str) -> None:
        """Create the collection (id, labels, code), its index, and load it."""
        pm = self._pm
        fields = [
            pm.FieldSchema(ID_FIELD, pm.DataType.INT64, is_primary=True, auto_id=False),
            pm.FieldSchema(LABEL_FIELD, pm.DataType.ARRAY, element_type=pm.DataType.INT64,
                           max_capacity=self._max_labels),
            pm.FieldSchema(CODE_FIELD, pm.DataType.BINARY_VECTOR, dim=8 * n_bytes(nbits)),
        ]
        schema = pm.CollectionSchema(fields, description=_DESCRIPTION.format(nbits=nbits))
        self._coll = pm.Collection(self._name, schema, using=self._alias, consistency_level=self._consistency,
                                   shards_num=self._shards)
        params: dict[str, Any] = {"nlist": self._nlist} if index_type == "BIN_IVF_FLAT" else {}
        self._coll.create_index(CODE_FIELD, {"index_type": index_type, "metric_type": "HAMMING", "params": params})
        self._set_shape(nbits, index_type, has_labels=True)
        self._next_id = 0
        self._coll.load(replica_number=self._replicas)

    def _open(self, nbits: Optional[int], index_type: Optional[str]) -> None:
        """Open an existing collection and check that it holds codes of ``nbits`` bits."""
        self._coll = self._pm.Collection(self._name, using=self._alias)
        fields = {f.name: f for f in self._coll.schema.fields}
        code, pk = fields.get(CODE_FIELD), fields.get(ID_FIELD)
        if code is None or code.dtype != self._pm.DataType.BINARY_VECTOR or pk is None or not pk.is_primary:
            raise self._error(f"is not a code collection (needs an INT64 primary key {ID_FIELD!r} and a "
                              f"BINARY_VECTOR field {CODE_FIELD!r})")
        dim = int(code.params["dim"])
        found = re.search(r"nbits=(\d+)", self._coll.description or "")
        stored = int(found.group(1)) if found else dim
        if nbits is not None and (nbits != stored or 8 * n_bytes(nbits) != dim):
            raise self._error(f"holds {stored}-bit codes (dim {dim}), not {nbits}-bit codes")
        have = [i.params.get("index_type") for i in self._coll.indexes if i.field_name == CODE_FIELD]
        if not have:
            have = [index_type or "BIN_FLAT"]
            params = {"nlist": self._nlist} if have[0] == "BIN_IVF_FLAT" else {}
            self._coll.create_index(CODE_FIELD, {"index_type": have[0], "metric_type": "HAMMING", "params": params})
        if index_type is not None and have[0] != index_type:
            raise self._error(f"is indexed with {have[0]}, not {index_type}")
        if have[0] not in INDEX_TYPES:
            raise self._error(f"has index type {have[0]}; coophash supports {', '.join(INDEX_TYPES)}")
        self._nlist = int(next((i.params.get("params", {}).get("nlist", self._nlist)
                                for i in self._coll.indexes if i.field_name == CODE_FIELD), self._nlist))
        self._set_shape(stored, have[0], has_labels=LABEL_FIELD in fields)
        self._coll.load(replica_number=self._replicas)

    def _set_shape(self, nbits: int, index_type: str, has_labels: bool) -> None:
        self._nbits, self._nbytes = nbits, n_bytes(nbits)
        self._index_type, self._has_labels = index_type, has_labels

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
    def uri(self) -> str:
        """The server's URI."""
        return self._uri

    @property
    def collection(self) -> str:
        """The collection's name."""
        return self._name

    @property
    def index_type(self) -> str:
        """``"BIN_FLAT"`` or ``"BIN_IVF_FLAT"``."""
        return self._index_type

    @property
    def nlist(self) -> int:
        """IVF lists (``BIN_IVF_FLAT`` only)."""
        return self._nlist

    @property
    def has_labels(self) -> bool:
        """Whether the collection has the labels field (collections created here always do)."""
        return self._has_labels

    @property
    def ntotal(self) -> int:
        """Number of codes in the collection (a ``count(*)`` query on the server)."""
        with self._rpc("count"):
            rows = self._coll.query(expr="", output_fields=["count(*)"], consistency_level=self._consistency)
        return int(rows[0]["count(*)"])

    def __len__(self) -> int:
        """Number of codes in the collection."""
        return self.ntotal

    def __repr__(self) -> str:
        """Short description (does not contact the server)."""
        return (f"MilvusIndex(uri={self._uri!r}, collection={self._name!r}, nbits={self._nbits}, "
                f"index_type={self._index_type!r})")

    def __enter__(self) -> "MilvusIndex":
        """Use as a context manager; the connection is closed at the end."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connection."""
        self.close()

    # ------------------------------------------------------------------ conversions
    def _check_codes(self, codes: ArrayLike, name: str) -> np.ndarray:
        arr = check_packed(codes, self._nbits, name)
        rem = self._nbits % 8
        if rem and arr.shape[0] and np.any(arr[:, -1] >> rem):
            raise ValueError(
                f"{name}: bits above bit {self._nbits - 1} of the last byte must be zero for {self._nbits}-bit codes"
            )
        return arr

    def _search_params(self, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"nprobe": int(self.nprobe)} if self._index_type == "BIN_IVF_FLAT" else {}
        params.update(extra)
        return {"metric_type": "HAMMING", "params": params}

    @staticmethod
    def _id_chunks(ids: np.ndarray) -> Iterator[str]:
        for s in range(0, ids.shape[0], _EXPR_IDS):
            yield f"{ID_FIELD} in {ids[s:s + _EXPR_IDS].tolist()}"

    # ------------------------------------------------------------------ mutation
    def add(self, codes: ArrayLike, ids: Optional[ArrayLike] = None, labels: Optional[ArrayLike] = None) -> None:
        """Insert packed codes ``(n, ceil(nbits/8))`` uint8 with unique int64 ids and optional labels.

        ``ids`` default to ``0, 1, ...`` continuing this object's earlier adds (give them explicitly when
        adding to a collection opened non-empty).  ``labels``: ``(n,)`` class indices or ``(n, C)``
        multi-hot.  New codes are searchable at once; call :meth:`flush` to have them indexed.
        """
        arr = self._check_codes(codes, "codes")
        m = arr.shape[0]
        new_ids = self._new_ids(ids, m)
        lab: Optional[list[list[int]]] = None
        if labels is not None:
            if not self._has_labels:
                raise self._error(f"has no {LABEL_FIELD!r} field to store labels in")
            lab = _label_lists(labels, m, self._max_labels)
        if m == 0:
            return
        rows = max(1, _INSERT_BYTES // (self._nbytes + 16 + 8 * (max(map(len, lab)) if lab else 0)))
        with self._rpc("insert"):
            for s in range(0, m, rows):
                e = min(m, s + rows)
                cols: list[Any] = [new_ids[s:e].tolist()]
                if self._has_labels:
                    cols.append(lab[s:e] if lab is not None else [[] for _ in range(e - s)])
                cols.append([row.tobytes() for row in arr[s:e]])
                self._coll.insert(cols)
        self._next_id = max(self._next_id or 0, int(new_ids.max()) + 1)

    def _new_ids(self, ids: Optional[ArrayLike], m: int) -> np.ndarray:
        """Validated ids for ``m`` new codes (default: continuing after this object's last add)."""
        if ids is None:
            if self._next_id is None:
                if self.ntotal:
                    raise ValueError(
                        f"collection {self._name!r} at {self._uri} already holds codes: pass ids to add"
                    )
                self._next_id = 0
            return np.arange(self._next_id, self._next_id + m, dtype=np.int64)
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        if np.asarray(ids).shape != (m,):
            raise ValueError(f"ids must have shape ({m},) to match the codes, got {np.asarray(ids).shape}")
        new_ids = _as_ids(ids)
        if m and new_ids.min() < 0:
            raise ValueError("ids must be non-negative (-1 marks a missing result)")
        if np.unique(new_ids).shape[0] != m:
            raise ValueError("ids must be unique (they are the collection's primary key)")
        return new_ids

    def _existing(self, ids: np.ndarray, fields: list[str]) -> dict[int, dict[str, Any]]:
        """Rows of the given ids that exist, by id."""
        out: dict[int, dict[str, Any]] = {}
        for expr in self._id_chunks(ids):
            for row in self._coll.query(expr=expr, output_fields=fields, consistency_level=self._consistency):
                out[int(row[ID_FIELD])] = row
        return out

    def remove_ids(self, ids: ArrayLike) -> int:
        """Delete every code whose id is in ``ids``.  Returns the number removed."""
        targets = np.unique(_as_ids(ids))
        with self._rpc("remove_ids"):
            found = np.array(sorted(self._existing(targets, [ID_FIELD])), dtype=np.int64)
            for expr in self._id_chunks(found):
                self._coll.delete(expr)
            if found.size and self._consistency == "Session":
                # Deletes do not advance pymilvus's session timestamp; one Strong read waits until they apply.
                self._coll.query(expr=f"{ID_FIELD} in {found[:1].tolist()}", consistency_level="Strong")
        return int(found.shape[0])

    def flush(self, timeout: float = 300.0) -> None:
        """Seal the growing segments and wait until their index is built and serving queries.

        Until then Milvus answers from the growing segments by brute force (exact, whatever the index type).
        """
        utility = self._pm.utility
        with self._rpc("flush"):
            self._coll.flush()
            utility.wait_for_index_building_complete(self._name, using=self._alias, timeout=timeout)
            want = self._coll.num_entities
            deadline = time.monotonic() + timeout
            # Query nodes swap growing segments for the sealed, indexed ones on their own schedule ("handoff").
            while sum(s.num_rows for s in utility.get_query_segment_info(self._name, using=self._alias)) < want:
                if time.monotonic() > deadline:
                    raise self._error(f"flushed codes not served from the index after {timeout:g} s")
                time.sleep(0.25)

    def reset(self) -> None:
        """Remove every code: drop the collection and create it again, empty (ids restart at 0)."""
        with self._rpc("reset"):
            self._coll.drop()
            self._create(self._nbits, self._index_type)

    def drop(self) -> None:
        """Delete the collection from the server and close the connection."""
        with self._rpc("drop"):
            self._coll.drop()
        self.close()

    def close(self) -> None:
        """Close this object's connection (the collection stays on the server)."""
        pm = getattr(self, "_pm", None)
        if pm is not None:
            pm.connections.disconnect(self._alias)

    # ------------------------------------------------------------------ lookup
    def get_codes(self, ids: ArrayLike) -> np.ndarray:
        """Packed codes of the given ids, ``(m, code_size)`` uint8 in the order given; KeyError for a missing id."""
        want = _as_ids(ids)
        with self._rpc("get_codes"):
            rows = self._existing(np.unique(want), [CODE_FIELD])
        missing = [int(i) for i in want if int(i) not in rows]
        if missing:
            raise KeyError(f"ids not in collection {self._name!r} at {self._uri}: {missing[:10]}")
        out = np.zeros((want.shape[0], self._nbytes), dtype=np.uint8)
        for j, i in enumerate(want.tolist()):
            raw = rows[i][CODE_FIELD]
            out[j] = np.frombuffer(raw[0] if isinstance(raw, list) else raw, dtype=np.uint8)[: self._nbytes]
        return out

    def get_labels(self, ids: ArrayLike, num_classes: Optional[int] = None) -> Union[list[np.ndarray], np.ndarray]:
        """Labels of the given ids: a list of int64 class-index arrays, or ``(m, num_classes)`` float32
        multi-hot when ``num_classes`` is given.  KeyError for a missing id."""
        if not self._has_labels:
            raise self._error(f"has no {LABEL_FIELD!r} field")
        want = _as_ids(ids)
        with self._rpc("get_labels"):
            rows = self._existing(np.unique(want), [LABEL_FIELD])
        missing = [int(i) for i in want if int(i) not in rows]
        if missing:
            raise KeyError(f"ids not in collection {self._name!r} at {self._uri}: {missing[:10]}")
        lists = [np.asarray(rows[i][LABEL_FIELD] or [], dtype=np.int64) for i in want.tolist()]
        if num_classes is None:
            return lists
        hot = np.zeros((len(lists), int(num_classes)), dtype=np.float32)
        for j, cls in enumerate(lists):
            hot[j, cls] = 1.0
        return hot

    # ------------------------------------------------------------------ search
    def search(self, q: ArrayLike, k: int, filter: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes of each query: ``(D int32 (nq, k), I int64 (nq, k))`` sorted by (distance, id).

        ``filter``: a Milvus boolean expression on the fields, e.g. ``"array_contains(labels, 3)"``.
        """
        if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= MAX_TOPK:
            raise ValueError(f"k must be an integer in 1..{MAX_TOPK} (Milvus's limit), got {k!r}")
        k = int(k)
        arr = self._check_codes(q, "queries")
        nq = arr.shape[0]
        D = np.full((nq, k), SENTINEL, dtype=np.int32)
        I = np.full((nq, k), -1, dtype=np.int64)
        step = max(1, min(MAX_TOPK, _SEARCH_HITS // k))
        with self._rpc("search"):
            for s in range(0, nq, step):
                res = self._coll.search([row.tobytes() for row in arr[s:s + step]], CODE_FIELD,
                                        self._search_params(), limit=k, expr=filter,
                                        consistency_level=self._consistency)
                for j, hits in enumerate(res):
                    d = np.rint(np.asarray(hits.distances, dtype=np.float64)).astype(np.int32)
                    ids = np.asarray(hits.ids, dtype=np.int64)
                    order = np.lexsort((ids, d))
                    D[s + j, : order.shape[0]] = d[order]
                    I[s + j, : order.shape[0]] = ids[order]
        return D, I

    def range_search(
        self, q: ArrayLike, r: int, filter: Optional[str] = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All codes within distance ``<= r`` of each query: ``(lims int64 (nq+1), D int32, I int64)``.

        Hits of query ``i`` are ``D[lims[i]:lims[i+1]]``, ``I[...]``, sorted by (distance, id).  Raises when a
        query has more than 16,384 hits (Milvus's cap), rather than return part of them.
        """
        if isinstance(r, bool) or int(r) != r or int(r) < 0:
            raise ValueError(f"r must be a non-negative integer, got {r!r}")
        r = min(int(r), self._nbits)
        arr = self._check_codes(q, "queries")
        nq = arr.shape[0]
        parts_d: list[np.ndarray] = []
        parts_i: list[np.ndarray] = []
        lims = np.zeros(nq + 1, dtype=np.int64)
        step = max(1, _SEARCH_HITS // MAX_TOPK)
        total: Optional[int] = None
        with self._rpc("range_search"):
            for s in range(0, nq, step):
                # Milvus keeps distance < radius (strict): radius r + 1 keeps distance <= r.
                res = self._coll.search([row.tobytes() for row in arr[s:s + step]], CODE_FIELD,
                                        self._search_params(radius=r + 1), limit=MAX_TOPK, expr=filter,
                                        consistency_level=self._consistency)
                for j, hits in enumerate(res):
                    d = np.rint(np.asarray(hits.distances, dtype=np.float64)).astype(np.int32)
                    ids = np.asarray(hits.ids, dtype=np.int64)
                    if d.shape[0] >= MAX_TOPK and (total := self.ntotal if total is None else total) > MAX_TOPK:
                        raise self._error(f"query {s + j} has more than {MAX_TOPK} codes within distance {r} "
                                          "(Milvus's cap on results per query); use a smaller radius")
                    order = np.lexsort((ids, d))
                    parts_d.append(d[order])
                    parts_i.append(ids[order])
                    lims[s + j + 1] = lims[s + j] + order.shape[0]
        if not parts_d:
            return lims, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        return lims, np.concatenate(parts_d), np.concatenate(parts_i)


class _Rpc:
    """Turns a pymilvus exception raised inside the block into a one-line MilvusIndexError."""

    def __init__(self, index: MilvusIndex, what: str) -> None:
        self._index, self._what = index, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        if exc is None or isinstance(exc, (MilvusIndexError, ValueError, TypeError, KeyError)):
            return False
        if isinstance(exc, self._index._pm.exceptions.MilvusException) or type(exc).__module__.startswith("grpc"):
            raise self._index._error(f"{self._what} failed: {_one_line(exc)}") from None
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_settings(template: str, settings: dict[str, Any]) -> str:
    """A milvus.yaml template with ``section.key`` settings: replaced where present, else added to the section."""
    for key, value in settings.items():
        section, _, leaf = key.partition(".")
        if not leaf or "." in leaf:
            raise ValueError(f"Milvus setting {key!r}: give 'section.key'")
        head = re.search(rf"^{re.escape(section)}:[^\n]*\n", template, re.M)
        if head is None:
            raise ValueError(f"Milvus setting {key!r}: no section {section!r} in the config template")
        end = re.compile(r"^\S", re.M).search(template, head.end())
        stop = end.start() if end else len(template)
        block = template[head.end():stop]
        line = f"  {leaf}: {str(value).lower() if isinstance(value, bool) else value}"
        hit = re.search(rf"^  {re.escape(leaf)}:[^\n]*$", block, re.M)
        block = block[:hit.start()] + line + block[hit.end():] if hit else line + "\n" + block
        template = template[:head.end()] + block + template[stop:]
    return template


@contextlib.contextmanager
def embedded_server(data_dir: str, settings: Optional[dict[str, Any]] = None) -> Iterator[str]:
    """Start PyPI's embedded standalone Milvus (package ``milvus``, 2.3) with its data in ``data_dir``; yield its URI.

    For tests, benchmarks and trying things out on one machine.  The package picks free ports from the
    defaults up (19530 for clients) but gives its embedded etcd the fixed peer port 2380, so a second
    server on the machine fails to start; here etcd gets free ports through an etcd config file.  The
    server is stopped when the block ends; ``data_dir`` (about 250 MB, the unpacked binaries) is left.
    ``settings``: milvus.yaml keys to set, dotted (``{"queryCoord.checkInterval": 500}``).
    """
    try:
        import milvus  # noqa: PLC0415 - lazy on purpose
    except ImportError as exc:
        raise ImportError(
            "embedded_server needs PyPI's embedded Milvus: pip install 'coophash[test]' (milvus==2.3.5)"
        ) from exc
    pkg_data = os.path.join(os.path.dirname(milvus.__file__), "data")
    os.makedirs(data_dir, exist_ok=True)
    client, peer = _free_port(), _free_port()
    etcd_yaml = os.path.join(data_dir, "etcd.yaml")
    with open(etcd_yaml, "w", encoding="utf-8") as f:
        f.write(f"name: default\nlisten-peer-urls: http://127.0.0.1:{peer}\n"
                f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
                f"initial-cluster: default=http://127.0.0.1:{peer}\n"
                f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n")
    with open(os.path.join(pkg_data, "config.yaml.template"), encoding="utf-8") as f:
        template = f.read()
    anchor = "  use:\n    embed: true"
    template = template.replace(anchor, f"  config:\n    path: {etcd_yaml}\n{anchor}", 1)
    template = _with_settings(template, settings or {})
    template_path = os.path.join(data_dir, "milvus.yaml.template")
    with open(template_path, "w", encoding="utf-8") as f:
        f.write(template)
    config = milvus.MilvusServerConfig(template=template_path)
    config.glog_conf_file = os.path.join(pkg_data, "glog.conf")  # set only for the default template in 2.3.5
    server = milvus.MilvusServer(config, data_dir=data_dir, etcd_port=client)
    try:
        server.start()  # waits until the server's /healthz answers
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()
