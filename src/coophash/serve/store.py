"""What the service keeps on disk: the index file and, beside it, what it knows of items added through the API.

* ``FILE`` — the :class:`~coophash.index.HammingIndex` in its own versioned, checksummed format, written
  atomically by ``HammingIndex.save``;
* ``FILE.items.json`` — for every item added through ``POST /items``: its labels (or null) and whether it
  has an image (written atomically);
* ``FILE.items/<id>.png`` — the image of such an item at the model's input size.

Writes go in an order that a crash cannot make inconsistent: an add writes images, then the JSON, then the
index; a delete writes the index, then the JSON, then removes images.  Entries for ids that are not in the
index are ignored when read.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from coophash.index import HammingIndex
from coophash.utils.io import atomic_write_bytes, atomic_write_text

from .config import ServeError

__all__ = ["ItemExtra", "Snapshot", "IndexStore"]

_SIDECAR_VERSION = 1


@dataclass(frozen=True)
class ItemExtra:
    """An item added through the API: its class indices (None: unknown) and whether an image is stored."""

    labels: Optional[tuple[int, ...]]
    has_image: bool


class Snapshot:
    """One immutable state of the live index: searches read it without locks; a write builds the next one."""

    def __init__(self, index: HammingIndex, extras: Mapping[int, ItemExtra]) -> None:
        self.index = index
        self.extras = dict(extras)
        self.ids = index.ids
        self.codes = index.codes
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        # multi-index hashing tables are built lazily inside the index: one radius search at a time
        self.range_lock = threading.Lock()

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in ``self.ids``/``self.codes``, -1 where the id is not in the index."""
        ids = np.asarray(ids, dtype=np.int64)
        n = self._sorted.shape[0]
        if n == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, ids), n - 1)
        return np.where(self._sorted[at] == ids, self._order[at], -1)

    def contains(self, item_id: int) -> bool:
        """Whether ``item_id`` is in the index."""
        return bool(self.positions(np.array([item_id]))[0] >= 0)


class IndexStore:
    """The index file and its sidecars (see the module docstring); every write is atomic."""

    def __init__(self, path: Path, nbits: int, backend: str, n_threads: int) -> None:
        self.path = Path(path)
        self.nbits = nbits
        self.backend = backend
        self.n_threads = n_threads

    @property
    def extras_path(self) -> Path:
        """The JSON sidecar of items added through the API."""
        return self.path.with_name(self.path.name + ".items.json")

    @property
    def images_dir(self) -> Path:
        """The folder of images of items added through the API."""
        return self.path.with_name(self.path.name + ".items")

    def image_path(self, item_id: int) -> Path:
        """Where the image of added item ``item_id`` lives (ids are integers: no path can be injected)."""
        return self.images_dir / f"{int(item_id)}.png"

    def new_index(self) -> HammingIndex:
        """An empty index with this store's settings."""
        return HammingIndex(self.nbits, backend=self.backend, n_threads=self.n_threads)

    def clone(self, snap: Snapshot) -> HammingIndex:
        """A private copy of the snapshot's index (copy-on-write: the snapshot itself is never changed)."""
        index = self.new_index()
        index.add(snap.codes, snap.ids)
        return index

    def load(self) -> Snapshot:
        """Read the index file and the sidecar (ServeError 500-class message naming the file on failure)."""
        from coophash.index import IndexFileError

        try:
            index = HammingIndex.load(self.path, nbits=self.nbits, backend=self.backend, n_threads=self.n_threads)
        except (IndexFileError, OSError, ValueError) as exc:
            raise ServeError(500, f"cannot load the index: {exc}") from None
        present = set(index.ids.tolist())
        return Snapshot(index, {i: e for i, e in self._read_extras().items() if i in present})

    def _read_extras(self) -> dict[int, ItemExtra]:
        if not self.extras_path.exists():
            return {}
        try:
            doc = json.loads(self.extras_path.read_text())
            items = doc["items"]
            return {
                int(k): ItemExtra(None if v["labels"] is None else tuple(int(c) for c in v["labels"]),
                                  bool(v["has_image"]))
                for k, v in items.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ServeError(500, f"{self.extras_path}: unreadable item sidecar ({type(exc).__name__}: {exc})") from None

    def write_extras(self, extras: Mapping[int, ItemExtra]) -> None:
        """Rewrite the JSON sidecar atomically."""
        items = {str(i): {"labels": None if e.labels is None else list(e.labels), "has_image": e.has_image}
                 for i, e in sorted(extras.items())}
        atomic_write_text(self.extras_path, json.dumps({"version": _SIDECAR_VERSION, "items": items}) + "\n")

    def write_image(self, item_id: int, png: bytes) -> None:
        """Store the PNG of an added item atomically."""
        atomic_write_bytes(self.image_path(item_id), png)

    def remove_image(self, item_id: int) -> None:
        """Delete the PNG of an item if there is one."""
        self.image_path(item_id).unlink(missing_ok=True)

    def write_index(self, index: HammingIndex) -> None:
        """Persist the index atomically (temp file, fsync, rename: readers of the file see old or new)."""
        index.save(self.path)
