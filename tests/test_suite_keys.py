"""Cache keys of the experiment suite: a (method, config, seed) run keeps the key its cached result is filed under.

Every figure below was computed with the code before the restructure of issue 10.  A changed key would make
``coophash bench`` retrain runs that are cached, and the committed benchmark results unreachable.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from coophash.bench import EXECUTION_FIELDS, config_key
from coophash.config import TrainConfig
from coophash.suite import load_suite, plan_suite

ROOT = Path(__file__).resolve().parents[1]

#: The runs of ``coophash bench smoke`` (out=bench/smoke, default device), in training order (the semi-dpsh
#: keys were added with the method; every older key is unchanged).
SMOKE_KEYS = [
    'supervised-dsh-32b-lf1-s0-d677e55e7b',
    'supervised-dpsh-32b-lf1-s0-3ffb647d64',
    'supervised-hashnet-32b-lf1-s0-1f8677fceb',
    'supervised-csq-32b-lf1-s0-544dcf6466',
    'supervised-greedyhash-32b-lf1-s0-6e6413c354',
    'supervised-orthohash-32b-lf1-s0-f832528ea5',
    'coophash-dpsh-32b-lf1-s0-9ca4343d97',
    'semi-dpsh-32b-lf1-s0-201c2111b2',
    'fakereg-dpsh-32b-lf1-s0-9829352687',
    'supervised-dsh-32b-lf0.1-s0-64429eb192',
    'supervised-dpsh-32b-lf0.1-s0-35736ca37f',
    'supervised-hashnet-32b-lf0.1-s0-15dd193279',
    'supervised-csq-32b-lf0.1-s0-5a50b80005',
    'supervised-greedyhash-32b-lf0.1-s0-83cf56cbbb',
    'supervised-orthohash-32b-lf0.1-s0-4237321569',
    'coophash-dpsh-32b-lf0.1-s0-a05c33070a',
    'semi-dpsh-32b-lf0.1-s0-9da4a5032d',
    'fakereg-dpsh-32b-lf0.1-s0-6f8ecfad62',
    'supervised-dpsh-16b-lf0.1-s0-0c34864189',
    'coophash-dpsh-16b-lf0.1-s0-d1145231c1',
    'supervised-dsh-32b-lf1-s0-1de5bc69b6',
    'supervised-dpsh-32b-lf1-s0-d85ec54ed6',
    'supervised-hashnet-32b-lf1-s0-5a9604d098',
    'supervised-csq-32b-lf1-s0-6d51679989',
    'supervised-greedyhash-32b-lf1-s0-e07790390d',
    'supervised-orthohash-32b-lf1-s0-1a7d1bf69e',
    'coophash-dpsh-32b-lf1-s0-cbe93a37fe',
    'semi-dpsh-32b-lf1-s0-ec7bbf3067',
    'fakereg-dpsh-32b-lf1-s0-dc6891e73d',
]


def test_keys_of_single_configs_are_pinned():
    assert config_key(TrainConfig()) == "supervised-dpsh-32b-lf1-s0-d8ae561ebe"
    fakereg = TrainConfig.from_dict({"method": "fakereg", "loss": "csq", "bits": 16, "label_fraction": 0.1, "seed": 2,
                                     "method_args": {"gan_epochs": 1}})
    assert config_key(fakereg) == "fakereg-csq-16b-lf0.1-s2-f7c3558877"
    coop = TrainConfig.from_dict({"method": "coophash", "loss": "dpsh", "unlabeled_batch_size": 32, "amp": False,
                                  "method_args": {"langevin_steps": 2}})
    assert config_key(coop) == "coophash-dpsh-32b-lf1-s0-75aaf05ee0"
    # not in the key: where the run writes, how many threads it uses
    assert config_key(TrainConfig(out="elsewhere", threads=3)) == config_key(TrainConfig())


def test_smoke_suite_plans_the_pinned_keys():
    plan = plan_suite(load_suite("smoke"), out="bench/smoke")
    assert [r.key for r in plan.runs] == SMOKE_KEYS
    assert plan.pending == []


def test_paper_suite_plans_the_pinned_keys():
    plan = plan_suite(load_suite("paper"), out="bench/paper")
    keys = [r.key for r in plan.runs]
    assert len(keys) == 126 and len(plan.pending) == 2  # the ``top`` grid waits for the 32-bit results
    assert hashlib.sha1("\n".join(keys).encode()).hexdigest() == "eb1b583b2e73f50e7b023e24c21fe8c6e9b50373"


#: The entries of the paper suite that issue 11 changed after docs/paper-h100 was made on a GPU: ``semi-dpsh`` is new,
#: ``coophash`` and ``fakereg-dpsh`` are now the methods' defaults (the recipe of docs/coophash.md; fakes in their
#: own batch-norm pass). docs/paper-h100 reports their former configurations; docs/paper (CPU) the current ones.
PAPER_CHANGED = {"semi-dpsh", "coophash", "fakereg-dpsh"}


@pytest.mark.parametrize("report, device, out", [("paper-h100", "cuda", "/tmp/paper"),
                                                 ("paper", "cpu", "bench/paper-cpu")])
def test_frozen_paper_suite_plans_exactly_the_runs_of_the_committed_report(report, device, out):
    """docs/paper-h100 was made by ``coophash bench paper --device cuda`` from its suite.yaml, docs/paper by
    ``--device cpu`` from its own (the shipped suite): each plan, the ``top`` grid ranked on those results, has the
    same runs under the same keys, each read by the same experiments."""
    res = json.loads((ROOT / "docs" / report / "results.json").read_text())
    by_key = {r["key"]: r for r in res["runs"]}
    # (TrainConfig.out, where the runs were trained, and the thread count are in the stored config, not in the key:
    # docs/paper reused runs of benchmarks/scarce.yaml trained with out=bench/scarce, threads=1)
    plan = plan_suite(load_suite(ROOT / "docs" / report / "suite.yaml"), device=device, out=out,
                      lookup=lambda run: by_key.get(run.key))
    assert plan.pending == []
    assert [r.key for r in plan.runs] == [r["key"] for r in res["runs"]]

    def computed(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}

    for run in plan.runs:
        rec = by_key[run.key]
        assert run.method == rec["method"] and sorted(run.experiments) == rec["experiments"]
        assert computed(run.cfg.to_dict()) == computed(rec["config"])
    if report == "paper-h100":  # every run trained by that command
        assert all(by_key[run.key]["config"]["out"] == out for run in plan.runs)


def test_shipped_paper_suite_is_the_one_of_the_cpu_report():
    """docs/paper was made from the shipped suite: the frozen copy beside the report is the same file."""
    assert (ROOT / "docs" / "paper" / "suite.yaml").read_text() == (
        ROOT / "src" / "coophash" / "suites" / "paper.yaml").read_text()


def test_paper_suite_plans_the_runs_of_the_h100_report():
    """docs/paper-h100 was made by ``coophash bench paper --device cuda``: the plan, its ``top`` grid ranked on those
    results, has every baseline run of it under the same key, each read by the same experiments; the runs it
    lacks are exactly those of the changed entries (3 seeds x 6 configs each), and the report's runs the plan no
    longer has are the former configurations of those entries."""
    res = json.loads((ROOT / "docs" / "paper-h100" / "results.json").read_text())
    by_key = {r["key"]: r for r in res["runs"]}
    # (its runs were trained with --out /tmp/paper: TrainConfig.out is in the stored config, not in the key)
    plan = plan_suite(load_suite("paper"), device="cuda", out="/tmp/paper", lookup=lambda run: by_key.get(run.key))
    assert plan.pending == []
    kept = [r for r in plan.runs if r.method not in PAPER_CHANGED]
    assert [r.key for r in kept] == [r["key"] for r in res["runs"] if r["method"] not in PAPER_CHANGED]
    for run in kept:
        rec = by_key[run.key]
        assert run.method == rec["method"] and sorted(run.experiments) == rec["experiments"]
        assert run.cfg.to_dict() == rec["config"]
    changed = [r for r in plan.runs if r.method in PAPER_CHANGED]
    assert len(changed) == 3 * 18 and not any(r.key in by_key for r in changed)
    # 18 runs per entry: 32 bits x 3 label fractions, 16/64 bits at 2%, unseen classes; x 3 seeds
    assert sorted({(r.method, r.cfg.bits, r.cfg.label_fraction, r.cfg.protocol) for r in changed}) == sorted(
        {(m, b, lf, pr) for m in PAPER_CHANGED for b, lf, pr in [(32, 1.0, "standard"), (32, 0.1, "standard"),
         (32, 0.02, "standard"), (16, 0.02, "standard"), (64, 0.02, "standard"), (32, 1.0, "unseen")]})
    gone = [r for r in res["runs"] if r["key"] not in {p.key for p in plan.runs}]
    assert sorted({r["method"] for r in gone}) == ["coophash", "fakereg-dpsh"] and len(gone) == 36


def test_paper_suite_coophash_and_semi_are_the_methods_defaults():
    """The paper's CoopHash, semi and fakereg rows are what ``coophash train --method M`` runs (the recipes)."""
    from coophash.methods.base import apply_method_defaults

    suite = load_suite("paper")
    plan = plan_suite(suite, out="bench/paper")
    recipe_fields = {"unlabeled_batch_size", "method_args", "backbone"}  # what a method's recipe may set
    blank = TrainConfig().to_dict()
    for name in ("coophash", "semi-dpsh", "fakereg-dpsh"):
        run = next(r for r in plan.runs if r.method == name)
        # the suite's row with the recipe's fields at TrainConfig's defaults, then the method's defaults applied
        base = {**run.cfg.to_dict(), **{k: blank[k] for k in recipe_fields}}
        plain = TrainConfig.from_dict(apply_method_defaults(base, set(base) - recipe_fields))
        assert plain.to_dict() == run.cfg.to_dict(), name


@pytest.mark.parametrize("bench", sorted(p.name for p in (ROOT / "benchmarks" / "results").iterdir()
                                         if (p / "results").is_dir()))
def test_committed_benchmark_results_are_filed_under_their_config_key(bench):
    paths = sorted((ROOT / "benchmarks" / "results" / bench / "results").glob("*.json"))
    assert paths
    for p in paths:
        cfg = TrainConfig.from_dict(json.loads(p.read_text())["config"])
        assert config_key(cfg) == p.stem, p
