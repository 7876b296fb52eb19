"""Checkpoints: everything needed to resume a run, in one safetensors file and without pickle.

Layout of a checkpoint file (format version 2; version 1 is the same without the checksum).  Tensors (all
contiguous, none sharing memory):

* ``module/<name>/<key>``          -- ``module.state_dict()`` entries (parameters and persistent buffers);
* ``module_extra/<name>/...``      -- tensors inside a module's non-tensor ``_extra_state`` (rare);
* ``optim/<name>/state/<pid>/<key>`` -- optimiser state tensors (``exp_avg``, ``momentum_buffer``, ``step``...);
* ``optim/<name>/param_groups/...`` / ``sched/<name>/...`` -- tensors found elsewhere in those state dicts;
* ``rng/torch``, ``rng/cuda/<i>``, ``rng/numpy/keys`` -- random generator states;
* ``extra/<name>``                 -- caller's ``extra_tensors``.

Metadata (str -> str): ``format`` = ``"coophash-checkpoint"``, ``format_version``, ``torch_version``,
``sha256`` (a checksum of the whole file, :mod:`coophash.utils.integrity`; version 2 on) and
JSON documents ``modules`` (list of names), ``module_extra``, ``optimizers``, ``schedulers``, ``rng``,
``state``.  The JSON documents use a small tagged encoding so that state dicts round trip exactly:
``{"__tensor__": key}`` refers to a tensor of the file, ``{"__tuple__": [...]}`` is a tuple,
``{"__float__": "inf"}`` a non-finite float and ``{"__dict__": [[k, v], ...]}`` a dict whose keys are not
all strings (an optimiser's ``state`` is keyed by integer parameter ids).  Anything else (functions,
arbitrary objects) is refused when saving with a :class:`CheckpointError` that names the offending field.

Writes are atomic (:func:`coophash.utils.io.atomic_write_bytes`): a crash or an error while saving
leaves the previous file intact.  Reading verifies the checksum first (a truncated file, a flipped byte
or random bytes are refused with a :class:`CheckpointError` naming the file); files of version 1 have no
checksum and are read as they are.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save
from torch import nn

from coophash.utils.integrity import IntegrityError, read_safetensors, seal_safetensors
from coophash.utils.io import atomic_write_bytes

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "read_checkpoint_state",
]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Scheduler = Any  # torch.optim.lr_scheduler.LRScheduler or ReduceLROnPlateau: anything with (load_)state_dict

FORMAT = "coophash-checkpoint"
FORMAT_VERSION = 2
_SEALED_VERSION = 2  # first version with a checksum: from here on a file without one is damaged

_TENSOR, _TUPLE, _FLOAT, _DICT = "__tensor__", "__tuple__", "__float__", "__dict__"
_TAGS = frozenset({_TENSOR, _TUPLE, _FLOAT, _DICT})
# Optimiser state entries that always have the shape of their parameter (checked on load).
_PARAM_SHAPED = frozenset(
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg", "acc_delta", "sum"}
)


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the file and what was wrong."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns besides restoring objects in place."""

    path: Path
    state: dict = field(default_factory=dict)  # the ``state`` dict given to save_checkpoint
    extra_tensors: dict = field(default_factory=dict)  # name -> Tensor, on ``map_location``


# --------------------------------------------------------------------------------------------------
# tagged JSON encoding


