"""Langevin revision: K steps of Langevin dynamics that move images uphill on a descriptor's log-density.

``energy_fn(x)`` returns a per-image *log-density* ``f`` of shape (N,) (higher = more probable; CoopHash's
label-aware ``f_θ(x) + log p_θ(y|x)``); revision ascends it.  Two parameterisations (DESIGN.md §1):

* ``"sgld"`` (default, JEM's): ``x ← x + α ∇ₓ f(x) + σ·ε`` (then clamped to [-1, 1] when ``clamp``);
* ``"coopnets"``: ``x ← x + (δ²/2) ∇ₓ[f(x) − ‖x‖²/(2s²)] + δ·ε`` (the reference Gaussian N(0, s²I)).

``ε ~ N(0, I)`` from torch's global generator (checkpointed, so a resumed run revises identically);
``noise=False`` gives deterministic gradient ascent.  The descriptor is frozen during revision: every
parameter of ``frozen`` has ``requires_grad`` switched off and restored afterwards, gradients are taken with
:func:`torch.autograd.grad` with respect to the images only, so no ``.grad`` of a parameter is touched.
The returned images are detached.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["LangevinConfig", "LangevinStats", "langevin_revise", "frozen", "FORMS"]

FORMS = ("sgld", "coopnets")


@dataclass(frozen=True)
class LangevinConfig:
    """Hyperparameters of Langevin revision (defaults: DESIGN.md §1, SGLD form with JEM's values)."""

    steps: int = 10
    form: str = "sgld"
    step_size: float = 1.0  # α (SGLD)
    noise_std: float = 0.01  # σ (SGLD)
    delta: float = 0.002  # δ (CoopNets)
    s: float = 0.016  # reference std s (CoopNets)
    noise: bool = True
    clamp: bool = True  # clamp to [-1, 1] after each step (SGLD; CoopNets only when ``clamp_coopnets``)
    clamp_coopnets: bool = False

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"langevin form must be one of {FORMS}, got {self.form!r}")
        if self.steps < 0:
            raise ValueError(f"langevin steps must be >= 0, got {self.steps}")
        if self.form == "coopnets" and (self.delta <= 0 or self.s <= 0):
            raise ValueError("coopnets form needs delta > 0 and s > 0")


@dataclass
class LangevinStats:
    """What revision did: mean log-density before and after, mean L2 displacement per image, grad norm."""

    f_start: float = float("nan")
    f_end: float = float("nan")
    displacement: float = 0.0
    grad_norm: float = 0.0
    finite: bool = True
    history: list[float] = field(default_factory=list)


@contextlib.contextmanager
def frozen(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Switch ``requires_grad`` off for every parameter of ``modules``; restore each flag afterwards."""
    saved: list[tuple[nn.Parameter, bool]] = []
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            saved.append((p, p.requires_grad))
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def langevin_revise(
    energy_fn: Callable[[Tensor], Tensor],
    x0: Tensor,
    config: LangevinConfig,
    frozen_modules: Iterable[nn.Module] = (),
    track: bool = False,
    final_energy: bool = True,
) -> tuple[Tensor, LangevinStats]:
    """Revise ``x0`` by ``config.steps`` Langevin steps ascending ``energy_fn``; returns (detached x, stats).

    ``final_energy=False`` skips the extra forward pass that measures ``stats.f_end`` (left NaN).
    """
    cfg = config
    stats = LangevinStats()
    x = x0.detach().clone()
    with frozen(list(frozen_modules)), torch.enable_grad():
        grad_sq = 0.0
        for k in range(cfg.steps):
            x.requires_grad_(True)
            f = energy_fn(x)
            if f.dim() != 1 or f.shape[0] != x.shape[0]:
                raise ValueError(f"energy_fn must return one value per image (N,), got {tuple(f.shape)}")
            if k == 0:
                stats.f_start = float(f.detach().mean())
            if track:
                stats.history.append(float(f.detach().mean()))
            (g,) = torch.autograd.grad(f.sum(), x)
            x = x.detach()
            g = g.detach()
            if not bool(torch.isfinite(g).all()):
                stats.finite = False
                break
            grad_sq += float(g.flatten(1).norm(dim=1).mean())
            if cfg.form == "sgld":
                x = x + cfg.step_size * g
                if cfg.noise:
                    x = x + cfg.noise_std * torch.randn_like(x)
                if cfg.clamp:
                    x = x.clamp(-1.0, 1.0)
            else:
                x = x + 0.5 * cfg.delta**2 * (g - x / cfg.s**2)
                if cfg.noise:
                    x = x + cfg.delta * torch.randn_like(x)
                if cfg.clamp_coopnets:
                    x = x.clamp(-1.0, 1.0)
        stats.grad_norm = grad_sq / max(1, cfg.steps)
        if final_energy or cfg.steps == 0:
            with torch.no_grad():
                stats.f_end = float(energy_fn(x).mean())
            if cfg.steps == 0:
                stats.f_start = stats.f_end
    x = x.detach()
    stats.displacement = float((x - x0.detach()).flatten(1).norm(dim=1).mean())
    stats.finite = stats.finite and bool(torch.isfinite(x).all()) and not math.isinf(stats.f_end)
    if final_energy and math.isnan(stats.f_end):
        stats.finite = False
    return x, stats
