"""benchmarks/overfit_tables.py: the issue-12 tables pair each arm and variant with its references seed by seed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overfit_tables.py"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("overfit_tables", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(m: float, val: float, train: list[float], vals: list[float], best: int) -> dict:
    return {"map@all": m, "best_val_map": val, "best_epoch": best, "seconds_per_epoch": 1.0,
            "curves": {"epoch": list(range(1, len(vals) + 1)), "train_map": train, "val_map": vals}}


ENTRIES = {
    "dpsh-r": {"backbone": "r", "method": "supervised", "method_args": {}},
    "fakereg-dpsh-r": {"backbone": "r", "method": "fakereg", "method_args": {"fake_bn": "separate"}},
    "fr-r-mixed": {"backbone": "r", "method": "fakereg", "method_args": {}},
    "fr-r-lam1": {"backbone": "r", "method": "fakereg", "method_args": {"fake_weight": 1.0}},
    "fr-r-own-lam1": {"backbone": "r", "method": "fakereg", "method_args": {"fake_bn": "separate",
                                                                             "fake_weight": 1.0}},
}


def _runs():
    return {
        "dpsh-r": {(0.1, 0): _rec(0.90, 0.89, [0.9, 0.95], [0.8, 0.89], 2),
                   (0.1, 1): _rec(0.80, 0.79, [0.9, 0.99], [0.7, 0.79], 2)},
        "fakereg-dpsh-r": {(0.1, 0): _rec(0.93, 0.92, [0.9, 0.94], [0.92, 0.9], 1),
                           (0.1, 1): _rec(0.81, 0.80, [0.9, 0.96], [0.7, 0.8], 2)},
        "fr-r-mixed": {(0.1, 0): _rec(0.85, 0.84, [0.9, 0.9], [0.8, 0.84], 2)},
        "fr-r-lam1": {(0.02, 0): _rec(0.70, 0.71, [0.8, 0.8], [0.6, 0.71], 2)},
        "fr-r-own-lam1": {(0.1, 1): _rec(0.86, 0.85, [0.9, 0.9], [0.85, 0.8], 1)},
    }


def test_paired_differences_and_overfit_figures_by_hand(tables):
    runs = _runs()
    assert tables.paired(runs, "fakereg-dpsh-r", "dpsh-r", 0.1) == pytest.approx([0.03, 0.01])
    assert tables.paired(runs, "fr-r-own-lam1", "dpsh-r", 0.1) == pytest.approx([0.06])  # seed 1 only
    assert tables.paired(runs, "fr-r-lam1", "dpsh-r", 0.1) == []  # no shared (fraction, seed)
    final, gap = tables.overfit_figures(runs["fakereg-dpsh-r"][(0.1, 0)])
    assert final == 0.94 and gap == pytest.approx(0.9 - 0.92)  # the gap at the selected epoch 1, not the last


def test_main_table_row_holds_mean_std_and_paired_difference(tables):
    rows = tables.main_table(_runs(), ENTRIES)
    assert len(rows) == 3  # header, rule, one row at 10%: no other fraction has results
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert cells[:2] == ["r", "0.1"]
    assert cells[2] == "0.8500 ± 0.0707 (2)" and cells[3] == "0.8700 ± 0.0849 (2)"
    assert cells[4] == "+0.0200 ± 0.0141 (2)"


def test_variants_table_per_fraction_names_the_reference_of_each_change(tables):
    runs = _runs()
    at10 = tables.variants_table(runs, ENTRIES, 0.1)
    names = [r.split("|")[1].strip() for r in at10[2:]]
    assert names == ["fr-r-mixed", "fr-r-own-lam1"]  # fr-r-lam1 has no run at 10%
    own = [c.strip() for c in at10[3].split("|")[1:-1]]
    assert own[2] == "fake_weight=1.0 (from the defaults: own pass)"
    assert own[5:] == ["+0.0600 (1)", "+0.0500 (1)", "–"]  # vs dpsh, vs the arm (seed 1), no mixed run at seed 1
    mixed = [c.strip() for c in at10[2].split("|")[1:-1]]
    assert mixed[2] == "– (fakes mixed: the former default)" and mixed[5:] == ["-0.0500 (1)", "-0.0800 (1)", "–"]
    at2 = tables.variants_table(runs, ENTRIES, 0.02)
    assert [r.split("|")[1].strip() for r in at2[2:]] == ["fr-r-lam1"]
    assert "fake_weight=1.0 (from the mixed pass)" in at2[2]
