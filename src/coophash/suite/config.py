"""Suite files: named experiment suites in YAML, validated with errors that name the file and the field.

A suite file has these top-level keys (see ``docs/bench.md`` and the shipped ``coophash/suites/*.yaml``):

* ``name`` (str), ``description`` (str, optional);
* ``defaults``: TrainConfig fields shared by every run (dataset, protocol, backbone, epochs, ...);
* ``seeds``: list of non-negative integers (each run's seed; the split and labeled subset follow it);
* ``methods``: list of entries ``{name: <label>, <TrainConfig field>: <value>, ...}``; ``name`` is the row
  label in every table, the other keys override ``defaults`` (e.g. ``method: supervised, loss: dpsh``);
* ``experiments``: a mapping from experiment kind (:data:`EXPERIMENTS`) to its settings; kinds left out
  are not run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from coophash.config import TrainConfig
from coophash.utils.registry import Registry

__all__ = [
    "Suite",
    "MethodSpec",
    "SuiteError",
    "EXPERIMENTS",
    "EXPERIMENT_DEFAULTS",
    "load_suite",
    "parse_suite",
    "shipped_suites",
    "merge_config",
]


class SuiteError(ValueError):
    """A suite file is missing, unreadable or inconsistent (the message names the file and field)."""


#: Settings of every experiment kind with their defaults (``None``: required or derived).
EXPERIMENT_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    # mAP@all on the query split, per method x bits x label fraction; grids may restrict methods
    "main": {"grids": [{"bits": [32], "label_fractions": [1.0]}]},
    # mAP against label fraction (from the main results at ``bits``)
    "scarcity": {"bits": 32},
    # train on seen classes, query and retrieve among the unseen ones
    "unseen": {"bits": 32, "label_fraction": 1.0, "seen_classes": [0, 1, 2, 3, 4, 5, 6], "overrides": {}},
    # train on the default data, query and retrieve on another dataset resized to the same size
    "cross_dataset": {"bits": 32, "label_fraction": 1.0, "dataset": "digits", "dataset_args": {},
                      "protocol": "standard", "protocol_args": {"query_per_class": 50, "val_per_class": 0}},
    # AUROC of the method's ood_score: in-distribution queries against unseen-class / cross-dataset queries
    "ood_detection": {"against": ["unseen", "cross_dataset"]},
    # precision-recall curves and precision within radius 2 (from the main results)
    "pr": {"bits": 32, "label_fraction": 1.0},
    # training s/epoch, encoding images/s, search ms/query (HammingIndex against FAISS IndexBinaryFlat)
    "cost": {"bits": 32, "label_fraction": 1.0,
             "search": {"bits": [32, 64], "n_database": 1_000_000, "n_queries": 1000, "k": 100, "repeats": 3}},
    # static HTML page of sample retrievals (top-k per query, correct ones marked)
    "retrievals": {"bits": 32, "label_fraction": 1.0, "seed": None, "n_queries": 10, "k": 10,
                   "sections": ["main", "unseen", "cross_dataset"], "methods": None},
    # training-sample against validation mAP per epoch (from the main results at ``bits``; methods: all)
    "overfitting": {"bits": 32, "methods": None},
}
EXPERIMENTS = tuple(EXPERIMENT_DEFAULTS)
_TOP_KEYS = ("name", "description", "defaults", "seeds", "methods", "experiments")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_DICT_FIELDS = ("loss_args", "method_args", "backbone_args", "dataset_args", "protocol_args")


@dataclass(frozen=True)
class MethodSpec:
    """One row of the comparison: a label and the TrainConfig fields that make the method."""

    name: str
    overrides: Mapping[str, Any]

    @property
    def method(self) -> str:
        """The registered method name this entry trains (``overrides['method']``)."""
        return str(self.overrides["method"])


@dataclass
class Suite:
    """A validated suite: shared defaults, methods, seeds and experiment settings."""

    name: str
    source: str
    defaults: dict[str, Any]
    seeds: list[int]
    methods: list[MethodSpec]
    experiments: dict[str, dict[str, Any]]
    description: str = ""
    text: str = field(default="", repr=False)

    def method(self, name: str) -> MethodSpec:
        """The method entry called ``name``."""
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    def config(self, method: MethodSpec, seed: int, **fields: Any) -> TrainConfig:
        """The TrainConfig of one run: defaults < method entry < experiment ``fields`` (dict fields merged)."""
        data = merge_config(merge_config(self.defaults, method.overrides), fields)
        data["seed"] = int(seed)
        return TrainConfig.from_dict(data, f"{self.source}: method {method.name!r}")


def merge_config(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``; dict-valued fields (loss_args, protocol_args, ...) are merged key by key."""
    out = dict(base)
    for k, v in over.items():
        if k in _DICT_FIELDS and isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


