"""Experiment suites: AUROC against a pairwise reference, suite-file validation, a tiny suite end to end."""
from __future__ import annotations

import json
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from coophash import bench as bench_mod
from coophash.suite import SuiteError, auroc, auroc_reference, load_suite, run_suite, shipped_suites
from coophash.suite.experiments import plan_suite
from coophash.train.trainer import Trainer

TINY = textwrap.dedent("""
    name: tiny
    defaults:
      dataset: digits
      protocol: standard
      protocol_args: {query_per_class: 10, val_per_class: 10, train_per_class: 30}
      batch_size: 64
      epochs: 1
      eval_batch_size: 256
    seeds: [0]
    methods:
      - {name: dpsh, method: supervised, loss: dpsh}
      - {name: csq, method: supervised, loss: csq}
      - {name: ghost, method: not-a-registered-method, loss: dpsh}
    experiments:
      main:
        grids:
          - {bits: [16], label_fractions: [1.0, 0.5]}
          - {bits: [8], label_fractions: [0.5], top: {n: 1, family: supervised, bits: 16}}
      scarcity: {bits: 16}
      unseen: {bits: 16, label_fraction: 1.0, seen_classes: [0, 1, 2, 3, 4, 5, 6]}
      cross_dataset:
        bits: 16
        label_fraction: 1.0
        dataset: mnist5k
        protocol_args: {query_per_class: 5, val_per_class: 0, train_per_class: 20}
      ood_detection: {against: [unseen, cross_dataset]}
      pr: {bits: 16, label_fraction: 1.0}
      cost:
        bits: 16
        label_fraction: 1.0
        search: {bits: [16, 32], n_database: 3000, n_queries: 20, k: 10, repeats: 1}
      retrievals: {bits: 16, label_fraction: 1.0, n_queries: 4, k: 10}
""")


# ------------------------------------------------------------------------------------------ AUROC
@pytest.mark.parametrize("seed", range(6))
def test_auroc_matches_pairwise_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_in, n_out = rng.integers(1, 40, size=2)
    a = rng.integers(0, 6, size=n_in).astype(float)  # few distinct values: many ties, within and across groups
    b = rng.integers(1, 8, size=n_out).astype(float)
    assert auroc(a, b) == pytest.approx(auroc_reference(a.tolist(), b.tolist()), abs=1e-12)
    c, d = rng.normal(size=n_in), rng.normal(0.5, size=n_out)
    assert auroc(c, d) == pytest.approx(auroc_reference(c.tolist(), d.tolist()), abs=1e-12)


