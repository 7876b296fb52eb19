"""The suite's over-fitting section (issue 12): per-epoch curves in cached results, their summaries, the report.

Cached results keep each run's per-epoch validation and training-sample mAP (``curves``); the ``overfitting``
experiment turns them into final train mAP, best val mAP and train − val gaps per method and label fraction,
mean ± std over seeds, and one plot per label fraction.  Results cached before curves existed still load: their
cells say "no curves".
"""
from __future__ import annotations

import json
import math
import textwrap

import pytest

from coophash import bench as bench_mod
from coophash.config import TrainConfig
from coophash.suite import SuiteError, parse_suite, plan_suite
from coophash.suite.overfitting import has_curves, mean_curve, run_summary
from coophash.suite.report import write_report
from coophash.suite.runner import SuiteRun
from coophash.train import runs

PNG = b"\x89PNG\r\n\x1a\n"

SUITE = textwrap.dedent("""
    name: of
    defaults: {dataset: digits, epochs: 3}
    seeds: [0, 1]
    methods:
      - {name: a, method: supervised, loss: dpsh}
      - {name: b, method: supervised, loss: csq}
      - {name: c, method: supervised, loss: dsh}
    experiments:
      main:
        grids:
          - {bits: [16], label_fractions: [1.0, 0.5], methods: [a, b]}
          - {bits: [16], label_fractions: [0.5], methods: [c]}
          - {bits: [8], label_fractions: [0.5], methods: [a]}
      overfitting: {bits: 16}
""")

# hand-made curves of method a at labels 100% (seeds 0, 1); best epoch 2 for both
CURVES = {
    0: {"epoch": [1, 2, 3], "train_map": [0.5, 0.7, 0.9], "val_map": [0.5, 0.6, 0.55]},
    1: {"epoch": [1, 2, 3], "train_map": [0.4, 0.8, 0.95], "val_map": [0.45, 0.62, 0.6]},
}


def _record(run, curves=None, best_epoch=2, best_val=0.6):
    rec = {"key": run.key, "config": run.cfg.to_dict(), "map@all": 0.5, "precision@r2": 0.4,
           "best_val_map": best_val, "best_epoch": best_epoch, "seconds_per_epoch": 1.0,
           "epoch_seconds": [1.0, 1.0, 1.0], "steps_per_epoch": 3, "metrics": {"map@all": 0.5}, "pr_curve": None}
    if curves is not None:  # results cached before issue 12 have no "curves"
        rec["curves"] = curves
    return rec


def _records(plan, with_curves=True):
    """a: the hand-made curves (labels 100%) or the same curve per seed; b: old results without curves; c: curves."""
    recs = {}
    for run in plan.runs:
        seed, m = run.cfg.seed, run.method
        if m == "b" or not with_curves:
            recs[run.key] = _record(run)
        elif m == "a" and run.cfg.label_fraction == 1.0:
            recs[run.key] = _record(run, CURVES[seed], best_val=CURVES[seed]["val_map"][1])
        else:
            recs[run.key] = _record(run, CURVES[0], best_val=0.6)
    return recs


def test_run_summary_and_mean_curve_by_hand():
    s0 = run_summary({"curves": CURVES[0], "best_epoch": 2})
    assert s0["final_train_map"] == 0.9
    assert s0["gap_at_best"] == pytest.approx(0.7 - 0.6) and s0["gap_at_last"] == pytest.approx(0.9 - 0.55)
    assert run_summary({"best_epoch": 2}) is None  # an old result
    assert not has_curves({"curves": {"epoch": [1], "train_map": [None], "val_map": [0.3]}})
    # train mAP logged every 2nd epoch only: no gap at epoch 3 (last), the one at 2 exists
    sparse = {"epoch": [1, 2, 3], "train_map": [None, 0.8, None], "val_map": [0.5, 0.6, 0.7]}
    s = run_summary({"curves": sparse, "best_epoch": 2})
    assert s == {"final_train_map": None, "gap_at_best": pytest.approx(0.2), "gap_at_last": None}
    m = mean_curve([CURVES[0], CURVES[1], sparse])
    assert m["epoch"] == [1, 2, 3]
    assert m["train_map"] == pytest.approx([0.45, (0.7 + 0.8 + 0.8) / 3, 0.925])
    assert m["n_train"] == [2, 3, 2] and m["n_val"] == [3, 3, 3]
    assert m["val_map"] == pytest.approx([(0.5 + 0.45 + 0.5) / 3, (0.6 + 0.62 + 0.6) / 3, (0.55 + 0.6 + 0.7) / 3])


def test_overfitting_needs_main_and_checks_its_methods():
    base = "name: t\nmethods:\n  - {name: a, method: supervised}\nexperiments:\n"
    with pytest.raises(SuiteError, match="experiments.overfitting reads the results of experiments.main"):
        parse_suite(base + "  overfitting: {}\n", "t.yaml")
    with pytest.raises(SuiteError, match=r"experiments.overfitting.methods: 'zz' is not a method of this suite"):
        parse_suite(base + "  main: {}\n  overfitting: {methods: [zz]}\n", "t.yaml")
    with pytest.raises(SuiteError, match="experiments.overfitting.bits must be a positive integer"):
        parse_suite(base + "  main: {}\n  overfitting: {bits: 0}\n", "t.yaml")
    s = parse_suite(base + "  main: {}\n  overfitting: {}\n", "t.yaml")
    assert s.experiments["overfitting"] == {"bits": 32, "methods": None}


