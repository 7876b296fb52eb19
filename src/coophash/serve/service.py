"""The state behind ``coophash serve``: a trained run's network, its dataset and a live Hamming index.

Reads take the current :class:`~coophash.serve.store.Snapshot` (one attribute read) and never wait for a
write.  A write (add or delete) takes the write lock, copies the index, changes the copy, persists it
atomically, then swaps the snapshot in: readers see the old state or the new one, never half of a change.

Item ids of the index built from the run are indices into the run's dataset (as ``coophash encode``
writes them); labels and images of those items come from the dataset.  Items added through the API carry
their own labels and image (see :mod:`coophash.serve.store`).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from coophash.api import load_run
from coophash.data import HashDataset, Manifest, load_dataset, to_float
from coophash.train import runs
from coophash.train.encoding import encode_images, encode_indices

from .config import ServeConfig, ServeError
from .images import png_bytes
from .store import IndexStore, ItemExtra, Snapshot

__all__ = ["SearchService", "DEFAULT_INDEX_NAME"]

#: Index file of a run when ``--index`` is not given (inside the run folder).
DEFAULT_INDEX_NAME = "serve-index.chidx"
#: Most hits one radius search may hold in memory at once (queries are searched in chunks below it).
_RANGE_BUDGET = 4_000_000


class SearchService:
    """Encode queries with the run's network and search the live index; add and delete items."""

    def __init__(self, cfg: Any, method: Any, dataset: HashDataset, store: IndexStore, snap: Snapshot,
                 settings: ServeConfig) -> None:
        self.cfg = cfg
        self.method = method
        self.dataset = dataset
        self.store = store
        self.settings = settings
        self._snap = snap
        self._write_lock = threading.Lock()
        self._db_labels = dataset.labels.numpy() > 0.5
        probe = torch.zeros((1, self.channels, self.image_size, self.image_size))
        with torch.no_grad():
            self.has_ood = method.ood_score(probe.to(method.device)) is not None
        snap.index.search(np.zeros((1, snap.index.code_size), dtype=np.uint8), 1)  # compile / warm the scan

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run: Union[str, Path], settings: ServeConfig, root: Union[str, Path] = "runs",
                 which: str = "best", device: str = "cpu") -> "SearchService":
        """Load the run's network, dataset and manifest; load the index file or build it from the database split."""
        try:
            run_dir = runs.resolve_run(run, root, which)[0]
            cfg, method = load_run(run, which=which, device=device, root=root)
            ds = load_dataset(cfg.dataset, image_size=method.info.image_size, channels=method.info.channels,
                              **cfg.dataset_args)
            manifest = Manifest.load(run_dir / runs.MANIFEST)
            manifest.check(ds)
        except (OSError, ValueError, KeyError) as exc:
            raise ServeError(500, f"cannot load run {run}: {exc}") from None
        path = settings.index_file or run_dir / DEFAULT_INDEX_NAME
        store = IndexStore(path, cfg.bits, settings.backend, settings.index_threads)
        if path.exists():
            snap = store.load()
        else:
            index = store.new_index()
            index.add(encode_indices(method.encode, ds, manifest.database, method.device), manifest.database)
            store.write_index(index)
            snap = Snapshot(index, {})
        return cls(cfg, method, ds, store, snap, settings)

    # ------------------------------------------------------------------ facts
    @property
    def snapshot(self) -> Snapshot:
        """The current state (keep the object for a consistent view across one request)."""
        return self._snap

    @property
    def bits(self) -> int:
        """Code length."""
        return int(self.cfg.bits)

    @property
    def image_size(self) -> int:
        """Side of the network's input images."""
        return int(self.method.info.image_size)

    @property
    def channels(self) -> int:
        """Channels of the network's input images."""
        return int(self.method.info.channels)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the label columns of the run's dataset."""
        return self.dataset.class_names

    def info(self) -> dict:
        """What ``/stats`` says about the model and the index."""
        snap = self._snap
        return {
            "items": int(snap.index.ntotal),
            "bits": self.bits,
            "method": self.cfg.method,
            "loss": self.cfg.loss,
            "dataset": self.cfg.dataset,
            "backend": snap.index.backend,
            "index_file": str(self.store.path),
            "image_size": self.image_size,
            "channels": self.channels,
            "classes": list(self.class_names),
            "ood_score": self.has_ood,
            "writes_enabled": self.settings.token is not None,
        }

    # ------------------------------------------------------------------ items
    def labels_of(self, snap: Snapshot, item_id: int) -> Optional[tuple[int, ...]]:
        """Class indices of an item (None where unknown)."""
        extra = snap.extras.get(item_id)
        if extra is not None:
            return extra.labels
        if 0 <= item_id < self._db_labels.shape[0]:
            return tuple(int(c) for c in np.flatnonzero(self._db_labels[item_id]))
        return None

    def has_image(self, snap: Snapshot, item_id: int) -> bool:
        """Whether ``GET /items/{id}/image`` can answer for this item."""
        extra = snap.extras.get(item_id)
        if extra is not None:
            return extra.has_image
        return 0 <= item_id < len(self.dataset)

    def image_png(self, item_id: int) -> bytes:
        """PNG bytes of an item of the index (404 for an unknown id or an item without image)."""
        snap = self._snap
        if not snap.contains(item_id):
            raise ServeError(404, f"no item with id {item_id} in the index")
        if not self.has_image(snap, item_id):
            raise ServeError(404, f"item {item_id} has no image (it was added as a code)")
        if item_id in snap.extras:
            try:
                return self.store.image_path(item_id).read_bytes()
            except OSError:
                raise ServeError(404, f"the image of item {item_id} is missing from {self.store.images_dir}") from None
        return png_bytes(self.dataset.pixels([item_id])[0])

    def pixels_of(self, snap: Snapshot, item_id: int) -> Optional[torch.Tensor]:
        """uint8 (C, H, W) of a dataset item (None for items added through the API)."""
        if item_id in snap.extras or not 0 <= item_id < len(self.dataset):
            return None
        return self.dataset.pixels([item_id])[0]

    def codes_of(self, snap: Snapshot, ids: list[int]) -> np.ndarray:
        """Stored packed codes of index items (404 naming the first unknown id)."""
        pos = snap.positions(np.asarray(ids, dtype=np.int64))
        if np.any(pos < 0):
            raise ServeError(404, f"no item with id {ids[int(np.flatnonzero(pos < 0)[0])]} in the index")
        return snap.codes[pos]

    def list_items(self, offset: int, limit: int) -> tuple[Snapshot, np.ndarray]:
        """A page of item ids in insertion order, with the snapshot they were read from."""
        snap = self._snap
        return snap, snap.ids[offset : offset + limit]

    # ------------------------------------------------------------------ encode and search
    def encode(self, x: torch.Tensor) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Packed codes and OOD scores (None when the method has none) of a float batch in [-1, 1]."""
        x = x.to(self.method.device)
        codes = encode_images(self.method.encode, x, self.method.device)
        return codes, self.ood(x)

    def ood(self, x: torch.Tensor) -> Optional[np.ndarray]:
        """Out-of-distribution scores (higher = more unusual) of a float batch, None when the method has none."""
        if not self.has_ood or x.shape[0] == 0:
            return None
        with torch.no_grad():
            return self.method.ood_score(x.to(self.method.device)).float().cpu().numpy()

    def ood_of_items(self, snap: Snapshot, ids: list[int]) -> Optional[np.ndarray]:
        """OOD scores of dataset items (NaN for items added through the API), None when the method has none."""
        if not self.has_ood:
            return None
        scores = np.full(len(ids), np.nan)
        rows = [(j, self.pixels_of(snap, i)) for j, i in enumerate(ids)]
        rows = [(j, p) for j, p in rows if p is not None]
        if rows:
            scores[[j for j, _ in rows]] = self.ood(to_float(torch.stack([p for _, p in rows])))
        return scores

    def search(self, snap: Snapshot, codes: np.ndarray, k: Optional[int], radius: Optional[int]) -> list[dict]:
        """Hits of each query code: ``{"ids", "distances", "truncated"}`` (top-k, or every hit within ``radius``)."""
        if radius is None:
            D, I = snap.index.search(codes, int(k))
            out = []
            for d, i in zip(D, I):
                keep = i >= 0
                out.append({"ids": i[keep], "distances": d[keep], "truncated": False})
            return out
        cap = self.settings.max_range_hits
        # a wide radius can return the whole index per query: search in chunks of bounded total size
        step = max(1, _RANGE_BUDGET // max(1, snap.index.ntotal))
        out = []
        for start in range(0, codes.shape[0], step):
            with snap.range_lock:
                lims, D, I = snap.index.range_search(codes[start : start + step], int(radius))
            for q in range(lims.shape[0] - 1):
                lo, hi = int(lims[q]), int(lims[q + 1])
                out.append({"ids": I[lo : min(hi, lo + cap)], "distances": D[lo : min(hi, lo + cap)],
                            "truncated": hi - lo > cap})
        return out

    # ------------------------------------------------------------------ writes
    def add(self, codes: np.ndarray, ids: np.ndarray, labels: list[Optional[tuple[int, ...]]],
            pngs: Optional[list[bytes]] = None) -> int:
        """Add items (409 when an id is already in the index); persisted before it becomes visible. Returns ntotal."""
        with self._write_lock:
            snap = self._snap
            taken = ids[snap.positions(ids) >= 0]
            if taken.size:
                raise ServeError(409, f"ids already in the index: {taken[:10].tolist()}; delete them first")
            index = self.store.clone(snap)
            index.add(codes, ids)
            extras = dict(snap.extras)
            for row, item_id in enumerate(ids.tolist()):
                extras[item_id] = ItemExtra(labels[row], pngs is not None)
            try:
                for item_id, png in zip(ids.tolist(), pngs or []):
                    self.store.write_image(item_id, png)
                self.store.write_extras(extras)
                self.store.write_index(index)
            except OSError as exc:
                raise ServeError(503, f"could not persist the change: {exc}") from None
            self._snap = Snapshot(index, extras)
            return int(index.ntotal)

    def remove(self, item_id: int) -> int:
        """Delete one item (404 when absent); persisted before it becomes visible. Returns ntotal."""
        with self._write_lock:
            snap = self._snap
            if not snap.contains(item_id):
                raise ServeError(404, f"no item with id {item_id} in the index")
            index = self.store.clone(snap)
            index.remove_ids(np.array([item_id], dtype=np.int64))
            extras = {i: e for i, e in snap.extras.items() if i != item_id}
            try:
                self.store.write_index(index)
            except OSError as exc:
                raise ServeError(503, f"could not persist the change: {exc}") from None
            self._snap = Snapshot(index, extras)
            try:  # the deletion is done; sidecar entries of absent ids are ignored when read
                self.store.write_extras(extras)
                self.store.remove_image(item_id)
            except OSError:
                pass
            return int(index.ntotal)

