"""Experiment suites: named YAML suites of experiments, run resumably, reported as Markdown, JSON, PNG and HTML.

``coophash bench SUITE`` (see ``docs/bench.md``) is :func:`run_suite` plus progress bars:

* :mod:`coophash.suite.config` -- suite files (:func:`load_suite`, validation errors naming file and field);
* :mod:`coophash.suite.experiments` -- the runs each experiment needs, the evaluations made on trained
  models (cross-dataset retrieval, OOD scores, encoding speed, sample retrievals), :func:`auroc`, search cost;
* :mod:`coophash.suite.runner` -- :func:`run_suite` (training through :func:`coophash.bench.run_grid`);
* :mod:`coophash.suite.report` / :mod:`coophash.suite.html` -- the report and the retrievals page.
"""
from coophash.suite.config import EXPERIMENTS, MethodSpec, Suite, SuiteError, load_suite, parse_suite, shipped_suites
from coophash.suite.experiments import Plan, PlannedRun, auroc, auroc_reference, plan_suite, search_cost
from coophash.suite.runner import SuiteRun, run_suite

__all__ = [
    "EXPERIMENTS",
    "MethodSpec",
    "Suite",
    "SuiteError",
    "load_suite",
    "parse_suite",
    "shipped_suites",
    "Plan",
    "PlannedRun",
    "plan_suite",
    "auroc",
    "auroc_reference",
    "search_cost",
    "SuiteRun",
    "run_suite",
]