# Shipped suites by name (one registry style, as for losses, backbones, methods and datasets): every
# ``coophash/suites/<name>.yaml`` of the package; a suite file elsewhere is loaded by its path.
SUITES: Registry[Any] = Registry("shipped suite")
for _res in sorted((resources.files("coophash") / "suites").iterdir(), key=lambda r: r.name):
    if _res.name.endswith(".yaml"):
        SUITES.add(_res.name[: -len(".yaml")], _res)


def shipped_suites() -> list[str]:
    """Names of the suites shipped with the package (``coophash/suites/<name>.yaml``)."""
    return SUITES.names()


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (``smoke``, ``paper``) or a suite YAML file by path, validated."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in text_name:
        if not path.is_file():
            raise SuiteError(f"{path}: suite file not found")
        return parse_suite(path.read_text(encoding="utf-8"), str(path))
    if not _NAME.match(text_name):
        raise SuiteError(f"{text_name!r} is neither a suite file nor a shipped suite ({', '.join(shipped_suites())})")
    if text_name not in SUITES:
        raise SuiteError(f"no shipped suite {text_name!r}; shipped: {', '.join(shipped_suites())} "
                         f"(or give the path of a suite YAML file)")
    return parse_suite(SUITES.get(text_name).read_text(encoding="utf-8"), f"{text_name}.yaml")


