"""What several commands share: errors, the config from file + flags + ``--set``, method options, progress bars.

Importing this module imports neither torch nor NumPy (the heavy imports are inside functions), so that
``coophash.cli.main`` can set ``OMP_WAIT_POLICY`` before torch loads.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

import click
import yaml

__all__ = [
    "METHOD_OPTION_PREFIX",
    "StageBars",
    "build_config",
    "fail",
    "format_metrics",
    "gan_postfix",
    "load_method",
    "loss_postfix",
    "method_args_from",
    "method_options",
    "parse_sets",
    "progress_bar",
    "read_images",
    "read_run_config",
    "training_progress",
]

# keyword prefix of the per-method options (``--gan-dir`` arrives as ``m__gan_dir``), kept apart from the common flags
METHOD_OPTION_PREFIX = "m__"


def fail(msg: str) -> NoReturn:
    """Stop the command with a one-line error (exit status 1)."""
    raise click.ClickException(msg)


# ------------------------------------------------------------------------------------------ config
def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML; ``a.b=v`` sets key b of dict field a)."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            fail(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            fail(f"--set {key}: cannot parse value {raw!r}: {exc}")
        if "." in key:
            field, sub = key.split(".", 1)
            out.setdefault(field, {})[sub] = value
        else:
            out[key] = value
    return out


def build_config(config: Optional[str], flags: dict[str, Any], sets: Sequence[str],
                 method_args: Optional[dict[str, Any]] = None) -> Any:
    """The TrainConfig of a command line: YAML file (or defaults) < flags < ``--set`` < typed method options.

    ``method_args`` hold the values click parsed (typed), merged into ``cfg.method_args`` as they are.
    """
    from coophash.config import TrainConfig, load_config

    try:
        cfg = load_config(config) if config else TrainConfig()
        data = cfg.to_dict()
        data.update({k: v for k, v in flags.items() if v is not None})
        for key, value in parse_sets(sets).items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        if method_args:
            data["method_args"] = {**data["method_args"], **method_args}
        return TrainConfig.from_dict(data, "command line")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


def read_run_config(run_dir: Path) -> Any:
    """The resolved TrainConfig saved in a run folder (a clear error when missing or broken)."""
    from coophash.config import load_config
    from coophash.train import runs

    try:
        return load_config(run_dir / runs.CONFIG)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


class _YamlValue(click.ParamType):
    """A method option of another type than bool/int/float/str: its text is parsed as YAML (as ``--set`` does)."""

    name = "yaml"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            self.fail(f"cannot parse {value!r}: {exc}", param, ctx)


_CLICK_TYPES: dict[type, Any] = {bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}


def method_options(func: Callable) -> Callable:
    """Add a typed ``--name`` option for every field of every registered method's ``Args`` dataclass.

    The option's type is the field's default's type (bool fields accept true/false/yes/no/1/0), so the
    value reaches ``cfg.method_args`` as click parsed it: ``--gan-dir 010`` stays the string ``"010"``.
    """
    import dataclasses

    from coophash.methods import METHODS

    seen: set[str] = set()
    for mname, mcls in sorted(METHODS.items()):
        if mcls.Args is None:
            continue
        for f in dataclasses.fields(mcls.Args):
            if f.name in seen:
                continue
            seen.add(f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            typ = _CLICK_TYPES.get(type(default), _YamlValue())
            helptext = f.metadata.get("help", "") + f" [{mname}; default {default!r}]"
            flag = "--" + f.name.replace("_", "-")
            func = click.option(flag, METHOD_OPTION_PREFIX + f.name, type=typ, default=None, help=helptext)(func)
    return func


def method_args_from(options: dict[str, Any]) -> dict[str, Any]:
    """The method options given on the command line (``m__name`` → ``name``), typed as click parsed them."""
    n = len(METHOD_OPTION_PREFIX)
    return {k[n:]: v for k, v in options.items() if k.startswith(METHOD_OPTION_PREFIX) and v is not None}


# ------------------------------------------------------------------------------------------ runs and images
def load_method(run: str, which: str, device: str, root: str) -> tuple[Any, Any]:
    """(config, method with weights) of a run folder, checkpoint file or run number/name under ``root``."""
    from coophash.api import load_run

    try:
        return load_run(run, which=which, device=device, root=root)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def read_images(paths: Sequence[str], image_size: int, channels: int) -> Any:
    """Image files to a float batch in [-1, 1] of the run's size and channels."""
    import torch

    from coophash.data import read_image_file

    imgs = []
    for p in paths:
        try:
            imgs.append(read_image_file(p, image_size=image_size, channels=channels))
        except (ValueError, FileNotFoundError, OSError) as exc:
            fail(str(exc))
    return torch.stack(imgs)


