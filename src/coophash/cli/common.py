"""What several commands share: errors, the config from file + flags + ``--set``, method options, progress bars.

Errors: :func:`fail` (a runtime error, exit status 1) and :func:`usage_fail` (a usage error, exit status 2)
stop a command with one line; :func:`explain` turns any other exception into such a line for the error
boundary of the command group (``coophash.cli``).

Importing this module imports neither torch nor NumPy (the heavy imports are inside functions), so that
``coophash.cli.main`` can set ``OMP_WAIT_POLICY`` before torch loads.
"""
from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

import click
import yaml

__all__ = [
    "run_options",
    "DEVICE",
    "METHOD_OPTION_PREFIX",
    "StageBars",
    "build_config",
    "check_config",
    "check_device_name",
    "explain",
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
    "training_progress",
    "usage_fail",
]

# keyword prefix of the per-method options (``--gan-dir`` arrives as ``m__gan_dir``), kept apart from the common flags
METHOD_OPTION_PREFIX = "m__"


def fail(msg: str) -> NoReturn:
    """Stop the command with a one-line error (exit status 1: a runtime error, e.g. a bad or missing file)."""
    raise click.ClickException(_one_line(msg))


def usage_fail(msg: str, option: Optional[str] = None) -> NoReturn:
    """Stop the command with a one-line usage error (exit status 2), naming ``option`` when given."""
    if option:
        raise click.BadParameter(_one_line(msg), param_hint=option)
    raise click.UsageError(_one_line(msg))


def _one_line(msg: str) -> str:
    """``msg`` with its lines joined (error messages of the CLI are one line)."""
    return " ".join(str(msg).split())


def _first_line(msg: str) -> str:
    """The first non-empty line of ``msg`` (torch's messages add advice on further lines)."""
    return next((line.strip() for line in str(msg).splitlines() if line.strip()), "")


def explain(exc: BaseException) -> click.ClickException:
    """The one-line error (a click exception carrying its exit status) for an exception a command raised.

    Exit status 2 for a usage error (an unknown name, given on the command line or in a config file), 1 for
    everything else: bad or damaged files, a read-only folder, a full disk, a missing device, a diverged run.
    Messages of coophash's own errors (and ValueErrors, which name the file and field) are kept as they are.
    """
    from coophash.utils.registry import UnknownName

    if isinstance(exc, UnknownName):
        return click.UsageError(_one_line(str(exc)))
    if isinstance(exc, OSError) and exc.errno is not None:
        return click.ClickException(_os_error(exc))
    if isinstance(exc, UnicodeError):
        return click.ClickException(f"cannot decode text ({_one_line(str(exc))}); is the file damaged?")
    if isinstance(exc, MemoryError):
        return click.ClickException("out of memory; try a smaller --batch-size or fewer images at once")
    own = type(exc).__module__.startswith("coophash")
    if own or isinstance(exc, (ValueError, OSError)):
        return click.ClickException(_one_line(str(exc)) or type(exc).__name__)
    if isinstance(exc, (RuntimeError, KeyError, TypeError, AssertionError)):
        return click.ClickException(f"{type(exc).__name__}: {_first_line(str(exc))}")
    return click.ClickException(f"internal error: {type(exc).__name__}: {_first_line(str(exc))} "
                                "(run `coophash --debug ...` for the traceback)")


def _os_error(exc: OSError) -> str:
    """What an OSError means for the user, naming the file: a full disk, a read-only folder, a missing file."""
    where = str(exc.filename or "")
    if exc.filename2:
        where = f"{where} -> {exc.filename2}"
    reason = {
        errno.ENOENT: "no such file or folder",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied (a read-only folder?)",
        errno.EPERM: "operation not permitted",
    }.get(exc.errno, exc.strerror or _one_line(str(exc)))
    return f"{where}: {reason}" if where else f"{reason} ({_one_line(str(exc))})"


