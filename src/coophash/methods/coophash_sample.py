"""Samples of a trained CoopHash run: contrastive pairs per class, as tensors and as a PNG grid.

Grid layout (one row per class c): ``per_class`` groups of four tiles, each group from one latent z:
generated positive ``G(z, e_c)``, its Langevin revision, generated negative ``G(z, y⁻)`` and its revision,
where ``y⁻`` is a class other than c.  A thin gap separates the groups.  A JSON sidecar names every tile's
class.  Also: the accuracy of an independent judge of class-faithfulness on the samples (a ``classifier``
run trained on real labeled images only, never on generated ones: :func:`coophash.pipeline.judge.train_judge`).

Sampling draws from torch's global generator (the generator's latents, negative labels, Langevin noise),
seeded with ``seed`` inside :func:`seeded_rng`, which restores the caller's random state afterwards.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from coophash.methods.classifier import Classifier
from coophash.methods.langevin import langevin_revise

__all__ = ["sample_pairs", "sample_grid", "save_grid_png", "write_sample", "judge_accuracy", "seeded_rng",
           "class_spread", "sample_diversity"]


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """torch's global generators (CPU and every CUDA device) seeded with ``seed`` inside, restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def sample_pairs(method: Any, y: Tensor, steps: Optional[int] = None) -> dict[str, Tensor]:
    """Generated and revised contrastive pairs for labels ``y`` (torch's global generator)."""
    gen, desc = method.gen, method.desc
    cfg = method.langevin if steps is None else type(method.langevin)(**{**method.langevin.__dict__, "steps": steps})
    with torch.no_grad():
        pairs = gen.make_pairs(y, method.info.multi_label)
    x_hat = torch.cat([pairs.x_pos, pairs.x_neg])
    y_all = torch.cat([pairs.y_pos, pairs.y_neg])
    label = y_all if method.args.langevin_label_aware else None
    with method.generated_statistics():  # batch norm as revision saw it in training
        x_t, _ = langevin_revise(lambda v: desc.energy(v, label), x_hat, cfg, frozen_modules=[desc],
                                 final_energy=False)
    n = y.shape[0]
    return {"gen_pos": pairs.x_pos, "rev_pos": x_t[:n], "gen_neg": pairs.x_neg, "rev_neg": x_t[n:],
            "y_pos": pairs.y_pos, "y_neg": pairs.y_neg}


def sample_grid(method: Any, per_class: int = 4, seed: int = 0, steps: Optional[int] = None) -> tuple[np.ndarray, dict]:
    """An image grid (H, W, C) uint8 of pairs per class and a dict describing each tile."""
    c = method.info.n_classes
    dev = method.device
    y = torch.eye(c, device=dev).repeat_interleave(per_class, dim=0)
    with seeded_rng(seed):
        s = sample_pairs(method, y, steps)
    tiles = torch.stack([s["gen_pos"], s["rev_pos"], s["gen_neg"], s["rev_neg"]], dim=1)  # (N, 4, C, H, W)
    tiles = ((tiles.clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    n_ch, h, w = tiles.shape[2:]
    gap = 2
    cols = per_class * 4
    grid = np.full((c * (h + 1) + 1, cols * (w + 1) + (per_class - 1) * gap + 1, n_ch), 255, np.uint8)
    layout: dict[str, Any] = {"rows": [], "tile_order": ["generated+", "revised+", "generated-", "revised-"]}
    for ci in range(c):
        row = {"class": ci, "negatives": []}
        for j in range(per_class):
            i = ci * per_class + j
            row["negatives"].append(np.flatnonzero(s["y_neg"][i].cpu().numpy()).tolist())
            for t in range(4):
                y0 = ci * (h + 1) + 1
                x0 = (j * 4 + t) * (w + 1) + j * gap + 1
                grid[y0 : y0 + h, x0 : x0 + w] = tiles[i, t].transpose(1, 2, 0)
        layout["rows"].append(row)
    return grid, layout


def save_grid_png(grid: np.ndarray, path: str | Path, scale: int = 3) -> Path:
    """Write a uint8 grid (H, W, C) as a PNG (nearest-neighbour upscaled ``scale`` times)."""
    from PIL import Image

    g = grid[..., 0] if grid.shape[2] == 1 else grid
    img = Image.fromarray(g)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    img.save(p)
    return p


def write_sample(method: Any, path: str | Path, per_class: int = 4, seed: int = 0,
                 steps: Optional[int] = None) -> tuple[Path, Path]:
    """Write the PNG grid and its JSON layout sidecar; returns both paths."""
    grid, layout = sample_grid(method, per_class, seed, steps)
    png = save_grid_png(grid, path)
    side = png.with_suffix(".json")
    side.write_text(json.dumps(layout, indent=1) + "\n")
    return png, side


@torch.no_grad()
def judge_accuracy(judge: Classifier, method: Any, n_per_class: int = 20, seed: int = 0,
                   steps: Optional[int] = None) -> dict[str, float]:
    """The judge's accuracy on generated and revised positives/negatives against their conditioning labels.

    ``judge`` is a trained ``classifier`` method (:func:`coophash.pipeline.judge.train_judge`, or a judge run
    reloaded with :func:`coophash.api.load_run`).
    """
    c = method.info.n_classes
    y = torch.eye(c, device=method.device).repeat_interleave(n_per_class, dim=0)
    with torch.enable_grad(), seeded_rng(seed):
        s = sample_pairs(method, y, steps)
    judge.train(False)
    out = {}
    for key, lab in (("gen_pos", "y_pos"), ("rev_pos", "y_pos"), ("gen_neg", "y_neg"), ("rev_neg", "y_neg")):
        pred = judge.predict(s[key].to(judge.device)).cpu()
        out[f"judge_acc_{key}"] = float((pred == s[lab].cpu().argmax(dim=1)).float().mean())
    return out


def class_spread(images: Tensor, labels: Tensor) -> dict[int, float]:
    """Per class index c: the mean Euclidean distance between two different images of class c,
    ``2 / (n (n − 1)) Σ_{i<j} ||x_i − x_j||`` over the n ≥ 2 images whose (one-hot or multi-hot) label row has c."""
    x = images.flatten(1).double()
    out: dict[int, float] = {}
    for c in range(labels.shape[1]):
        rows = x[labels[:, c] > 0]
        n = rows.shape[0]
        if n < 2:
            continue
        d = torch.cdist(rows, rows)
        out[c] = float(d.sum() / (n * (n - 1)))
    return out


def sample_diversity(method: Any, real_images: Tensor, real_labels: Tensor, n_per_class: int = 20,
                     seed: int = 0) -> dict[str, float]:
    """How varied the generator's images of one class are, against real images of that class: the mean over
    classes of :func:`class_spread` of generated (``gen``) and revised (``rev``) positives, ``n_per_class`` latents
    each, divided by the real images' spread of the same class (1: as varied as the data; 0: one image per class,
    the latent ignored).  Samples as :func:`judge_accuracy` does (same seed, same images)."""
    c = method.info.n_classes
    y = torch.eye(c, device=method.device).repeat_interleave(n_per_class, dim=0)
    with torch.enable_grad(), seeded_rng(seed):
        s = sample_pairs(method, y)
    real = class_spread(real_images.float().cpu(), real_labels.float().cpu())
    out = {}
    for key in ("gen_pos", "rev_pos"):
        spread = class_spread(s[key].detach().float().cpu(), s["y_pos"].cpu())
        ratios = [spread[k] / real[k] for k in spread if k in real and real[k] > 0]
        out[f"diversity_{key}"] = float(np.mean(ratios)) if ratios else float("nan")
    return out
