"""Seeded evaluation protocols and their manifests (the indices of every split, written to JSON).

A protocol splits a dataset into ``query``, ``validation``, ``database``, ``train`` and ``labeled``
(the part of ``train`` that keeps its labels; the rest of ``train`` is unlabeled). Model selection
uses ``validation`` (retrieving from :attr:`Manifest.validation_database`), never ``query``.
No protocol puts a query in the database, in train or in validation, and validation never meets train.

Protocols (counts are per class for single-label data):

* ``standard``: ``query_per_class`` (50) and ``val_per_class`` (50) per class; the database is all
  the rest; ``train_per_class`` (None) takes a stratified subset of the database as train, None =
  train is the whole database. For mnist5k: 500 query, 500 validation, 4,000 database = train.
  Multi-label data (or any data, when ``n_query``/``n_val``/``n_train`` are given) is split
  uniformly at random with those totals (defaults: 10% query, 10% validation, train = database).
* ``unseen``: ``seen_classes`` (default: the first 70% of classes, 0–6 of 10) give train and
  validation; the other classes give query (``query_per_class``, 50) and the retrieval database
  (all their other items). Here **train ⊄ database**: train and database are disjoint by design.
  Multi-label items carrying both seen and unseen labels are left out of every split.
* ``cifar10``: 100 query, 500 train per class; database = everything else (54,000 on CIFAR-10), so
  train ∩ database = ∅ (the field's protocol); validation = 100 per class taken from the database.
* ``cifar10-1``: 100 query, 500 train per class; database = everything but the query (59,000,
  train included); validation = 100 per class from the database outside train.
* ``cifar10-2``: query = the dataset's ``"test"`` group when it has one (CIFAR-10's test batch,
  10,000) else 1,000 per class at random; database = everything else (50,000); train = database
  minus a held-out validation slice of 100 per class (which stays in the database).
  The cifar10 protocols work on any single-label dataset with enough items per class.

``label_fraction`` f ∈ (0, 1]: within train, each class (first label for multi-label data) keeps
``max(1, floor(f · n_c + 0.5))`` labeled items (round half up, at least one per class present);
f = 1 makes ``labeled`` = ``train``.

Randomness: one PCG64 stream seeded with ``seed``; permutations sort its raw 64-bit outputs, which
numpy keeps stable across versions. Same dataset, protocol, seed and parameters ⇒ byte-identical
manifest file.

A manifest file carries a ``sha256`` field, a checksum of the whole file (:mod:`coophash.utils.integrity`),
checked by :meth:`Manifest.from_json` after every field has been validated: a file cut short, with a
changed byte or of random bytes is refused with a :class:`DataError` naming it.  Files without the field
(written before checksums) are read as they are.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Subset

from coophash.data.dataset import HashDataset
from coophash.data.errors import DataError
from coophash.utils.integrity import CHECKSUM_KEY, PLACEHOLDER, IntegrityError, seal, verify
from coophash.utils.io import atomic_write_text

__all__ = ["Manifest", "make_protocol", "PROTOCOLS", "SPLITS"]

MANIFEST_VERSION = 1
SPLITS = ("query", "validation", "database", "train", "labeled")
# Whether train ⊂ database (True) or train ∩ database = ∅ (False) in each protocol.
_TRAIN_IN_DATABASE: Mapping[str, bool] = MappingProxyType({
    "standard": True,
    "unseen": False,
    "cifar10": False,
    "cifar10-1": True,
    "cifar10-2": True,
})
PROTOCOLS: Tuple[str, ...] = tuple(_TRAIN_IN_DATABASE)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = ("version", "dataset", "fingerprint", "n_items", "protocol", "seed", "params",
           *SPLITS, "seen_classes", "unseen_classes")
_CHECKSUM_FIELD = b'"' + CHECKSUM_KEY.encode() + b'":"'  # how the checksum appears in a manifest file


def _index_array(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64).reshape(-1)
    if array.size > 1 and not bool(np.all(array[1:] > array[:-1])):
        raise ValueError(f"split {name!r} must be strictly increasing indices")
    return array


@dataclass(eq=False)
class Manifest:
    """The indices of every split of one dataset under one seeded protocol (see module docstring)."""

    dataset: str
    fingerprint: str
    n_items: int
    protocol: str
    seed: int
    params: Dict[str, Any]
    query: np.ndarray
    validation: np.ndarray
    database: np.ndarray
    train: np.ndarray
    labeled: np.ndarray
    seen_classes: Optional[List[int]] = None
    unseen_classes: Optional[List[int]] = None
    version: int = field(default=MANIFEST_VERSION)

    def __post_init__(self) -> None:
        for name in SPLITS:
            setattr(self, name, _index_array(getattr(self, name), name))
        self.validate()

    # ------------------------------------------------------------------ derived splits
    @property
    def unlabeled(self) -> np.ndarray:
        """Train items whose labels are withheld (train minus labeled)."""
        return np.setdiff1d(self.train, self.labeled, assume_unique=True)

    @property
    def validation_database(self) -> np.ndarray:
        """Retrieval set for model selection: the database without the validation items.

        In the ``unseen`` protocol the database holds only unseen classes, which validation (seen classes)
        can never match; there validation retrieves from train (the seen-class items the model knows).
        """
        if self.protocol == "unseen":
            return np.setdiff1d(self.train, self.validation, assume_unique=True)
        return np.setdiff1d(self.database, self.validation, assume_unique=True)

    @property
    def train_in_database(self) -> bool:
        """True when this protocol keeps train inside the database, False when they are disjoint."""
        return _TRAIN_IN_DATABASE[self.protocol]

    def splits(self) -> Dict[str, np.ndarray]:
        """Split name → indices."""
        return {name: getattr(self, name) for name in SPLITS}

    def sizes(self) -> Dict[str, int]:
        """Split name → number of items."""
        return {name: int(getattr(self, name).size) for name in SPLITS}

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError if a split leaves [0, n_items) or the protocol's overlap rules are broken."""
        if self.protocol not in _TRAIN_IN_DATABASE:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        for name in SPLITS:
            idx = getattr(self, name)
            if idx.size and (idx[0] < 0 or idx[-1] >= self.n_items):
                raise ValueError(f"split {name!r} has indices outside [0, {self.n_items})")
        for name in ("query", "database", "train", "labeled"):
            if getattr(self, name).size == 0:
                raise ValueError(f"split {name!r} is empty")

        def disjoint(a: str, b: str) -> None:
            common = np.intersect1d(getattr(self, a), getattr(self, b), assume_unique=True)
            if common.size:
                raise ValueError(f"splits {a!r} and {b!r} share {common.size} items (e.g. index {int(common[0])})")

        def subset(a: str, b: str) -> None:
            extra = np.setdiff1d(getattr(self, a), getattr(self, b), assume_unique=True)
            if extra.size:
                raise ValueError(f"split {a!r} must lie inside {b!r}; {extra.size} items do not (e.g. {int(extra[0])})")

        disjoint("query", "database")
        disjoint("query", "train")
        disjoint("query", "validation")
        disjoint("validation", "train")
        subset("labeled", "train")
        if self.train_in_database:
            subset("train", "database")
        else:
            disjoint("train", "database")
        if self.protocol == "unseen":
            if self.seen_classes is None or self.unseen_classes is None:
                raise ValueError("protocol 'unseen' needs seen_classes and unseen_classes")
            if set(self.seen_classes) & set(self.unseen_classes):
                raise ValueError("seen_classes and unseen_classes overlap")

    def check(self, dataset: HashDataset) -> None:
        """Raise DataError unless ``dataset`` is the one this manifest was made for (size and fingerprint)."""
        if len(dataset) != self.n_items:
            raise DataError(
                f"manifest for dataset {self.dataset!r} has {self.n_items} items; "
                f"dataset {dataset.name!r} has {len(dataset)}"
            )
        found = dataset.fingerprint()
        if found != self.fingerprint:
            raise DataError(
                f"manifest for dataset {self.dataset!r} expects fingerprint {self.fingerprint[:16]}…; "
                f"dataset {dataset.name!r} has {found[:16]}… (different images, labels or image size)"
            )

    def subset(self, dataset: HashDataset, split: str) -> Subset:
        """``torch.utils.data.Subset`` of ``dataset`` for ``split`` (after :meth:`check`)."""
        if split not in SPLITS and split not in ("unlabeled", "validation_database"):
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}, unlabeled, validation_database")
        self.check(dataset)
        return Subset(dataset, getattr(self, split).tolist())

    # ------------------------------------------------------------------ files
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready dict (indices as lists of ints)."""
        out: Dict[str, Any] = {
            "version": int(self.version),
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "n_items": int(self.n_items),
            "protocol": self.protocol,
            "seed": int(self.seed),
            "params": _plain(self.params),
            "seen_classes": None if self.seen_classes is None else [int(c) for c in self.seen_classes],
            "unseen_classes": None if self.unseen_classes is None else [int(c) for c in self.unseen_classes],
        }
        for name in SPLITS:
            out[name] = getattr(self, name).tolist()
        return out

    def to_json(self) -> str:
        """Deterministic JSON: sorted keys, compact separators, ASCII, newline at the end, and a ``sha256``
        field sealing the whole text."""
        doc = {**self.to_dict(), CHECKSUM_KEY: PLACEHOLDER.decode()}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n"
        return seal(text.encode("ascii"), _CHECKSUM_FIELD).decode("ascii")

    def save(self, path: Union[str, Path]) -> Path:
        """Write the manifest to ``path`` atomically; returns the path."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "Manifest":
        """Parse and validate a manifest; errors name ``source`` and the offending field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DataError(f"{source}: a manifest must be a JSON object")
        checksum = data.pop(CHECKSUM_KEY, None)
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise DataError(f"{source}: unknown field {unknown[0]!r}")
        for name in _FIELDS:
            if name not in data:
                raise DataError(f"{source}: missing field {name!r}")

        def need(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise DataError(f"{source}: field {name!r} must be {expected}, found {data[name]!r:.80}")

        need("version", _is_int(data["version"]) and data["version"] == MANIFEST_VERSION, f"{MANIFEST_VERSION}")
        need("dataset", isinstance(data["dataset"], str), "a string")
        need("fingerprint", isinstance(data["fingerprint"], str) and bool(_HEX64.match(data["fingerprint"])),
             "a sha256 hex string")
        need("n_items", _is_int(data["n_items"]) and data["n_items"] >= 0, "a non-negative integer")
        need("protocol", data["protocol"] in _TRAIN_IN_DATABASE, f"one of {list(PROTOCOLS)}")
        need("seed", _is_int(data["seed"]) and data["seed"] >= 0, "a non-negative integer")
        need("params", isinstance(data["params"], dict), "an object")
        for name in SPLITS:
            value = data[name]
            need(name, isinstance(value, list) and all(_is_int(v) for v in value), "a list of integers")
        for name in ("seen_classes", "unseen_classes"):
            value = data[name]
            need(name, value is None or (isinstance(value, list) and all(_is_int(v) for v in value)),
                 "null or a list of integers")
        try:
            for name in SPLITS:
                try:
                    _index_array(data[name], name)
                except ValueError as exc:
                    raise DataError(f"{source}: field {name!r}: {exc}") from exc
            manifest = cls(**{name: data[name] for name in _FIELDS})
        except ValueError as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{source}: inconsistent manifest ({exc})") from exc
        if checksum is not None:
            try:
                verify(text.encode("utf-8"), _CHECKSUM_FIELD, checksum)
            except IntegrityError as exc:
                raise DataError(f"{source}: {exc}") from None
        return manifest

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Manifest":
        """Read and validate a manifest file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: manifest file not found") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not a manifest (not UTF-8 text at byte {exc.start}; damaged?)") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read manifest ({exc})") from exc
        if not text.strip():
            raise DataError(f"{path}: empty manifest file (damaged)")
        return cls.from_json(text, str(path))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        return f"Manifest(dataset={self.dataset!r}, protocol={self.protocol!r}, seed={self.seed}, {sizes})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """Turn numpy scalars/arrays and tuples into JSON-native values (dict keys as str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"protocol parameter value {value!r} is not JSON-serialisable")


