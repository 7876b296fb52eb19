"""What ``POST /search`` and ``POST /items`` do once their body is read: decode, encode, search or add.

The compute (image decoding, the network, the index scan) runs in worker threads so that the event loop
keeps answering other requests; answers carry per-stage times for the Server-Timing header.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .bodies import AddBody, SearchBody, Upload, check_k_radius, read_form, read_json
from .config import ServeError
from .images import decode_upload, png_bytes, to_model_input
from .parsing import format_code, parse_codes, parse_ids, parse_labels
from .service import SearchService
from .store import Snapshot

__all__ = ["search_request", "add_items"]


def _content_kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return "multipart"
    if ctype in ("", "application/json"):
        return "json"
    raise ServeError(415, f"unsupported content type {ctype!r}; send application/json or multipart/form-data")


def _hits(service: SearchService, snap: Snapshot, hits: dict, q_labels: Optional[tuple[int, ...]]) -> list[dict]:
    out = []
    for item_id, dist in zip(hits["ids"].tolist(), hits["distances"].tolist()):
        labels = service.labels_of(snap, item_id)
        correct = None if q_labels is None or labels is None else bool(set(q_labels) & set(labels))
        out.append({"id": item_id, "distance": dist, "labels": labels, "correct": correct,
                    "image_url": f"/items/{item_id}/image" if service.has_image(snap, item_id) else None})
    return out


def _answer(service: SearchService, snap: Snapshot, names: list[str], codes: np.ndarray,
            q_labels: list, ood: Optional[np.ndarray], hits: list[dict], k: int, radius: Optional[int]) -> dict:
    results = []
    for i, name in enumerate(names):
        score = None if ood is None or not np.isfinite(ood[i]) else float(ood[i])
        results.append({"query": name, "code": format_code(codes[i]),
                        "labels": None if q_labels[i] is None else list(q_labels[i]), "ood_score": score,
                        "truncated": bool(hits[i]["truncated"]), "hits": _hits(service, snap, hits[i], q_labels[i])})
    return {"bits": service.bits, "k": None if radius is not None else k, "radius": radius, "results": results}


def _decode_all(service: SearchService, uploads: list[Upload]):
    s = service.settings
    pixels = [decode_upload(u.data, u.name, s.max_upload_bytes, s.max_pixels) for u in uploads]
    return to_model_input(pixels, service.image_size, service.channels)


def _search_images(service: SearchService, uploads: list[Upload], k: int, radius: Optional[int],
                   labels: list[list[int]]) -> tuple[dict, dict]:
    q_labels = parse_labels(labels, len(uploads), len(service.class_names))
    t0 = time.perf_counter()
    _, x = _decode_all(service, uploads)
    t1 = time.perf_counter()
    codes, ood = service.encode(x)
    t2 = time.perf_counter()
    snap = service.snapshot
    hits = service.search(snap, codes, k, radius)
    t3 = time.perf_counter()
    names = [u.name for u in uploads]
    timing = {"decode": (t1 - t0) * 1e3, "encode": (t2 - t1) * 1e3, "search": (t3 - t2) * 1e3}
    return _answer(service, snap, names, codes, q_labels, ood, hits, k, radius), timing


def _search_codes(service: SearchService, body: SearchBody, k: int, radius: Optional[int]) -> tuple[dict, dict]:
    limit = service.settings.max_queries
    if (body.codes is None) == (body.ids is None):
        raise ServeError(400, "give either 'codes' or 'ids' (exactly one of them)")
    t0 = time.perf_counter()
    snap = service.snapshot
    ood = None
    if body.codes is not None:
        codes = parse_codes(body.codes, body.encoding, service.bits, limit)
        names = list(body.codes)
        q_labels = parse_labels(body.labels, len(names), len(service.class_names))
    else:
        if not 1 <= len(body.ids) <= limit:
            raise ServeError(400, f"ids: give 1 to {limit} ids, got {len(body.ids)}")
        codes = service.codes_of(snap, body.ids)
        names = [f"id:{i}" for i in body.ids]
        q_labels = (parse_labels(body.labels, len(names), len(service.class_names)) if body.labels
                    else [service.labels_of(snap, i) for i in body.ids])
        ood = service.ood_of_items(snap, body.ids)
    t1 = time.perf_counter()
    hits = service.search(snap, codes, k, radius)
    t2 = time.perf_counter()
    timing = {"parse": (t1 - t0) * 1e3, "search": (t2 - t1) * 1e3}
    return _answer(service, snap, names, codes, q_labels, ood, hits, k, radius), timing


async def search_request(service: SearchService, request: Request) -> tuple[dict, dict]:
    """Answer a search body (multipart images or JSON codes / ids): the payload and per-stage times (ms)."""
    settings = service.settings
    if _content_kind(request) == "multipart":
        form = await read_form(request, settings, settings.max_queries)
        k, radius = check_k_radius(form.int_field("k"), form.int_field("radius"), settings, service.bits)
        if not form.uploads:
            raise ServeError(400, "images: upload at least one image file (field 'images')")
        return await run_in_threadpool(_search_images, service, form.uploads, k, radius, form.int_lists("labels"))
    body = await read_json(request, SearchBody)
    k, radius = check_k_radius(body.k, body.radius, settings, service.bits)
    return await run_in_threadpool(_search_codes, service, body, k, radius)


def _add_images(service: SearchService, uploads: list[Upload], ids: np.ndarray, labels: list) -> int:
    stored, x = _decode_all(service, uploads)
    codes, _ = service.encode(x)
    pngs = [png_bytes(p) for p in stored]
    return service.add(codes, ids, labels, pngs)


async def add_items(service: SearchService, request: Request) -> dict:
    """Add the items of a body (multipart images or JSON codes, with ids): ``{"added", "items"}``."""
    settings = service.settings
    n_classes = len(service.class_names)
    if _content_kind(request) == "multipart":
        form = await read_form(request, settings, settings.max_add)
        if not form.uploads:
            raise ServeError(400, "images: upload at least one image file (field 'images')")
        ids = parse_ids([i for row in form.int_lists("ids") for i in row], len(form.uploads))
        labels = parse_labels(form.int_lists("labels"), len(form.uploads), n_classes)
        total = await run_in_threadpool(_add_images, service, form.uploads, ids, labels)
    else:
        body = await read_json(request, AddBody)
        codes = parse_codes(body.codes, body.encoding, service.bits, settings.max_add)
        ids = parse_ids(body.ids, codes.shape[0])
        labels = parse_labels(body.labels, codes.shape[0], n_classes)
        total = await run_in_threadpool(service.add, codes, ids, labels, None)
    return {"added": ids.tolist(), "items": total}