def format_metrics(res: dict) -> str:
    """``map@all=0.1234  precision@100=...`` for the scalar retrieval metrics of a result."""
    keys = [k for k in res if k.startswith(("map", "precision", "recall")) and not isinstance(res[k], dict)]
    return "  ".join(f"{k}={res[k]:.4f}" for k in keys)


# ------------------------------------------------------------------------------------------ progress
def loss_postfix(p: Any) -> Optional[str]:
    """``loss=…, epoch=…`` from the first phase total of a step (None when the step logged none)."""
    totals = [k for k in p.values if k.endswith("/total")]
    return f"loss={p.values[totals[0]]:.4f}, epoch={p.epoch + 1}" if totals else None


def gan_postfix(p: Any) -> str:
    """``D=…, G=…, epoch=…``: discriminator and generator losses of a GAN step."""
    d, g = p.values.get("discriminator/total", float("nan")), p.values.get("generator/total", float("nan"))
    return f"D={d:.3f}, G={g:.3f}, epoch={p.epoch + 1}"


class StageBars:
    """A progress callback (``ProgressFn``) drawing one tqdm bar on stderr per stage of a run.

    A new bar starts whenever the stage (or its size) changes, so the GAN stage of a two-stage recipe gets
    its own bar before the hashing run's.  ``describe(p)`` names a bar; ``postfix(p)`` is shown beside it.
    """

    def __init__(self, describe: Callable[[Any], str], postfix: Optional[Callable[[Any], Optional[str]]] = None,
                 leave: bool = True, make_bar: Optional[Callable[..., Any]] = None) -> None:
        self.describe = describe
        self.postfix = postfix
        self.leave = leave
        self.make_bar = make_bar or progress_bar
        self._bar: Any = None
        self._key: Optional[tuple[str, int]] = None

    def __call__(self, p: Any) -> None:
        key = (p.stage, p.total)
        if self._bar is None or key != self._key:
            self.close()
            self._bar = self.make_bar(p.total, self.describe(p), self.leave)
            self._key = key
        self._bar.n = p.done
        text = self.postfix(p) if self.postfix else None
        if text is not None:
            self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()
        if p.done >= p.total:  # the stage's last step: later output (evaluation, results) goes below the bar
            self.close()

    def close(self) -> None:
        """Close the current bar (if any)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def training_progress(cfg: Any, quiet: bool, make_bar: Optional[Callable[..., Any]] = None) -> Any:
    """The progress callback of a command training ``cfg``: a bar per stage, or (quiet) epoch lines of the
    stages before the requested run (e.g. the GAN stage of fakereg; the pipeline names the last stage after
    ``cfg.method``)."""
    if quiet:
        return _EarlierStageLines(cfg.method)

    def describe(p: Any) -> str:
        return f"train {cfg.method}/{cfg.loss}" if p.stage == cfg.method else f"train {p.stage}"

    def postfix(p: Any) -> Optional[str]:
        return gan_postfix(p) if p.stage == "gan" else loss_postfix(p)

    return StageBars(describe, postfix, make_bar=make_bar)


class _EarlierStageLines:
    """Quiet mode: one stderr line per epoch of the stages before the requested run (e.g. the GAN stage)."""

    def __init__(self, final_stage: str) -> None:
        self.final_stage = final_stage

    def __call__(self, p: Any) -> None:
        if p.stage == self.final_stage or p.step != p.steps_per_epoch:
            return
        totals = "  ".join(f"{k[:-len('/total')]} {v:.4f}" for k, v in p.values.items() if k.endswith("/total"))
        click.echo(f"[{p.stage}] epoch {p.epoch + 1}/{p.epochs}: {totals}", err=True)

    def close(self) -> None:
        """Nothing to close (the same interface as :class:`StageBars`)."""


def progress_bar(total: int, desc: str, leave: bool = True) -> Any:  # pragma: no cover - display only
    """A tqdm bar of ``total`` steps on stderr."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr, leave=leave)