def _pack(obj: Any, where: str, tensors: Optional[dict], key: str) -> Any:
    """Turn ``obj`` into plain JSON, moving tensors into ``tensors`` under ``key`` (None: refuse them)."""
    if isinstance(obj, torch.Tensor):
        if tensors is None:
            raise CheckpointError(
                f"{where}: tensors are not allowed here (got a {tuple(obj.shape)} tensor); "
                "convert it with .item()/.tolist() or pass it in extra_tensors"
            )
        if key in tensors:
            raise CheckpointError(f"{where}: two entries map to the same tensor key {key!r}")
        tensors[key] = _detached_copy(obj, where)
        return {_TENSOR: key}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {_FLOAT: repr(obj)}
    if isinstance(obj, (list, tuple)):
        items = [_pack(v, f"{where}[{i}]", tensors, f"{key}/{i}") for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) for k in obj) and not (_TAGS & set(obj))
        if not plain:
            bad = [k for k in obj if not (k is None or isinstance(k, (bool, int, str))
                                          or (isinstance(k, float) and math.isfinite(k)))]
            if bad:
                raise CheckpointError(f"{where}: dict key {bad[0]!r} of type {type(bad[0]).__name__} cannot be saved")
            return {_DICT: [[k, _pack(v, f"{where}[{k!r}]", tensors, f"{key}/{k}")] for k, v in obj.items()]}
        return {k: _pack(v, f"{where}.{k}", tensors, f"{key}/{k}") for k, v in obj.items()}
    raise CheckpointError(
        f"{where}: value of type {type(obj).__name__} cannot be stored in a checkpoint "
        "(allowed: None, bool, int, float, str, list, tuple, dict, tensors where noted)"
    )


