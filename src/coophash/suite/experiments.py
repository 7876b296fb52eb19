"""The experiments of a suite: which runs each needs (``plan_suite``) and which evaluations each run gets.

Each experiment kind maps to training configs; configs shared by several experiments are trained once (the
cache key is :func:`coophash.bench.config_key`, every config field).  Evaluations that need the trained
model (:mod:`coophash.suite.evals`: another dataset, out-of-distribution scores, encoding speed, sample
retrievals) run right after training and are stored in the cached result under ``extra`` (see
:func:`coophash.bench.run_grid`), so no checkpoint has to be kept.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from coophash.bench import ExtraEval, config_key
from coophash.config import TrainConfig
from coophash.methods import METHODS
from coophash.suite.config import Suite
from coophash.suite.evals import EVALS, auroc, auroc_reference, sample_queries
from coophash.suite.search import search_cost

__all__ = [
    "PlannedRun",
    "Plan",
    "plan_suite",
    "extra_evals_for",
    "auroc",
    "auroc_reference",
    "search_cost",
    "sample_queries",
]

log = logging.getLogger(__name__)


@dataclass
class PlannedRun:
    """One training config of a suite, the method row it belongs to and what is evaluated on it."""

    cfg: TrainConfig
    method: str
    experiments: set[str] = field(default_factory=set)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The cache key (every config field)."""
        return config_key(self.cfg)


@dataclass
class Plan:
    """Every run of a suite (unique configs, in training order) and the methods left out."""

    suite: Suite
    runs: list[PlannedRun]
    skipped: list[dict[str, str]]
    seeds: list[int]
    retrieval_seed: Optional[int] = None
    pending: list[str] = field(default_factory=list)

    def runs_for(self, experiment: str) -> list[PlannedRun]:
        """The runs an experiment reads."""
        return [r for r in self.runs if experiment in r.experiments]

    def selected(self, only: Optional[Iterable[str]]) -> list[PlannedRun]:
        """The runs needed by the experiments in ``only`` (all when None)."""
        if not only:
            return list(self.runs)
        wanted = set(only)
        return [r for r in self.runs if r.experiments & wanted]


def registered_methods() -> set[str]:
    """Names in the method registry of this install."""
    return set(METHODS)


def plan_suite(suite: Suite, seeds: Optional[Sequence[int]] = None, device: Optional[str] = None,
               out: Optional[str] = None, lookup: Optional[Callable[[PlannedRun], Optional[dict]]] = None) -> Plan:
    """Expand a suite into its unique training configs; methods not registered are skipped (with a reason).

    ``device`` overrides every run's device; ``out`` sets ``TrainConfig.out`` (where a method keeps shared
    artefacts such as fakereg's GAN stage; not part of the cache key).  Runs are ordered seed by seed, so a
    partial suite already has every table for its first seeds.  A main grid with ``top`` adds the best
    entries of a method family once the results it ranks by are all available through ``lookup(run)``
    (the cached result or None); until then it is listed in ``Plan.pending``.
    """
    base: dict[str, Any] = {"device": device} if device else {}
    if out:
        base["out"] = str(out)
    planner = _Planner(suite, list(seeds) if seeds else list(suite.seeds), base, lookup)
    exps = suite.experiments
    for seed in planner.seeds:
        if "main" in exps:
            planner.main(seed, grids_with_top=False)
        for kind in ("pr", "cost"):
            if kind in exps:
                planner.fixed(kind, seed)
        if "cross_dataset" in exps:
            planner.cross_dataset(seed)
        if "unseen" in exps:
            planner.unseen(seed)
        if "retrievals" in exps and "main" in planner.sections and seed == planner.rseed:
            planner.retrievals(seed)
    if "main" in exps:
        for seed in planner.seeds:
            planner.main(seed, grids_with_top=True)
    return planner.plan()