# ---------------------------------------------------------------------------------- sampling
class _Sampler:
    """Seeded permutations from PCG64's raw output (stable across numpy versions)."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)

    def permutation(self, items: np.ndarray) -> np.ndarray:
        """``items`` in a random order (sorted by one raw 64-bit draw each)."""
        keys = self._bits.random_raw(items.size)
        return items[np.argsort(keys, kind="stable")]


def _sorted(parts: Sequence[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))


def _by_class(classes: np.ndarray, pool: np.ndarray) -> List[Tuple[int, np.ndarray]]:
    """(class, sorted members of ``pool``) for every class present in ``pool``, in class order."""
    pool = np.sort(pool)
    pool_classes = classes[pool]
    return [(int(c), pool[pool_classes == c]) for c in np.unique(pool_classes)]


def _split_per_class(
    classes: np.ndarray, pool: np.ndarray, counts: Sequence[int], sampler: _Sampler, what: Sequence[str]
) -> List[np.ndarray]:
    """Per class: shuffle, cut ``counts`` items for each named part; the last part returned is the rest."""
    parts: List[List[np.ndarray]] = [[] for _ in range(len(counts) + 1)]
    need = sum(counts)
    for c, members in _by_class(classes, pool):
        if members.size < need:
            wanted = " + ".join(f"{n} {w}" for n, w in zip(counts, what))
            raise ValueError(f"class {c} has {members.size} items; the protocol needs {wanted} per class")
        order = sampler.permutation(members)
        start = 0
        for k, n in enumerate(counts):
            parts[k].append(order[start : start + n])
            start += n
        parts[-1].append(order[start:])
    return [_sorted(p) for p in parts]


def _split_totals(pool: np.ndarray, counts: Sequence[int], sampler: _Sampler, what: Sequence[str]) -> List[np.ndarray]:
    """Shuffle ``pool`` and cut ``counts`` items for each named part; the last part returned is the rest."""
    if pool.size < sum(counts):
        wanted = " + ".join(f"{n} {w}" for n, w in zip(counts, what))
        raise ValueError(f"{pool.size} items available; the protocol needs {wanted}")
    order = sampler.permutation(np.sort(pool))
    parts, start = [], 0
    for n in counts:
        parts.append(np.sort(order[start : start + n]))
        start += n
    parts.append(np.sort(order[start:]))
    return parts


def _labeled_subset(primary: np.ndarray, train: np.ndarray, fraction: float, sampler: _Sampler) -> np.ndarray:
    """Class-stratified ``fraction`` of train: max(1, floor(f·n_c + 0.5)) per class present."""
    if fraction == 1.0:
        return train.copy()
    chosen = []
    for _, members in _by_class(primary, train):
        keep = max(1, int(math.floor(fraction * members.size + 0.5)))
        chosen.append(sampler.permutation(members)[:keep])
    return _sorted(chosen)


def _count(value: Any, name: str, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if not _is_int(value) and not isinstance(value, np.integer):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if int(value) < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _ten_percent(n: int) -> int:
    return int(math.floor(0.1 * n + 0.5))


# ---------------------------------------------------------------------------------- protocols
# A builder returns (query, validation, database, train, resolved params, seen classes, unseen classes).
_Built = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Dict[str, Any], Optional[List[int]], Optional[List[int]]]
_Builder = Callable[[HashDataset, np.ndarray, "_Sampler", Mapping[str, Any]], _Built]

_PER_CLASS = ("query_per_class", "val_per_class", "train_per_class")
_TOTALS = ("n_query", "n_val", "n_train")


def _resolve_mode(dataset: HashDataset, params: Mapping[str, Any]) -> str:
    """'per_class' for single-label data without totals given, else 'totals'."""
    per_class = [k for k in _PER_CLASS if k in params]
    totals = [k for k in _TOTALS if k in params]
    if per_class and totals:
        raise ValueError(f"give per-class counts {per_class} or totals {totals}, not both")
    if per_class and not dataset.is_single_label:
        raise ValueError(f"per-class counts {per_class} need single-label data; {dataset.name!r} is multi-label "
                         f"(use n_query, n_val, n_train)")
    if totals or not dataset.is_single_label:
        return "totals"
    return "per_class"


def _check_keys(params: Mapping[str, Any], allowed: Sequence[str], protocol: str) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"protocol {protocol!r} got unknown parameter(s) {unknown}; accepted: {sorted(allowed)}")


def _standard(dataset: HashDataset, primary: np.ndarray, sampler: _Sampler, params: Mapping[str, Any]) -> _Built:
    _check_keys(params, _PER_CLASS + _TOTALS, "standard")
    everything = np.arange(len(dataset), dtype=np.int64)
    if _resolve_mode(dataset, params) == "per_class":
        q = _count(params.get("query_per_class", 50), "query_per_class")
        v = _count(params.get("val_per_class", 50), "val_per_class")
        t = _count(params.get("train_per_class"), "train_per_class", allow_none=True)
        counts = [q, v] + ([t] if t is not None else [])
        names = ["query", "validation"] + (["train"] if t is not None else [])
        parts = _split_per_class(primary, everything, counts, sampler, names)
        query, validation = parts[0], parts[1]
        database = _sorted(parts[2:])
        train = parts[2] if t is not None else database
        resolved = {"mode": "per_class", "query_per_class": q, "val_per_class": v, "train_per_class": t}
    else:
        n = len(dataset)
        q = _count(params.get("n_query", _ten_percent(n)), "n_query")
        v = _count(params.get("n_val", _ten_percent(n)), "n_val")
        t = _count(params.get("n_train"), "n_train", allow_none=True)
        counts = [q, v] + ([t] if t is not None else [])
        names = ["query", "validation"] + (["train"] if t is not None else [])
        parts = _split_totals(everything, counts, sampler, names)
        query, validation = parts[0], parts[1]
        database = _sorted(parts[2:])
        train = parts[2] if t is not None else database
        resolved = {"mode": "totals", "n_query": q, "n_val": v, "n_train": t}
    return query, validation, database, train, resolved, None, None


def _unseen(dataset: HashDataset, primary: np.ndarray, sampler: _Sampler, params: Mapping[str, Any]) -> _Built:
    _check_keys(params, ("seen_classes",) + _PER_CLASS + _TOTALS, "unseen")
    n_classes = dataset.n_classes
    if "seen_classes" in params and params["seen_classes"] is not None:
        seen = sorted({int(c) for c in params["seen_classes"]})
    else:
        seen = list(range(min(n_classes - 1, max(1, int(math.floor(0.7 * n_classes + 0.5))))))
    if not seen or seen[0] < 0 or seen[-1] >= n_classes:
        raise ValueError(f"seen_classes must be class indices in [0, {n_classes}), got {seen}")
    unseen = [c for c in range(n_classes) if c not in set(seen)]
    if not unseen:
        raise ValueError("seen_classes covers every class; nothing is left unseen")
    labels = dataset.labels.numpy() > 0
    has_seen = labels[:, seen].any(axis=1)
    has_unseen = labels[:, unseen].any(axis=1)
    seen_items = np.flatnonzero(has_seen & ~has_unseen).astype(np.int64)
    unseen_items = np.flatnonzero(has_unseen & ~has_seen).astype(np.int64)
    dropped = int(np.count_nonzero(has_seen & has_unseen))
    if _resolve_mode(dataset, params) == "per_class":
        q = _count(params.get("query_per_class", 50), "query_per_class")
        v = _count(params.get("val_per_class", 50), "val_per_class")
        t = _count(params.get("train_per_class"), "train_per_class", allow_none=True)
        seen_parts = _split_per_class(primary, seen_items, [v] + ([t] if t is not None else []), sampler,
                                      ["validation"] + (["train"] if t is not None else []))
        validation = seen_parts[0]
        train = seen_parts[1] if t is not None else seen_parts[-1]
        query, database = _split_per_class(primary, unseen_items, [q], sampler, ["query"])
        resolved = {"mode": "per_class", "query_per_class": q, "val_per_class": v, "train_per_class": t}
    else:
        q = _count(params.get("n_query", _ten_percent(unseen_items.size)), "n_query")
        v = _count(params.get("n_val", _ten_percent(seen_items.size)), "n_val")
        t = _count(params.get("n_train"), "n_train", allow_none=True)
        seen_parts = _split_totals(seen_items, [v] + ([t] if t is not None else []), sampler,
                                   ["validation"] + (["train"] if t is not None else []))
        validation = seen_parts[0]
        train = seen_parts[1] if t is not None else seen_parts[-1]
        query, database = _split_totals(unseen_items, [q], sampler, ["query"])
        resolved = {"mode": "totals", "n_query": q, "n_val": v, "n_train": t}
    resolved.update({"seen_classes": seen, "n_dropped_mixed": dropped})
    return query, validation, database, train, resolved, seen, unseen


def _cifar(protocol: str) -> _Builder:
    defaults = {"cifar10": (100, 500, 100), "cifar10-1": (100, 500, 100), "cifar10-2": (1000, None, 100)}[protocol]

    def build(dataset: HashDataset, primary: np.ndarray, sampler: _Sampler, params: Mapping[str, Any]) -> _Built:
        if not dataset.is_single_label:
            raise ValueError(f"protocol {protocol!r} needs single-label data; {dataset.name!r} is multi-label")
        everything = np.arange(len(dataset), dtype=np.int64)
        v = _count(params.get("val_per_class", defaults[2]), "val_per_class")
        if protocol == "cifar10-2":
            _check_keys(params, ("query_per_class", "val_per_class", "query_group"), protocol)
            group = params.get("query_group", "test")
            q = _count(params.get("query_per_class", defaults[0]), "query_per_class")
            if group is not None and group in dataset.groups:
                query = np.asarray(dataset.groups[group], dtype=np.int64)
                source = f"group:{group}"
            else:
                query, _ = _split_per_class(primary, everything, [q], sampler, ["query"])
                source = "random"
            database = np.setdiff1d(everything, query)
            validation, train = _split_per_class(primary, database, [v], sampler, ["validation"])
            resolved = {"query_per_class": q, "val_per_class": v, "query_group": group, "query_source": source}
            return query, validation, database, train, resolved, None, None
        _check_keys(params, ("query_per_class", "train_per_class", "val_per_class"), protocol)
        q = _count(params.get("query_per_class", defaults[0]), "query_per_class")
        t = _count(params.get("train_per_class", defaults[1]), "train_per_class")
        query, train, validation, rest = _split_per_class(
            primary, everything, [q, t, v], sampler, ["query", "train", "validation"]
        )
        if protocol == "cifar10":
            database = _sorted([validation, rest])
        else:
            database = _sorted([train, validation, rest])
        resolved = {"query_per_class": q, "train_per_class": t, "val_per_class": v}
        return query, validation, database, train, resolved, None, None

    return build


_BUILDERS: Mapping[str, _Builder] = MappingProxyType({
    "standard": _standard,
    "unseen": _unseen,
    "cifar10": _cifar("cifar10"),
    "cifar10-1": _cifar("cifar10-1"),
    "cifar10-2": _cifar("cifar10-2"),
})


def make_protocol(
    dataset: HashDataset,
    protocol: str = "standard",
    seed: int = 0,
    label_fraction: float = 1.0,
    **params: Any,
) -> Manifest:
    """Split ``dataset`` by a named, seeded protocol (see module docstring) into a validated :class:`Manifest`."""
    if protocol not in _BUILDERS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    seed_ok = (_is_int(seed) or isinstance(seed, np.integer)) and int(seed) >= 0
    if not seed_ok:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    fraction = float(label_fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must lie in (0, 1], got {label_fraction!r}")
    primary = dataset.labels.numpy().argmax(axis=1).astype(np.int64)  # the class, or the first label
    sampler = _Sampler(int(seed))
    query, validation, database, train, resolved, seen, unseen = _BUILDERS[protocol](dataset, primary, sampler, params)
    labeled = _labeled_subset(primary, train, fraction, sampler)
    resolved["label_fraction"] = fraction
    return Manifest(
        dataset=dataset.name,
        fingerprint=dataset.fingerprint(),
        n_items=len(dataset),
        protocol=protocol,
        seed=int(seed),
        params=_plain(resolved),
        query=query,
        validation=validation,
        database=database,
        train=train,
        labeled=labeled,
        seen_classes=seen,
        unseen_classes=unseen,
    )