# ------------------------------------------------------------------------------------------ config
def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML; ``a.b=v`` sets key b of dict field a); usage errors name the pair."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            usage_fail(f"expects KEY=VALUE, got {item!r}", "--set")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            usage_fail(f"{key}: cannot parse value {raw!r}: {exc}", "--set")
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
    A bad config file stops the command with exit status 1, a bad flag or ``--set`` value with 2 (usage);
    names (method, loss, backbone, dataset, protocol) and the device are checked by :func:`check_config`.
    """
    from coophash.config import TrainConfig, load_config
    from coophash.methods.base import apply_method_defaults

    try:
        cfg = load_config(config) if config else TrainConfig()
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    data = cfg.to_dict()
    data.update({k: v for k, v in flags.items() if v is not None})
    _checked(data, "command line", None)
    parsed = parse_sets(sets)
    for key, value in parsed.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    _checked(data, "--set", None)
    if method_args:
        data["method_args"] = {**data["method_args"], **method_args}
    given = set(parsed) | {k for k, v in flags.items() if v is not None} | (_file_keys(config) if config else set())
    try:
        data = apply_method_defaults(data, given)  # the method's recipe for every field the user left open
    except ValueError as exc:
        usage_fail(str(exc))
    cfg = _checked(data, "command line", None)
    origin = {**{k: f"{config}: {k}" for k in data if config}, **{k: f"--set {k}" for k in parsed},
              **{k: "--" + k.replace("_", "-") for k, v in flags.items() if v is not None}}
    check_config(cfg, origin)
    return cfg


def _file_keys(config: str) -> set[str]:
    """The fields a config file sets (already read successfully once by :func:`build_config`)."""
    from coophash.config import read_yaml_mapping

    return set(read_yaml_mapping(config))


def _checked(data: dict[str, Any], source: str, option: Optional[str]) -> Any:
    """``TrainConfig.from_dict(data)``; a bad value is a usage error (exit status 2) naming the field."""
    from coophash.config import TrainConfig

    try:
        return TrainConfig.from_dict(data, source)
    except ValueError as exc:
        usage_fail(str(exc), option)


def check_config(cfg: Any, origin: Optional[dict[str, str]] = None) -> None:
    """Names of ``cfg`` (method, loss, backbone, dataset, protocol) known, its device present on this machine.

    ``origin`` maps a field to where its value came from (``--loss``, ``--set loss``, a config file), for
    the message.  An unknown name or a device string torch does not know is a usage error (exit status 2);
    a device this machine lacks (``cuda`` without CUDA) a runtime error (exit status 1).
    """
    from coophash.data import DATASETS, PROTOCOLS
    from coophash.losses import LOSSES
    from coophash.methods import METHODS
    from coophash.nets import BACKBONES

    origin = origin or {}
    for field, names in (("method", METHODS), ("loss", LOSSES), ("backbone", BACKBONES), ("dataset", DATASETS)):
        try:
            names.get(getattr(cfg, field))
        except KeyError as exc:
            usage_fail(str(exc), origin.get(field, field))
    if cfg.protocol not in PROTOCOLS:
        usage_fail(f"unknown protocol {cfg.protocol!r}; known: {', '.join(PROTOCOLS)}", origin.get("protocol"))
    check_device_name(cfg.device, origin.get("device", "device"))


def check_device_name(name: str, option: str = "--device") -> str:
    """``name`` when it is a torch device this machine has: usage error (2) when torch does not know it,
    runtime error (1) when the machine lacks it (``cuda`` without CUDA)."""
    import torch

    from coophash.train.determinism import check_device

    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        usage_fail(f"{name!r} is not a torch device (expected cpu, cuda, cuda:N or mps)", option)
    try:
        check_device(name)
    except ValueError as exc:
        fail(str(exc))
    return name


class _Device(click.ParamType):
    """A ``--device`` option: checked at parse time (see :func:`check_device_name`)."""

    name = "device"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        """The checked value (a usage error, exit status 2, otherwise)."""
        opt = param.opts[0] if param is not None and param.opts else "--device"
        return check_device_name(str(value), opt)


DEVICE = _Device()


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


def run_options(resume_help: str) -> Callable[[Callable], Callable]:
    """The options every training command shares: --device, --threads, --out, --resume, --set, --quiet."""
    options = [
        click.option("--device", type=DEVICE, default=None,
                     help="torch device, e.g. cpu or cuda (cuda:N for another GPU)."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads."),
        click.option("--out", default=None, help="Folder holding numbered run folders (default runs)."),
        click.option("--resume", "resume", default=None, help=resume_help),
        click.option("--set", "sets", multiple=True,
                     help="Override any config field: KEY=VALUE or FIELD.KEY=VALUE."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]

    def deco(func: Callable) -> Callable:
        for opt in reversed(options):
            func = opt(func)
        return func

    return deco


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
            recipe = getattr(mcls, "config_defaults", {}).get("method_args", {})
            plain = f"; the plain --method {mname} uses {recipe[f.name]!r}" if f.name in recipe else ""
            helptext = f.metadata.get("help", "") + f" [{mname}; default {default!r}{plain}]"
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