def _unpack(obj: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    """Invert :func:`_pack`, looking tensor references up in ``tensors``."""
    if isinstance(obj, list):
        return [_unpack(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == _TENSOR:
            if value not in tensors:
                raise CheckpointError(f"{where}: refers to tensor {value!r}, which the file does not contain")
            return tensors[value]
        if tag == _TUPLE:
            return tuple(_unpack(v, tensors, where) for v in value)
        if tag == _FLOAT:
            return float(value)
        if tag == _DICT:
            return {_unpack(k, tensors, where): _unpack(v, tensors, where) for k, v in value}
    return {k: _unpack(v, tensors, where) for k, v in obj.items()}


def _tensor_refs(obj: Any) -> Iterator[str]:
    """Every tensor key a packed document refers to."""
    if isinstance(obj, list):
        for v in obj:
            yield from _tensor_refs(v)
    elif isinstance(obj, dict):
        if len(obj) == 1 and _TENSOR in obj:
            yield obj[_TENSOR]
        else:
            for v in obj.values():
                yield from _tensor_refs(v)


def _detached_copy(t: torch.Tensor, where: str) -> torch.Tensor:
    """A contiguous CPU copy owning its memory (safetensors refuses shared or strided storage)."""
    if t.layout != torch.strided:
        raise CheckpointError(f"{where}: {t.layout} tensors cannot be saved; convert with .to_dense()")
    return t.detach().to("cpu", copy=True).contiguous()


def _check_name(kind: str, name: Any) -> None:
    """Names become key prefixes, so they must be non-empty strings without '/'."""
    if not isinstance(name, str) or not name or "/" in name:
        raise CheckpointError(f"{kind} name must be a non-empty string without '/', got {name!r}")


def _dumps(doc: Any) -> str:
    """Compact strict JSON (non-finite floats were tagged by _pack)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


# --------------------------------------------------------------------------------------------------
# random generator states


def _pack_rng(tensors: dict) -> dict:
    """Capture torch (CPU and, if available, CUDA), NumPy-global and Python ``random`` states."""
    tensors["rng/torch"] = torch.get_rng_state().clone()
    doc: dict[str, Any] = {"torch": {_TENSOR: "rng/torch"}}
    if torch.cuda.is_available():
        cuda_refs = []
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s.detach().to("cpu", copy=True).contiguous()
            cuda_refs.append({_TENSOR: f"rng/cuda/{i}"})
        doc["cuda"] = cuda_refs
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    # uint32 stored bit-for-bit as int32: every safetensors/torch version handles int32.
    tensors["rng/numpy/keys"] = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.uint32).view(np.int32).copy())
    doc["numpy"] = {"name": name, "keys": {_TENSOR: "rng/numpy/keys"}, "pos": int(pos),
                    "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    doc["python"] = _pack(random.getstate(), "rng.python", None, "rng/python")
    return doc


def _restore_rng(doc: dict, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Set every generator captured by :func:`_pack_rng`."""
    torch.set_rng_state(tensors[doc["torch"][_TENSOR]].to("cpu", torch.uint8))
    cuda = doc.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            log.warning("%s: CUDA RNG states saved but CUDA is not available; not restored", path)
        else:
            states = [tensors[r[_TENSOR]].to("cpu", torch.uint8) for r in cuda]
            n = torch.cuda.device_count()
            if n != len(states):
                log.warning("%s: %d CUDA RNG states saved, %d devices present; restoring the first %d",
                            path, len(states), n, min(n, len(states)))
            for i, s in enumerate(states[:n]):
                torch.cuda.set_rng_state(s, i)
    npd = doc["numpy"]
    keys = tensors[npd["keys"][_TENSOR]].cpu().numpy().view(np.uint32).copy()
    np.random.set_state((npd["name"], keys, npd["pos"], npd["has_gauss"], npd["cached_gaussian"]))
    random.setstate(_unpack(doc["python"], {}, f"{path}: rng.python"))


# --------------------------------------------------------------------------------------------------
# saving


def save_checkpoint(
    path: PathLike,
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
    schedulers: Optional[Mapping[str, Scheduler]] = None,
    state: Optional[Mapping[str, Any]] = None,
    rng: bool = True,
    extra_tensors: Optional[Mapping[str, torch.Tensor]] = None,
) -> None:
    """Write modules, optimisers, schedulers, RNG states, ``state`` and tensors to one safetensors file."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                            "torch_version": torch.__version__}
    try:
        module_extra: dict[str, Any] = {}
        for name, module in modules.items():
            _check_name("module", name)
            if not isinstance(module, nn.Module):
                raise CheckpointError(f"modules[{name!r}] is a {type(module).__name__}, not an nn.Module")
            others = {}
            for key, value in module.state_dict().items():
                if isinstance(value, torch.Tensor):
                    tensors[f"module/{name}/{key}"] = _detached_copy(value, f"modules[{name!r}].{key}")
                else:
                    others[key] = value
            if others:
                module_extra[name] = _pack(others, f"modules[{name!r}]", tensors, f"module_extra/{name}")
        meta["modules"] = _dumps(list(modules))
        if module_extra:
            meta["module_extra"] = _dumps(module_extra)

        optim_doc = {}
        for name, opt in (optimizers or {}).items():
            _check_name("optimizer", name)
            optim_doc[name] = _pack(opt.state_dict(), f"optimizers[{name!r}]", tensors, f"optim/{name}")
        meta["optimizers"] = _dumps(optim_doc)

        sched_doc = {}
        for name, sched in (schedulers or {}).items():
            _check_name("scheduler", name)
            sched_doc[name] = _pack(sched.state_dict(), f"schedulers[{name!r}]", tensors, f"sched/{name}")
        meta["schedulers"] = _dumps(sched_doc)

        if rng:
            meta["rng"] = _dumps(_pack_rng(tensors))

        meta["state"] = _dumps(_pack(dict(state or {}), "state", None, "state"))

        for name, t in (extra_tensors or {}).items():
            if not isinstance(name, str) or not name:
                raise CheckpointError(f"extra_tensors name must be a non-empty string, got {name!r}")
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"extra_tensors[{name!r}] is a {type(t).__name__}, not a tensor")
            tensors[f"extra/{name}"] = _detached_copy(t, f"extra_tensors[{name!r}]")

        data = seal_safetensors(_safetensors_save, tensors, meta)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: cannot save checkpoint: {e}") from None
    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------------------------------
# loading


class _Reader:
    """An open, verified checkpoint: metadata documents plus its tensors (read once, from one snapshot)."""

    def __init__(self, path: PathLike, device: str = "cpu") -> None:
        """Read ``path``, verify its checksum and check that it is a coophash checkpoint of a supported version."""
        self.path = Path(path)
        self.device = device
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: checkpoint file does not exist")
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: is not a file")
        try:
            data = self.path.read_bytes()
            meta, sealed = read_safetensors(data)
        except (IntegrityError, OSError) as e:
            raise CheckpointError(f"{self.path}: unreadable checkpoint: {e}") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: not a coophash checkpoint (metadata 'format' is "
                                  f"{meta.get('format')!r}, expected {FORMAT!r})")
        try:
            version = int(meta.get("format_version", ""))
        except ValueError:
            raise CheckpointError(f"{self.path}: bad format_version {meta.get('format_version')!r}") from None
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{self.path}: format version {version} is newer than this coophash "
                                  f"supports ({FORMAT_VERSION}); upgrade coophash")
        if version >= _SEALED_VERSION and not sealed:
            raise CheckpointError(f"{self.path}: unreadable checkpoint: its checksum is missing (damaged)")
        try:
            self._tensors = _safetensors_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{self.path}: unreadable checkpoint (corrupted tensors): {e}") from None
        self.keys = set(self._tensors)
        self.meta = meta

    def doc(self, key: str, default: Any = None) -> Any:
        """Parse the JSON metadata document ``key`` (``default`` when absent)."""
        if key not in self.meta:
            return default
        try:
            return json.loads(self.meta[key])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.path}: metadata field {key!r} is not valid JSON: {e}") from None

    def tensor(self, key: str) -> torch.Tensor:
        """One tensor, on the reader's device."""
        if key not in self._tensors:
            raise CheckpointError(f"{self.path}: the checkpoint holds no tensor {key!r}")
        return self._tensors[key].to(self.device)

    def tensors(self, keys: Any) -> dict[str, torch.Tensor]:
        """Read several tensors into a dict."""
        return {k: self.tensor(k) for k in keys}

    def unpack(self, doc: Any, where: str) -> Any:
        """Decode a packed document, reading just the tensors it refers to."""
        return _unpack(doc, self.tensors(set(_tensor_refs(doc))), f"{self.path}: {where}")

    def module_state(self, name: str, module: nn.Module, strict: bool) -> dict[str, Any]:
        """The saved state dict of module ``name``, checked against ``module`` (keys and shapes)."""
        names = self.doc("modules", [])
        if name not in names:
            raise CheckpointError(f"{self.path}: no module named {name!r} in the checkpoint "
                                  f"(it has: {', '.join(map(repr, names)) or 'none'})")
        prefix = f"module/{name}/"
        sd: dict[str, Any] = {k[len(prefix):]: self.tensor(k) for k in sorted(self.keys) if k.startswith(prefix)}
        extra = self.doc("module_extra", {}).get(name)
        if extra is not None:
            sd.update(self.unpack(extra, f"module_extra[{name!r}]"))
        expected = module.state_dict()
        missing = [repr(k) for k in expected if k not in sd]
        unexpected = [repr(k) for k in sd if k not in expected]
        mismatched = [
            f"{k}: file {tuple(sd[k].shape)} vs module {tuple(expected[k].shape)}"
            for k in sd
            if k in expected and isinstance(sd[k], torch.Tensor) and isinstance(expected[k], torch.Tensor)
            and sd[k].shape != expected[k].shape
        ]
        problems = []
        if mismatched:
            problems.append(f"shape mismatch for {_few(mismatched)}")
        if strict and missing:
            problems.append(f"missing keys {_few(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys {_few(unexpected)}")
        if problems:
            raise CheckpointError(f"{self.path}: module {name!r} does not match the checkpoint: "
                                  + "; ".join(problems))
        return sd


def _few(items: list, n: int = 5) -> str:
    """``a, b, c (and 7 more)`` for error messages."""
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _check_optimizer(path: Path, name: str, opt: torch.optim.Optimizer, saved: dict) -> None:
    """Refuse a saved optimiser state whose groups or parameter shapes differ from ``opt``."""
    groups, saved_groups = opt.param_groups, saved.get("param_groups", [])
    sizes, saved_sizes = [len(g["params"]) for g in groups], [len(g["params"]) for g in saved_groups]
    if sizes != saved_sizes:
        raise CheckpointError(f"{path}: optimizer {name!r} has param groups of sizes {sizes}, "
                              f"the checkpoint {saved_sizes}")
    id_to_param = {pid: p for sg, g in zip(saved_groups, groups) for pid, p in zip(sg["params"], g["params"])}
    bad = []
    for pid, entry in saved.get("state", {}).items():
        p = id_to_param.get(pid)
        for key, value in entry.items():
            if p is not None and key in _PARAM_SHAPED and isinstance(value, torch.Tensor) and value.shape != p.shape:
                bad.append(f"state[{pid}].{key}: file {tuple(value.shape)} vs parameter {tuple(p.shape)}")
    if bad:
        raise CheckpointError(f"{path}: optimizer {name!r} does not match the checkpoint: shape mismatch for "
                              f"{_few(bad)} (were the parameters passed in a different order?)")


def load_checkpoint(
    path: PathLike,
    *,
    modules: Optional[Mapping[str, nn.Module]] = None,
    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
    schedulers: Optional[Mapping[str, Scheduler]] = None,
    restore_rng: bool = True,
    map_location: Union[str, torch.device] = "cpu",
    strict: bool = True,
) -> Checkpoint:
    """Restore the given objects (and RNG states) in place from ``path``; returns state and extra tensors.

    Everything is read and checked before anything is modified, so an error leaves the objects as they
    were.  ``strict=True``: every named module/optimizer/scheduler must be in the file, module keys must
    match exactly and RNG states must be present when ``restore_rng``; ``strict=False`` skips absent
    names, missing/unexpected module keys and absent RNG states (shape mismatches are always errors).
    Objects in the file but not passed are ignored.
    """
    r = _Reader(path, device=str(torch.device(map_location)))
    p = r.path
    module_states = {}
    for name, module in (modules or {}).items():
        if not strict and name not in r.doc("modules", []):
            log.warning("%s: no module %r in the checkpoint; skipped", p, name)
            continue
        module_states[name] = r.module_state(name, module, strict)

    def gather(kind: str, doc_key: str, objs: Optional[Mapping[str, Any]]) -> dict:
        """Decode the saved state dicts of the requested optimizers or schedulers."""
        doc = r.doc(doc_key, {})
        out = {}
        for name in objs or {}:
            if name not in doc:
                if strict:
                    raise CheckpointError(f"{p}: no {kind} named {name!r} in the checkpoint "
                                          f"(it has: {', '.join(map(repr, doc)) or 'none'})")
                log.warning("%s: no %s %r in the checkpoint; skipped", p, kind, name)
                continue
            out[name] = r.unpack(doc[name], f"{doc_key}[{name!r}]")
        return out

    optim_states = gather("optimizer", "optimizers", optimizers)
    for name, saved in optim_states.items():
        _check_optimizer(p, name, optimizers[name], saved)
    sched_states = gather("scheduler", "schedulers", schedulers)

    rng_doc = r.doc("rng") if restore_rng else None
    if restore_rng and rng_doc is None:
        if strict:
            raise CheckpointError(f"{p}: the checkpoint holds no RNG states (saved with rng=False); "
                                  "pass restore_rng=False")
        log.warning("%s: no RNG states in the checkpoint; not restored", p)
    rng_tensors = r.tensors(set(_tensor_refs(rng_doc))) if rng_doc is not None else {}

    state = _unpack(r.doc("state", {}), {}, f"{p}: state")
    extra = {k[len("extra/"):]: r.tensor(k) for k in sorted(r.keys) if k.startswith("extra/")}

    # Everything is read and checked: now modify the objects.
    try:
        for name, sd in module_states.items():
            modules[name].load_state_dict(sd, strict=strict)
        for name, sd in optim_states.items():
            optimizers[name].load_state_dict(sd)
        for name, sd in sched_states.items():
            schedulers[name].load_state_dict(sd)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{p}: cannot load checkpoint: {e}") from e
    if rng_doc is not None:
        _restore_rng(rng_doc, rng_tensors, p)
    return Checkpoint(path=p, state=state, extra_tensors=extra)


def load_weights(
    path: PathLike,
    module: nn.Module,
    name: str = "model",
    *,
    strict: bool = True,
    map_location: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """Load only the weights of module ``name`` into ``module`` (inference; no optimiser or RNG); returns it."""
    r = _Reader(path, device=str(torch.device(map_location)))
    sd = r.module_state(name, module, strict)
    try:
        module.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{r.path}: cannot load module {name!r}: {e}") from e
    return module


def read_checkpoint_state(path: PathLike) -> dict:
    """The ``state`` dict of a checkpoint, read from the metadata only (no tensor data is loaded)."""
    r = _Reader(path)
    return _unpack(r.doc("state", {}), {}, f"{r.path}: state")