def test_auroc_edge_cases():
    assert auroc([0, 1], [2, 3]) == 1.0
    assert auroc([2, 3], [0, 1]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError, match="non-empty"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        auroc([np.nan], [1.0])


# ------------------------------------------------------------------------------------------ validation
def _bad(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


BASE = """
name: t
methods:
  - {name: a, method: supervised, loss: dpsh}
experiments:
  main: {}
"""


@pytest.mark.parametrize("text, needle", [
    (BASE + "extra_key: 1\n", "unknown top-level key(s) ['extra_key']"),
    ("name: t\nexperiments: {main: {}}\n", "missing top-level key 'methods'"),
    (BASE.replace("loss: dpsh", "loss: dpsh, lossx: 1"), "methods[0] (a): unknown TrainConfig field(s) ['lossx']"),
    (BASE.replace("loss: dpsh}", "loss: dpsh}\n  - {name: a, method: supervised}"),
     "methods[1].name: 'a' is used twice"),
    (BASE.replace("loss: dpsh", "loss: dpsh, bits: 16"), "methods[0].bits: set by the experiments"),
    (BASE.replace("loss: dpsh", "loss: dpsh, augment: rotate"), "augment must be none, shift or shift+flip"),
    (BASE.replace("main: {}", "mian: {}"), "experiments: unknown kind(s) ['mian']"),
    (BASE.replace("main: {}", "main: {grids: [{bits: [0], label_fractions: [1.0]}]}"),
     "experiments.main.grids[0].bits[0] must be a positive integer"),
    (BASE.replace("main: {}", "main: {grids: [{bits: [8], label_fractions: [1.5]}]}"),
     "experiments.main.grids[0].label_fractions[0] must be a number in (0, 1]"),
    (BASE.replace("main: {}", "main: {grids: [{bits: [8], label_fractions: [1.0], methods: [zz]}]}"),
     "experiments.main.grids[0].methods: 'zz' is not a method of this suite"),
    (BASE.replace("main: {}", "scarcity: {}"), "experiments.scarcity reads the results of experiments.main"),
    (BASE + "  ood_detection: {against: [unseen]}\n", "needs experiments.unseen"),
    (BASE + "  unseen: {colour: red}\n", "experiments.unseen: unknown setting(s) ['colour']"),
    (BASE + "  retrievals: {sections: [everything]}\n", "experiments.retrievals.sections must be"),
    (BASE + "  cost: {search: {n_database: 0}}\n", "experiments.cost.search.n_database must be a positive integer"),
    (BASE + "seeds: [0, 0]\n", "seeds must be a list without repeats"),
    (BASE + "defaults: {seed: 3}\n", "defaults.seed"),
    ("name: t\nmethods: [\n", "not valid YAML"),
])
def test_suite_validation_errors_name_file_and_field(tmp_path, text, needle):
    msg = _bad(tmp_path, text)
    assert needle in msg, msg


def test_unknown_suite_name_and_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="no shipped suite 'nope'.*smoke"):
        load_suite("nope")
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["smoke", "paper"])
def test_shipped_suites_parse_and_plan(name):
    assert name in shipped_suites()
    suite = load_suite(name)
    plan = plan_suite(suite)
    assert plan.runs and len({r.key for r in plan.runs}) == len(plan.runs)
    planned = {r.method for r in plan.runs} | {s["name"] for s in plan.skipped}
    assert planned == {m.name for m in suite.methods}  # every method runs or is reported as skipped
    kinds = set().union(*(r.experiments for r in plan.runs))
    assert kinds == set(suite.experiments)


# ------------------------------------------------------------------------------------------ end to end
class _PageParser(HTMLParser):
    """Collects sections, query rows and result cells of the retrievals page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self.scripts = 0
        self.external: list[str] = []
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "link", "iframe"):
            self.scripts += 1
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])
        cls = (a.get("class") or "").split()
        if tag == "section" and "retrieval-section" in cls:
            self.sections.append({"section": a["data-section"], "method": a["data-method"], "rows": []})
        elif tag == "tr" and "query-row" in cls:
            self.sections[-1]["rows"].append({"query": int(a["data-query"]), "labels": a["data-query-labels"].split(),
                                              "imgs": [], "results": []})
        elif tag == "td" and ("result" in cls or "query" in cls):
            row = self.sections[-1]["rows"][-1]
            self._cell = {"kind": "result" if "result" in cls else "query", "class": cls, "text": "",
                          "index": a.get("data-index"), "labels": (a.get("data-labels") or "").split()}
            if self._cell["kind"] == "result":
                row["results"].append(self._cell)
        elif tag == "img" and self._cell is not None:
            self._cell["src"] = a["src"]
            self.sections[-1]["rows"][-1]["imgs"].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny suite run once (dpsh, csq; 'ghost' is not registered), with a fake ood_score on the baselines."""
    from coophash.methods.supervised import SupervisedHashing

    out = tmp_path_factory.mktemp("bench") / "tiny"
    path = out.parent / "tiny.yaml"
    path.write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SupervisedHashing, "ood_score", lambda self, x: x.float().mean(dim=(1, 2, 3)), raising=False)
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = run_suite(path, out=out, command="pytest tiny")
        finally:
            torch.set_num_threads(prev)
    return path, out, result