def _need(ok: bool, source: str, where: str, expected: str, found: Any) -> None:
    if not ok:
        raise SuiteError(f"{source}: {where} must be {expected}, found {found!r:.100}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_suite(text: str, source: str = "<suite>") -> Suite:
    """Parse and validate suite YAML ``text``; errors name ``source`` and the offending field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{source}: not valid YAML: {exc}") from exc
    _need(isinstance(data, dict), source, "the top level", "a mapping", type(data).__name__)
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise SuiteError(f"{source}: unknown top-level key(s) {unknown}; known: {list(_TOP_KEYS)}")
    for key in ("name", "methods", "experiments"):
        if key not in data:
            raise SuiteError(f"{source}: missing top-level key {key!r}")
    name = data["name"]
    _need(isinstance(name, str) and bool(_NAME.match(name)), source, "name", "a plain name", name)
    description = data.get("description") or ""
    _need(isinstance(description, str), source, "description", "a string", description)

    defaults = data.get("defaults") or {}
    _need(isinstance(defaults, dict), source, "defaults", "a mapping of TrainConfig fields", defaults)
    _check_fields(defaults, source, "defaults")
    for fixed in ("seed",):
        if fixed in defaults:
            raise SuiteError(f"{source}: defaults.{fixed}: set run seeds with the top-level 'seeds' list")

    seeds = data.get("seeds", [0])
    _need(isinstance(seeds, list) and bool(seeds) and all(_is_int(s) and s >= 0 for s in seeds),
          source, "seeds", "a non-empty list of non-negative integers", seeds)
    _need(len(set(seeds)) == len(seeds), source, "seeds", "a list without repeats", seeds)

    methods_raw = data["methods"]
    _need(isinstance(methods_raw, list) and bool(methods_raw), source, "methods", "a non-empty list", methods_raw)
    methods: list[MethodSpec] = []
    for i, entry in enumerate(methods_raw):
        where = f"methods[{i}]"
        _need(isinstance(entry, dict), source, where, "a mapping with 'name' and TrainConfig fields", entry)
        mname = entry.get("name")
        _need(isinstance(mname, str) and bool(_NAME.match(mname)), source, f"{where}.name",
              "a plain name (letters, digits, _ . + -)", mname)
        if any(m.name == mname for m in methods):
            raise SuiteError(f"{source}: {where}.name: {mname!r} is used twice")
        over = {k: v for k, v in entry.items() if k != "name"}
        _check_fields(over, source, f"{where} ({mname})")
        for fixed in ("seed", "bits", "label_fraction"):
            if fixed in over:
                raise SuiteError(f"{source}: {where}.{fixed}: set by the experiments, not per method")
        merged = merge_config(defaults, over)
        merged.setdefault("method", TrainConfig().method)
        over.setdefault("method", merged["method"])
        try:
            TrainConfig.from_dict(merged, f"{source}: {where} ({mname})")
        except (TypeError, ValueError) as exc:
            raise SuiteError(str(exc)) from exc
        methods.append(MethodSpec(mname, dict(over)))

    experiments = _parse_experiments(data["experiments"], source, [m.name for m in methods])
    return Suite(name=name, source=source, defaults=dict(defaults), seeds=list(seeds), methods=methods,
                 experiments=experiments, description=description, text=text)


def _check_fields(d: Mapping[str, Any], source: str, where: str) -> None:
    known = set(TrainConfig.fields())
    unknown = sorted(set(d) - known)
    if unknown:
        raise SuiteError(f"{source}: {where}: unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")


def _parse_experiments(raw: Any, source: str, method_names: list[str]) -> dict[str, dict[str, Any]]:
    _need(isinstance(raw, dict) and bool(raw), source, "experiments",
          f"a non-empty mapping of experiment kinds ({', '.join(EXPERIMENTS)})", raw)
    unknown = sorted(set(raw) - set(EXPERIMENTS))
    if unknown:
        raise SuiteError(f"{source}: experiments: unknown kind(s) {unknown}; known: {list(EXPERIMENTS)}")
    out: dict[str, dict[str, Any]] = {}
    for kind, settings in raw.items():
        settings = settings or {}
        where = f"experiments.{kind}"
        _need(isinstance(settings, dict), source, where, "a mapping of settings (or empty)", settings)
        defaults = EXPERIMENT_DEFAULTS[kind]
        bad = sorted(set(settings) - set(defaults))
        if bad:
            raise SuiteError(f"{source}: {where}: unknown setting(s) {bad}; known: {sorted(defaults)}")
        merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()}
        for k, v in settings.items():
            if isinstance(merged.get(k), dict) and isinstance(v, dict) and k == "search":
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
        _check_experiment(kind, merged, source, where, method_names)
        out[kind] = merged
    for kind, needs in (("scarcity", "main"), ("pr", "main"), ("overfitting", "main")):
        if kind in out and needs not in out:
            raise SuiteError(f"{source}: experiments.{kind} reads the results of experiments.{needs}; add it")
    if "ood_detection" in out:
        for other in out["ood_detection"]["against"]:
            if other not in out:
                raise SuiteError(f"{source}: experiments.ood_detection.against lists {other!r}, "
                                 f"which needs experiments.{other}")
    return out


class _Settings:
    """Checks of one experiment's merged settings; errors name the suite file and ``experiments.<kind>.<key>``."""

    def __init__(self, kind: str, s: dict[str, Any], source: str, where: str, method_names: list[str]) -> None:
        self.kind, self.s, self.source, self.where, self.method_names = kind, s, source, where, method_names

    def need(self, ok: bool, at: str, expected: str, found: Any) -> None:
        """Raise :class:`SuiteError` unless ``ok``: ``<where>.<at> must be <expected>, found <found>``."""
        _need(ok, self.source, f"{self.where}.{at}", expected, found)

    def fail(self, message: str) -> None:
        """Raise :class:`SuiteError` with ``message`` after the experiment's place."""
        raise SuiteError(f"{self.source}: {self.where}{message}")

    def bits(self, value: Any, at: str) -> None:
        self.need(_is_int(value) and value > 0, at, "a positive integer", value)

    def fraction(self, value: Any, at: str) -> None:
        self.need(_is_num(value) and 0.0 < float(value) <= 1.0, at, "a number in (0, 1]", value)

    def positive_ints(self, d: Mapping[str, Any], keys: tuple[str, ...], prefix: str = "") -> None:
        for key in keys:
            self.need(_is_int(d[key]) and d[key] > 0, f"{prefix}{key}", "a positive integer", d[key])

    def methods(self, value: Any, at: str) -> None:
        _check_method_list(value, self.source, f"{self.where}.{at}", self.method_names)


#: Checks of each experiment kind's own settings (after the shared bits / label_fraction checks).
_KIND_CHECKS: Registry[Callable[[_Settings], None]] = Registry("experiment kind")


def _check_experiment(kind: str, s: dict[str, Any], source: str, where: str, method_names: list[str]) -> None:
    """Check the merged settings ``s`` of experiment ``kind`` (the field named in errors is ``where.<key>``)."""
    c = _Settings(kind, s, source, where, method_names)
    if "bits" in s and kind != "main":
        c.bits(s["bits"], "bits")
    if "label_fraction" in s:
        c.fraction(s["label_fraction"], "label_fraction")
    if kind in _KIND_CHECKS:
        _KIND_CHECKS[kind](c)


@_KIND_CHECKS.register("main")
def _check_main(c: _Settings) -> None:
    """The grids of the main table: bits, label fractions, method lists and ``top`` rankings."""
    grids = c.s["grids"]
    c.need(isinstance(grids, list) and bool(grids), "grids", "a non-empty list", grids)
    for i, g in enumerate(grids):
        at = f"grids[{i}]"
        c.need(isinstance(g, dict), at, "a mapping (bits, label_fractions, methods)", g)
        bad = sorted(set(g) - {"bits", "label_fractions", "methods", "top"})
        if bad:
            c.fail(f".{at}: unknown key(s) {bad}; known: bits, label_fractions, methods, top")
        if "top" in g:
            _check_top(c, grids, i)
        for key in ("bits", "label_fractions"):
            c.need(isinstance(g.get(key), list) and bool(g.get(key)), f"{at}.{key}", "a non-empty list", g.get(key))
        for j, b in enumerate(g["bits"]):
            c.bits(b, f"{at}.bits[{j}]")
        for j, f in enumerate(g["label_fractions"]):
            c.fraction(f, f"{at}.label_fractions[{j}]")
        if "methods" in g:
            c.methods(g["methods"], f"{at}.methods")


def _check_top(c: _Settings, grids: list[dict[str, Any]], i: int) -> None:
    """A main grid's ``top`` (rank a family by an earlier grid's results); fills in its default ``bits``."""
    at = f"grids[{i}].top"
    top = grids[i]["top"]
    c.need(isinstance(top, dict) and set(top) <= {"n", "family", "bits"} and "n" in top, at,
           "a mapping {n: <int>, family: <method>, bits: <int>}", top)
    c.need(_is_int(top["n"]) and top["n"] > 0, f"{at}.n", "a positive integer", top["n"])
    c.need(top.get("family") is None or isinstance(top["family"], str), f"{at}.family",
           "a method name (e.g. supervised)", top.get("family"))
    if i == 0:
        c.fail(f".{at}: the first grid cannot rank by results; put 'top' on a later grid")
    top.setdefault("bits", grids[0]["bits"][0])
    c.bits(top["bits"], f"{at}.bits")
    if not any(top["bits"] in g0.get("bits", []) for g0 in grids[:i]):
        c.fail(f".{at}.bits: no earlier grid has {top['bits']} bits")


@_KIND_CHECKS.register("unseen")
def _check_unseen(c: _Settings) -> None:
    """Seen classes (class indices) and the TrainConfig overrides of unseen-class runs."""
    seen = c.s["seen_classes"]
    c.need(isinstance(seen, list) and bool(seen) and all(_is_int(x) and x >= 0 for x in seen), "seen_classes",
           "a non-empty list of class indices", seen)
    c.need(isinstance(c.s["overrides"], dict), "overrides", "a mapping of TrainConfig fields", c.s["overrides"])
    _check_fields(c.s["overrides"], c.source, f"{c.where}.overrides")


@_KIND_CHECKS.register("cross_dataset")
def _check_cross_dataset(c: _Settings) -> None:
    """The other dataset's name, its reader arguments and its protocol arguments."""
    c.need(isinstance(c.s["dataset"], str), "dataset", "a dataset name", c.s["dataset"])
    for key in ("dataset_args", "protocol_args"):
        c.need(isinstance(c.s[key], dict), key, "a mapping", c.s[key])


@_KIND_CHECKS.register("ood_detection")
def _check_ood_detection(c: _Settings) -> None:
    """Which OOD kinds the AUROC is measured against."""
    against = c.s["against"]
    c.need(isinstance(against, list) and bool(against) and set(against) <= {"unseen", "cross_dataset"}, "against",
           "a non-empty list of 'unseen' and/or 'cross_dataset'", against)


@_KIND_CHECKS.register("cost")
def _check_cost(c: _Settings) -> None:
    """The search-cost settings: code lengths, database and query counts, k, repeats."""
    sr = c.s["search"]
    c.need(isinstance(sr, dict), "search", "a mapping", sr)
    bad = sorted(set(sr) - set(EXPERIMENT_DEFAULTS["cost"]["search"]))
    if bad:
        c.fail(f".search: unknown key(s) {bad}")
    c.need(isinstance(sr["bits"], list) and bool(sr["bits"]), "search.bits", "a non-empty list", sr["bits"])
    for j, b in enumerate(sr["bits"]):
        c.bits(b, f"search.bits[{j}]")
    c.positive_ints(sr, ("n_database", "n_queries", "k", "repeats"), "search.")


@_KIND_CHECKS.register("retrievals")
def _check_retrievals(c: _Settings) -> None:
    """Queries and k of the retrievals page, its seed, sections and methods."""
    s = c.s
    c.positive_ints(s, ("n_queries", "k"))
    c.need(s["seed"] is None or (_is_int(s["seed"]) and s["seed"] >= 0), "seed", "null (the first seed) or a seed",
           s["seed"])
    c.need(isinstance(s["sections"], list) and set(s["sections"]) <= {"main", "unseen", "cross_dataset"},
           "sections", "a list of 'main', 'unseen', 'cross_dataset'", s["sections"])
    if s["methods"] is not None:
        c.methods(s["methods"], "methods")


@_KIND_CHECKS.register("overfitting")
def _check_overfitting(c: _Settings) -> None:
    """The methods whose curves the over-fitting section shows (null: every method)."""
    if c.s["methods"] is not None:
        c.methods(c.s["methods"], "methods")


def _check_method_list(value: Any, source: str, where: str, method_names: list[str]) -> None:
    _need(isinstance(value, list) and bool(value), source, where, "a non-empty list of method names", value)
    for name in value:
        if name not in method_names:
            raise SuiteError(f"{source}: {where}: {name!r} is not a method of this suite ({', '.join(method_names)})")
