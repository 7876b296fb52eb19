"""The suite report is a pure function of the cached results: the committed paper reports are reproduced byte for byte.

``docs/paper/results.json`` holds every run of ``coophash bench paper`` (samples left out) and every table;
rebuilding the tables from its runs must give the same file, and ``report.md`` rendered from them the
committed ``docs/paper/report.md`` (only the time and machine of writing are taken from the file). The plan is that of
``docs/paper/suite.yaml``, the suite the report was made from.  Both reports: ``docs/paper`` (the current suite,
trained on the CPU) and ``docs/paper-h100`` (its first version, trained on an H100).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from coophash.suite import load_suite, plan_suite
from coophash.suite.report import build_results, fmt_stats, render_markdown, stats, write_report
from coophash.suite.runner import SuiteRun

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: each committed report: its folder and the device its runs were trained on (part of every run's cache key)
REPORTS = {"paper": "cpu", "paper-h100": "cuda"}


@pytest.fixture(scope="module", params=sorted(REPORTS))
def paper(request) -> tuple[dict, SuiteRun]:
    PAPER, device = DOCS / request.param, REPORTS[request.param]
    committed = json.loads((PAPER / "results.json").read_text())
    recs = {r["key"]: {k: v for k, v in r.items() if k not in ("method", "experiments")} for r in committed["runs"]}
    # the frozen suite stands in for the shipped paper.yaml the report names as its source
    suite = dataclasses.replace(load_suite(PAPER / "suite.yaml"), source=committed["source"])
    plan = plan_suite(suite, device=device, lookup=lambda run: recs.get(run.key))
    sr = SuiteRun(plan=plan, records={r.key: recs[r.key] for r in plan.runs if r.key in recs},
                  search=committed["cost"]["search"], out=Path("unused"), report_dir=Path("unused") / "report")
    return committed, sr, PAPER


def test_results_json_of_the_paper_suite_is_reproduced(paper):
    committed, sr, PAPER = paper
    res = build_results(sr, committed["command"], committed["note"])
    res.update(created_utc=committed["created_utc"], machine=committed["machine"], files=committed["files"])
    assert json.dumps(res, indent=1, allow_nan=False) + "\n" == (PAPER / "results.json").read_text()


def test_report_md_of_the_paper_suite_is_reproduced(paper):
    committed, _sr, PAPER = paper
    md = render_markdown(committed, {k: Path(v) for k, v in committed["files"].items()})
    assert md == (PAPER / "report.md").read_text()


def test_partial_suite_report_says_what_is_missing(paper, tmp_path):
    committed, sr, _ = paper
    half = dict(sorted(sr.records.items())[::2])
    partial = SuiteRun(plan=plan_suite(sr.plan.suite, device=sr.plan.runs[0].cfg.device), records=half, search=[], out=tmp_path,
                       report_dir=tmp_path / "report")
    files = write_report(partial, command="partial")
    md = files["report"].read_text()
    assert "## Incomplete" in md and "not planned yet: main grid 1: 16 bits, labels 0.02" in md
    res = json.loads(files["results"].read_text())
    assert res["progress"]["main"]["cached"] < res["progress"]["main"]["planned"]
    assert len(res["runs"]) == len({k for k in half if any(r.key == k for r in partial.plan.runs)})
    assert {"results", "report", "scarcity", "pr"} <= set(files) and "retrievals" not in files


def test_stats_and_their_format():
    s = stats([1.0, None, float("nan"), 3.0])
    assert s == {"mean": 2.0, "std": 2.0 ** 0.5, "n": 2, "values": [1.0, 3.0]}
    assert fmt_stats(s, 2) == "2.00 ± 1.41 (2)" and fmt_stats(s, 1, bold=True) == "**2.0 ± 1.4 (2)**"
    assert fmt_stats(stats([])) == "–" and stats([5.0])["std"] == 0.0