def test_tiny_suite_trains_caches_and_reports(tiny):
    path, out, result = tiny
    plan = result.plan
    # main 2 methods x 2 fractions, unseen 2, top-1 baseline at 8 bits; shared configs train once
    assert result.trained == len(plan.runs) == 7
    assert sorted(p.name for p in (out / "results").glob("*.json")) == sorted(f"{r.key}.json" for r in plan.runs)
    assert not any((out / "runs").glob("*")) if (out / "runs").exists() else True  # run folders removed
    assert plan.pending == []
    top = [r for r in plan.runs if r.cfg.bits == 8]
    assert len(top) == 1 and top[0].method in ("dpsh", "csq")
    rep = out / "report"
    for name in ("results.json", "report.md", "scarcity.png", "pr_curves.png", "retrievals.html"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
    assert (rep / "scarcity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((rep / "results.json").read_text())
    assert [s["name"] for s in res["skipped"]] == ["ghost"]
    assert "not registered" in res["skipped"][0]["reason"]
    assert set(res["main"]["16"]) == {"dpsh", "csq"} and set(res["main"]["16"]["dpsh"]) == {"1", "0.5"}
    for m in ("dpsh", "csq"):
        assert 0.0 <= res["unseen"][m]["mean"] <= 1.0
        assert 0.0 <= res["cross_dataset"][m]["map@all"]["mean"] <= 1.0
        for against in ("unseen", "cross_dataset"):
            entry = res["ood_detection"][m][against]
            assert entry["status"] == "ok" and 0.0 <= entry["mean"] <= 1.0
        assert res["cost"]["methods"][m]["encode_images_per_s"]["mean"] > 0
        assert len(res["pr"][m]["curve"]["precision"]) == 17
    assert [s["bits"] for s in res["cost"]["search"]] == [16, 32]
    assert all(s["coophash_ms_per_query"] > 0 for s in res["cost"]["search"])
    md = (rep / "report.md").read_text()
    for needle in ("## Main table", "### 16 bits", "scarcity.png", "## Out-of-distribution retrieval",
                   "## Out-of-distribution detection", "pr_curves.png", "## Cost", "retrievals.html",
                   "ghost", "not registered"):
        assert needle in md, needle


def test_tiny_suite_rerun_trains_nothing(tiny, monkeypatch):
    path, out, first = tiny
    calls = []
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: calls.append(self.cfg) or {})
    again = run_suite(path, out=out)
    assert calls == [] and again.trained == 0
    assert set(again.records) == set(first.records)
    # the CLI on the same folder: everything cached, prints where the report is
    res = CliRunner().invoke(__import__("coophash.cli", fromlist=["cli"]).cli,
                             ["bench", str(path), "--out", str(out), "--quiet", "--note", "Trained on a test box."])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and "0 runs trained" in res.output and calls == []
    assert "Trained on a test box." in (out / "report" / "report.md").read_text()
    assert json.loads((out / "report" / "results.json").read_text())["note"] == "Trained on a test box."


def test_tiny_suite_retrievals_page_structure(tiny):
    from coophash.data import load_dataset

    _path, out, _result = tiny
    page = (out / "report" / "retrievals.html").read_text()
    parser = _PageParser()
    parser.feed(page)
    assert parser.scripts == 0 and parser.external == []
    kinds = {(s["section"], s["method"]) for s in parser.sections}
    assert kinds == {(k, m) for k in ("main", "unseen", "cross_dataset") for m in ("dpsh", "csq")}
    datasets = {"main": load_dataset("digits", image_size=8), "unseen": load_dataset("digits", image_size=8),
                "cross_dataset": load_dataset("mnist5k", image_size=8, channels=1)}
    for sec in parser.sections:
        assert len(sec["rows"]) == 4
        ds = datasets[sec["section"]]
        for row in sec["rows"]:
            assert len(row["results"]) == 10 and len(row["imgs"]) == 11
            assert all(src.startswith("data:image/png;base64,") for src in row["imgs"])
            qlab = set(row["labels"])
            assert qlab == {str(i) for i in np.flatnonzero(ds.labels[row["query"]].numpy())}
            for cell in row["results"]:
                truth = {str(i) for i in np.flatnonzero(ds.labels[int(cell["index"])].numpy())}
                assert set(cell["labels"]) == truth
                correct = bool(truth & qlab)
                assert ("correct" in cell["class"]) == correct and ("wrong" in cell["class"]) == (not correct)
                assert ("✓" in cell["text"]) == correct and ("✗" in cell["text"]) == (not correct)


# ------------------------------------------------------------------------------------------ shards
class _Boom(RuntimeError):
    pass


def test_shards_partition_the_runs_and_keep_going_skips_failures(tiny, tmp_path, monkeypatch):
    """N shards try every uncached run exactly once between them; a failing run does not stop a shard."""
    import shutil

    from coophash.suite.runner import shard_of

    path, out, first = tiny
    work = tmp_path / "sharded"
    shutil.copytree(out / "results", work / "results")
    keys = sorted(r.key for r in first.plan.runs if r.cfg.bits == 16)
    dropped = keys[:4]
    for k in dropped:
        (work / "results" / f"{k}.json").unlink()

    def boom(self, *a, **k):
        raise _Boom(self.cfg.method)

    monkeypatch.setattr(Trainer, "fit", boom)
    tried: dict[int, list[str]] = {}
    n = 3
    for i in range(n):
        seen: list[str] = []
        res = run_suite(path, out=work, shard=(i, n), report=False,
                        on_error=lambda cfg, exc, seen=seen: seen.append(bench_mod.config_key(cfg))
                        if isinstance(exc, _Boom) else pytest.fail(f"unexpected {exc!r}"))
        assert res.files == {}
        tried[i] = seen
        assert all(shard_of(k, n) == i for k in seen)
    flat = [k for ks in tried.values() for k in ks]
    assert sorted(flat) == sorted(dropped)  # each uncached run once, cached ones never
    with pytest.raises(_Boom):  # without on_error a failure propagates
        run_suite(path, out=work, report=False)
    with pytest.raises(ValueError, match="shard"):
        run_suite(path, out=work, shard=(3, 3))


def test_cli_shard_option_errors(tmp_path):
    from coophash.cli import cli

    for bad in ("2", "a/b", "4/4", "-1/2"):
        res = CliRunner().invoke(cli, ["bench", "smoke", "--out", str(tmp_path), "--shard", bad, "--dry-run"])
        assert res.exit_code == 2 and "--shard" in res.output, (bad, res.output)
    res = CliRunner().invoke(cli, ["bench", "smoke", "--out", str(tmp_path), "--shard", "0/2", "--dry-run"])
    both = CliRunner().invoke(cli, ["bench", "smoke", "--out", str(tmp_path), "--shard", "1/2", "--dry-run"])
    full = CliRunner().invoke(cli, ["bench", "smoke", "--out", str(tmp_path), "--dry-run"])
    count = [int(r.output.strip().splitlines()[-1].split()[0]) for r in (res, both, full)]
    assert res.exit_code == both.exit_code == full.exit_code == 0
    assert count[0] + count[1] == count[2] and min(count[:2]) >= 0


def test_config_key_ignores_added_fields_at_their_default():
    from coophash.config import TrainConfig

    cfg = TrainConfig()
    d = cfg.to_dict()
    for name in ("out", "threads", "amp"):
        d.pop(name)
    import hashlib

    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    assert bench_mod.config_key(cfg).endswith(digest)  # the key that caches made before 'amp' existed
    assert bench_mod.config_key(cfg.replace(amp=False)) != bench_mod.config_key(cfg)
    with pytest.raises(ValueError, match="amp"):
        TrainConfig.from_dict({"amp": "yes"})


def test_cached_result_found_across_execution_only_fields(tmp_path, monkeypatch):
    """A result cached with another encoding batch / thread count (and before 'amp' existed) is reused."""
    from coophash.config import TrainConfig

    old = TrainConfig(eval_batch_size=512, threads=1, epochs=1)
    d = old.to_dict()
    d.pop("amp")  # made before the field existed
    (tmp_path / "results").mkdir()
    rec = {"key": "x", "config": d, "map@all": 0.5}
    import hashlib

    d_key = {k: v for k, v in d.items() if k not in ("out", "threads")}
    digest = hashlib.sha1(json.dumps(d_key, sort_keys=True).encode()).hexdigest()[:10]
    path = tmp_path / "results" / f"supervised-dpsh-32b-lf1-s0-{digest}.json"
    path.write_text(json.dumps(rec))
    assert bench_mod.find_cached(tmp_path, old) == path  # its own key
    now = TrainConfig(eval_batch_size=128, threads=2, epochs=1)
    assert bench_mod.config_key(now) != path.stem
    assert bench_mod.find_cached(tmp_path, now) == path
    assert bench_mod.find_cached(tmp_path, now.replace(lr=0.01)) is None
    assert bench_mod.find_cached(tmp_path, now.replace(amp=False)) is None
    assert bench_mod.find_cached(tmp_path, now.replace(device="cuda")) is None
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("must not train"))
    assert bench_mod.run_grid([now], tmp_path) == [rec]
