"""Load backbone weights from a local file (torch.save state dict or safetensors); nothing downloads."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["PretrainedReport", "load_pretrained", "read_state_dict"]

logger = logging.getLogger(__name__)

_IGNORED_PREFIXES = ("fc.",)
_SHOWN = 5


class PretrainedReport(NamedTuple):
    """What :func:`load_pretrained` did: keys loaded, skipped on purpose, missing, unexpected, mismatched."""

    loaded: list[str]
    skipped: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def read_state_dict(path: str | PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{path}: cannot read as safetensors: {error}") from error
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling errors come in several types
            raise ValueError(
                f"{path}: cannot read as a torch.save state dict of tensors: {_reason(error)}"
            ) from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors (a state dict)")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _listing(keys: list[str]) -> str:
    """A few keys, then how many more."""
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _reason(error: Exception) -> str:
    """The useful line of a torch.load failure: what was refused, without torch's advice to unpickle anyway."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:"):
            return "refused by the safe loader (" + ln.split(":", 1)[1].strip().split(". ")[0] + ")"
    keep = [ln for ln in lines if "weights_only" not in ln and "trust the source" not in ln]
    return (keep or lines or [type(error).__name__])[0]


def load_pretrained(
    backbone: nn.Module, path: str | PathLike[str], strict: bool = True
) -> PretrainedReport:
    """Copy weights from a local torchvision-style state dict into ``backbone``; ``fc.*`` keys are ignored.

    A backbone may define ``adapt_pretrained(state, source) -> (state, skipped_keys)`` to reshape
    or skip entries on purpose (the ResNet sums RGB stems for 1 channel and skips a small-input stem).
    With ``strict=True`` any missing key, unexpected key or shape mismatch raises ``ValueError``
    naming the file and a few of the offending keys, before any weight is changed; with
    ``strict=False`` the matching entries load and the rest are logged as a warning.
    """
    source = str(path)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(_IGNORED_PREFIXES)}
    skipped: list[str] = []
    adapt = getattr(backbone, "adapt_pretrained", None)
    if callable(adapt):
        state, skipped = adapt(state, source)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems and strict:
        raise ValueError(
            f"{source}: pretrained weights do not fit {type(backbone).__name__}: " + "; ".join(problems)
        )
    if problems:
        logger.warning("%s: loading non-strictly: %s", source, "; ".join(problems))
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    backbone.load_state_dict(loadable, strict=False)
    mismatched_keys = [m.split(" ", 1)[0] for m in mismatched]
    return PretrainedReport(sorted(loadable), skipped, missing, unexpected, mismatched_keys)
