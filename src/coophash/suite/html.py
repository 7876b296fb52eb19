"""A static HTML page of sample retrievals: each query with its top-k images, correct ones marked.

The page is self-contained: images are embedded as base64 PNG data URIs, the styling is inline CSS, there
is no script and no external asset, so it opens from disk in any browser.  Markup (what tests rely on):
one ``<section class="retrieval-section" data-section=... data-method=...>`` per (section, method), one
``<tr class="query-row" data-query=<index> data-query-labels="3">`` per query, whose first cell
``td.query`` holds the query image and whose next k cells ``td.result`` (class ``correct`` or ``wrong``,
attributes ``data-index``, ``data-labels``, ``data-distance``) hold the results in rank order.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from coophash.utils.io import atomic_write_text

__all__ = ["render_retrievals", "write_retrievals", "png_data_uri"]

_SECTIONS = {"main": ("samples", "In-distribution queries"),
             "unseen": ("samples_unseen", "Unseen classes"),
             "cross_dataset": ("samples_cross", "Cross-dataset")}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.retrievals { border-collapse: separate; border-spacing: 4px; }
td { text-align: center; vertical-align: top; font-size: 11px; padding: 2px; }
td img { width: 56px; height: 56px; image-rendering: pixelated; display: block; margin: auto; }
td.query { background: #eef; border: 3px solid #446; }
td.result { border: 3px solid transparent; }
td.result.correct { border-color: #1a9c3c; }
td.result.wrong { border-color: #c8322b; opacity: 0.85; }
.mark { font-weight: bold; } td.correct .mark { color: #1a9c3c; } td.wrong .mark { color: #c8322b; }
.meta { color: #555; font-size: 0.9em; }
"""


def png_data_uri(pixels: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of a uint8 image (C, H, W) with C = 1 or 3."""
    from PIL import Image

    arr = np.asarray(pixels, dtype=np.uint8)
    rgb = arr.shape[0] == 3
    img = Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)) if rgb else arr[0])
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@functools.lru_cache(maxsize=8)
def _dataset(name: str, image_size: int, channels: int, args_json: str) -> Any:
    from coophash.data import load_dataset

    return load_dataset(name, image_size=image_size, channels=channels, **json.loads(args_json))


class _Images:
    """Data URIs of dataset items, each encoded once per page."""

    def __init__(self) -> None:
        self._cache: dict[tuple, str] = {}

    def uri(self, sample: Mapping[str, Any], index: int) -> str:
        key = (sample["dataset"], sample["image_size"], sample["channels"],
               json.dumps(sample.get("dataset_args") or {}, sort_keys=True), int(index))
        if key not in self._cache:
            ds = _dataset(*key[:4])
            self._cache[key] = png_data_uri(ds.pixels([int(index)])[0].numpy())
        return self._cache[key]


def _names(sample: Mapping[str, Any], labels: Sequence[int]) -> str:
    names = sample.get("class_names")
    return ", ".join(names[i] if names and i < len(names) else str(i) for i in labels)


def _section_html(title: str, section: str, method: str, sample: Mapping[str, Any], images: _Images) -> str:
    e = html.escape
    k = max((len(r) for r in sample["results"]), default=0)
    parts = [f'<section class="retrieval-section" id="{e(section)}-{e(method)}" data-section="{e(section)}" '
             f'data-method="{e(method)}">',
             f"<h2>{e(title)}: {e(method)}</h2>",
             f'<p class="meta">dataset {e(sample["dataset"])}, {sample["n_database"]} database items; '
             f"top {k} by Hamming distance (ties in database order)</p>",
             '<table class="retrievals"><thead><tr><th>query</th>'
             + "".join(f"<th>{i + 1}</th>" for i in range(k)) + "</tr></thead><tbody>"]
    for qi, qlab, res, rlab, dist, rel in zip(sample["query"], sample["query_labels"], sample["results"],
                                              sample["result_labels"], sample["distances"], sample["relevant"]):
        qtext = _names(sample, qlab)
        parts.append(f'<tr class="query-row" data-query="{qi}" data-query-labels="{e(" ".join(map(str, qlab)))}">'
                     f'<td class="query"><img src="{images.uri(sample, qi)}" alt="query {qi}, class {e(qtext)}">'
                     f'<div class="label">{e(qtext)}</div></td>')
        for j, lab, d, ok in zip(res, rlab, dist, rel):
            text = _names(sample, lab)
            mark = "✓" if ok else "✗"
            cls = "correct" if ok else "wrong"
            parts.append(f'<td class="result {cls}" data-index="{j}" data-labels="{e(" ".join(map(str, lab)))}" '
                         f'data-distance="{d}"><img src="{images.uri(sample, j)}" alt="item {j}, class {e(text)}">'
                         f'<div class="mark">{mark} {e(text)}</div><div class="meta">d={d}</div></td>')
        parts.append("</tr>")
    parts.append("</tbody></table></section>")
    return "\n".join(parts)


def render_retrievals(sections: Sequence[tuple[str, str, str, Mapping[str, Any]]], title: str,
                      intro: str = "") -> str:
    """The page for ``(section kind, section title, method, sample record)`` entries."""
    images = _Images()
    body = [_section_html(stitle, kind, method, sample, images) for kind, stitle, method, sample in sections]
    if body:
        links = " · ".join(f'<a href="#{html.escape(kind)}-{html.escape(method)}">{html.escape(kind)}: '
                           f"{html.escape(method)}</a>" for kind, _t, method, _s in sections)
        body.insert(0, f'<nav class="meta">{links}</nav>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(intro)}</p>\n"
            + ("\n".join(body) if body else "<p>No sample retrievals yet.</p>") + "\n</body>\n</html>\n")


def write_retrievals(sr: Any, path: Path) -> Optional[Path]:
    """Write the page for a suite run (every cached run carrying sample retrievals); None if there are none."""
    exps = sr.plan.suite.experiments
    settings = exps["retrievals"]
    entries = []
    for kind in settings["sections"]:
        extra, stitle = _SECTIONS[kind]
        for run in sr.plan.runs:
            rec = sr.records.get(run.key)
            if rec is None or extra not in rec.get("extra", {}):
                continue
            cfg = run.cfg
            label = f"{stitle} ({cfg.bits} bits, labels {cfg.label_fraction * 100:g}%, seed {cfg.seed})"
            entries.append((kind, label, run.method, rec["extra"][extra]))
    if not entries:
        return None
    intro = (f"Suite {sr.plan.suite.name}: each row is a query (blue frame) followed by its top {settings['k']} "
             "database images by Hamming distance; a green frame and ✓ mark an image sharing a label with the query, "
             "a red frame and ✗ one that does not. Labels are printed under each image.")
    text = render_retrievals(entries, f"coophash bench {sr.plan.suite.name}: sample retrievals", intro)
    return atomic_write_text(path, text)