class _Planner:
    """The runs of a suite as they are added: unique configs in training order, each with its experiments."""

    def __init__(self, suite: Suite, seeds: list[int], base: Mapping[str, Any],
                 lookup: Optional[Callable[[PlannedRun], Optional[dict]]]) -> None:
        self.suite, self.exps, self.seeds, self.base, self.lookup = suite, suite.experiments, seeds, base, lookup
        registered = registered_methods()
        self.skipped = [{"name": m.name, "method": m.method,
                         "reason": f"method {m.method!r} is not registered in this install "
                                   f"(registered: {', '.join(sorted(registered))}); its runs were skipped"}
                        for m in suite.methods if m.method not in registered]
        methods = [m for m in suite.methods if m.method in registered]
        self.names = [m.name for m in methods]
        self.family = {m.name: m.method for m in methods}
        self.by_key: dict[str, PlannedRun] = {}  # insertion order = training order
        self.ranked: dict[tuple[int, float], dict[str, PlannedRun]] = {}  # (bits, label fraction) -> main runs
        self.pending: list[str] = []
        r = self.exps.get("retrievals")
        self.rseed = None if r is None else (r["seed"] if r["seed"] is not None else seeds[0])
        self.sections = set(r["sections"]) if r else set()
        self.samples_args = {"n_queries": r["n_queries"], "k": r["k"]} if r else {}
        self.rmethods = set(r.get("methods") or self.names) if r else set()
        self.ood_against = set(self.exps["ood_detection"]["against"]) if "ood_detection" in self.exps else set()

    def plan(self) -> Plan:
        """The plan of every run added so far."""
        plan = Plan(self.suite, list(self.by_key.values()), self.skipped, self.seeds, self.rseed)
        plan.pending = self.pending
        return plan

    def add(self, mname: str, seed: int, role: str, extras: Mapping[str, dict[str, Any]] = (),
            **fields: Any) -> PlannedRun:
        """The run of method entry ``mname`` with ``fields``, read by experiment ``role`` (shared if planned)."""
        cfg = self.suite.config(self.suite.method(mname), seed, **self.base, **fields)
        key = config_key(cfg)
        if key not in self.by_key:
            self.by_key[key] = PlannedRun(cfg, mname)
        run = self.by_key[key]
        if run.method != mname:
            log.warning("methods %r and %r have identical configs; %r's run is shared", run.method, mname, mname)
        run.experiments.add(role)
        run.extras.update(dict(extras))
        return run

    def samples_wanted(self, section: str, seed: int, mname: str) -> bool:
        """Whether the retrievals page shows ``mname``'s run of ``section`` at ``seed``."""
        return section in self.sections and seed == self.rseed and mname in self.rmethods

    def main(self, seed: int, grids_with_top: bool) -> None:
        """The main grids' runs (those ranking methods by results, or the others), plus scarcity's."""
        exps = self.exps
        for gi, grid in enumerate(exps["main"]["grids"]):
            if bool(grid.get("top")) != grids_with_top:
                continue
            for bits in grid["bits"]:
                for lf in grid["label_fractions"]:
                    for mname in self._grid_methods(gi, grid, bits, lf):
                        run = self.add(mname, seed, "main", bits=bits, label_fraction=float(lf))
                        self.ranked.setdefault((bits, float(lf)), {})[run.key] = run
                        if "scarcity" in exps and bits == exps["scarcity"]["bits"]:
                            self.add(mname, seed, "scarcity", bits=bits, label_fraction=float(lf))
                        if self._overfitting_wanted(bits, mname):
                            self.add(mname, seed, "overfitting", bits=bits, label_fraction=float(lf))

    def _overfitting_wanted(self, bits: int, mname: str) -> bool:
        """Whether the over-fitting section reads the main run of ``mname`` at ``bits``."""
        s = self.exps.get("overfitting")
        return s is not None and bits == s["bits"] and (s["methods"] is None or mname in s["methods"])

    def _grid_methods(self, gi: int, grid: Mapping[str, Any], bits: int, lf: float) -> list[str]:
        """The method entries of one main-grid cell: listed ones, then the ``top`` ranked ones once known."""
        top = grid.get("top")
        chosen = [m for m in grid.get("methods", self.names if not top else []) if m in self.names]
        if top:
            best = _top_methods(top, float(lf), self.ranked, self.family, self.lookup, self.seeds)
            if best is None:
                msg = (f"main grid {gi}: {bits} bits, labels {lf:g}: the top {top['n']} "
                       f"{top.get('family') or ''} entries wait for the {top['bits']}-bit results")
                if msg not in self.pending:
                    self.pending.append(msg)
                best = []
            chosen += [m for m in best if m not in chosen]
        return chosen

    def fixed(self, kind: str, seed: int) -> None:
        """Runs of an experiment at one code length and label fraction (``pr``, ``cost``)."""
        s = self.exps[kind]
        extras = {"encode_speed": {}} if kind == "cost" else {}
        for mname in self.names:
            self.add(mname, seed, kind, extras, bits=s["bits"], label_fraction=float(s["label_fraction"]))

    def cross_dataset(self, seed: int) -> None:
        """Runs evaluated on another dataset (and, if asked, their OOD scores against it)."""
        s = self.exps["cross_dataset"]
        target = {k: s[k] for k in ("dataset", "dataset_args", "protocol", "protocol_args")}
        for mname in self.names:
            extras: dict[str, dict[str, Any]] = {"cross_dataset": target}
            if "cross_dataset" in self.ood_against:
                extras["ood_cross"] = target
            if self.samples_wanted("cross_dataset", seed, mname):
                extras["samples_cross"] = {**target, **self.samples_args}
            self.add(mname, seed, "cross_dataset", extras, bits=s["bits"], label_fraction=float(s["label_fraction"]))
            if "cross_dataset" in self.ood_against:
                self.add(mname, seed, "ood_detection", bits=s["bits"], label_fraction=float(s["label_fraction"]))

    def unseen(self, seed: int) -> None:
        """Runs trained on the seen classes, evaluated on the unseen ones."""
        s = self.exps["unseen"]
        for mname in self.names:
            extras: dict[str, dict[str, Any]] = {}
            if "unseen" in self.ood_against:
                extras["ood_unseen"] = {}
            if self.samples_wanted("unseen", seed, mname):
                extras["samples_unseen"] = dict(self.samples_args)
            fields = _unseen_fields(self.suite, mname, s)
            self.add(mname, seed, "unseen", extras, **fields)
            if "unseen" in self.ood_against:
                self.add(mname, seed, "ood_detection", **fields)

    def retrievals(self, seed: int) -> None:
        """The runs whose sample retrievals the page shows in its main section."""
        s = self.exps["retrievals"]
        for mname in [m for m in self.names if m in self.rmethods]:
            self.add(mname, seed, "retrievals", {"samples": dict(self.samples_args)}, bits=s["bits"],
                     label_fraction=float(s["label_fraction"]))