def test_overfitting_reads_main_runs_at_its_bits_and_adds_none():
    suite = parse_suite(SUITE, "of.yaml")
    plan = plan_suite(suite)
    without = plan_suite(parse_suite(SUITE.replace("      overfitting: {bits: 16}\n", ""), "of.yaml"))
    assert [r.key for r in plan.runs] == [r.key for r in without.runs]  # the same runs, the same keys
    of = plan.runs_for("overfitting")
    assert len(of) == 2 * (2 * 2 + 1) and all(r.cfg.bits == 16 for r in of)
    assert {r.key for r in plan.selected(["overfitting"])} == {r.key for r in of}
    only_a = plan_suite(parse_suite(SUITE.replace("{bits: 16}", "{bits: 16, methods: [a]}"), "of.yaml"))
    assert {r.method for r in only_a.runs_for("overfitting")} == {"a"}


def test_report_section_numbers_plots_and_old_results(tmp_path):
    plan = plan_suite(parse_suite(SUITE, "of.yaml"))
    sr = SuiteRun(plan=plan, records=_records(plan), search=[], out=tmp_path, report_dir=tmp_path / "report")
    files = write_report(sr, command="pytest")
    res = json.loads(files["results"].read_text())
    of = res["overfitting"]
    assert of["bits"] == 16 and set(of["methods"]) == {"a", "b", "c"}
    a = of["methods"]["a"]["1"]
    assert a["status"] == "ok" and a["runs"] == a["with_curves"] == 2
    assert a["final_train_map"]["mean"] == pytest.approx(0.925)
    assert a["best_val_map"]["mean"] == pytest.approx(0.61)
    assert a["gap_at_best"]["mean"] == pytest.approx(0.14)
    assert a["gap_at_best"]["std"] == pytest.approx(math.sqrt(2 * 0.04 ** 2))
    assert a["gap_at_last"]["mean"] == pytest.approx(0.35) and a["gap_at_last"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert a["curve"]["train_map"] == pytest.approx([0.45, 0.75, 0.925])
    b = of["methods"]["b"]["0.5"]
    assert b["status"] == "no curves" and b["with_curves"] == 0 and b["runs"] == 2 and "curve" not in b
    assert b["best_val_map"]["n"] == 2 and b["gap_at_best"]["n"] == 0
    assert set(of["methods"]["c"]) == {"0.5"}  # c runs at 50% only
    for lf in ("1", "0.5"):
        assert files[f"overfitting-lf{lf}"].read_bytes()[:8] == PNG
        assert res["files"][f"overfitting-lf{lf}"] == f"overfitting-lf{lf}.png"
    md = files["report"].read_text()
    assert "## Over-fitting" in md and "### Labels 100%" in md and "### Labels 50%" in md
    assert "![train and validation mAP per epoch, labels 50%](overfitting-lf0.5.png)" in md
    row_a = next(line for line in md.splitlines() if line.startswith("| a | ") and "+0.1400" in line)
    assert "0.9250 ± 0.0354 (2)" in row_a and "+0.3500 ± 0.0000 (2)" in row_a and "2 of 2" in row_a
    row_b = next(line for line in md.splitlines() if line.startswith("| b | ") and " of 2 |" in line)
    assert row_b.count("no curves") == 3 and "0 of 2" in row_b
    assert "No curves:" not in md  # some runs have curves


def test_report_of_results_cached_before_curves_says_no_curves(tmp_path):
    plan = plan_suite(parse_suite(SUITE, "of.yaml"))
    sr = SuiteRun(plan=plan, records=_records(plan, with_curves=False), search=[], out=tmp_path,
                  report_dir=tmp_path / "report")
    files = write_report(sr)
    assert not any(k.startswith("overfitting-lf") for k in files)
    md = files["report"].read_text()
    assert "No curves: every cached run of this section predates per-epoch curves" in md
    res = json.loads(files["results"].read_text())
    assert all(e["status"] == "no curves" for d in res["overfitting"]["methods"].values() for e in d.values())
    empty = SuiteRun(plan=plan, records={}, search=[], out=tmp_path, report_dir=tmp_path / "empty")
    assert "No run of this section has finished yet." in write_report(empty)["report"].read_text()


def test_cached_result_records_the_runs_curves(tmp_path):
    """A trained config's cached result holds its metrics.jsonl curves (None where an epoch logged no value)."""
    cfg = TrainConfig.from_dict({"dataset": "digits", "protocol_args": {"query_per_class": 10, "val_per_class": 10,
                                                                       "train_per_class": 20},
                                 "bits": 8, "epochs": 2, "batch_size": 64, "train_map_every": 2, "threads": 1})
    (rec,) = bench_mod.run_grid([cfg], tmp_path, keep_runs=True)
    c = rec["curves"]
    assert c["epoch"] == [1, 2] and c["train_map"][0] is None and 0.0 <= c["train_map"][1] <= 1.0
    logged = [r for r in runs.read_metrics(tmp_path / "runs" / rec["key"] / runs.METRICS)
              if "epoch" in r and not r.get("final")]
    assert c["val_map"] == [r["val_map"] for r in logged] and c["train_map"][1] == logged[1]["train_map"]
    assert max(c["val_map"]) == rec["best_val_map"] and has_curves(rec)
    assert json.loads((tmp_path / "results" / f"{rec['key']}.json").read_text())["curves"] == c
    s = run_summary(rec)
    assert s["final_train_map"] == c["train_map"][1]
    assert s["gap_at_last"] == pytest.approx(c["train_map"][1] - c["val_map"][1])