def _top_methods(top: Mapping[str, Any], lf: float, ranked: Mapping[tuple[int, float], Mapping[str, PlannedRun]],
                 family: Mapping[str, str], lookup: Optional[Callable[[PlannedRun], Optional[dict]]],
                 seeds: Sequence[int]) -> Optional[list[str]]:
    """The ``top['n']`` best methods (of ``top['family']``) by mean mAP@all at ``top['bits']`` bits and ``lf``.

    None while any of the runs ranked is not finished (or no ``lookup`` is given).
    """
    runs = [r for r in ranked.get((int(top["bits"]), float(lf)), {}).values()
            if not top.get("family") or family.get(r.method) == top["family"]]
    if lookup is None or not runs:
        return None
    scores: dict[str, list[float]] = {}
    for r in runs:
        rec = lookup(r)
        if rec is None:
            return None
        scores.setdefault(r.method, []).append(float(rec["map@all"]))
    means = sorted(((-sum(v) / len(v), m) for m, v in scores.items()), key=lambda t: (t[0], t[1]))
    return [m for _, m in means[: int(top["n"])]]


def _unseen_fields(suite: Suite, mname: str, s: Mapping[str, Any]) -> dict[str, Any]:
    """Config fields of an unseen-class run (model selection: seen-class validation queries retrieving
    among the seen-class train items, see ``Manifest.validation_database``)."""
    over = dict(s.get("overrides") or {})
    fields = {"bits": s["bits"], "label_fraction": float(s["label_fraction"]), "protocol": "unseen",
              "protocol_args": {"seen_classes": [int(c) for c in s["seen_classes"]]}}
    fields.update({k: v for k, v in over.items() if k != "protocol_args"})
    if "protocol_args" in over:
        fields["protocol_args"] = {**over["protocol_args"], **fields["protocol_args"]}
    return fields


# ------------------------------------------------------------------------------------------ extras
def extra_evals_for(plan: Plan) -> Callable[[TrainConfig], dict[str, ExtraEval]]:
    """The ``extra_evals`` callback of :func:`coophash.bench.run_grid` for the runs of ``plan``."""
    by_key = {r.key: r for r in plan.runs}

    def extras(cfg: TrainConfig) -> dict[str, ExtraEval]:
        run = by_key.get(config_key(cfg))
        if run is None:
            return {}
        return {name: functools.partial(EVALS[name], **args) for name, args in run.extras.items()}

    return extras
