"""Experiment suites: named YAML suites of experiments, run resumably, reported as Markdown, JSON, PNG and HTML.

The top layer of the package beside :mod:`coophash.bench` (the cached grid it trains through): it uses the
library only through its public interfaces, and nothing in the library imports it.  ``coophash bench SUITE``
(see ``docs/bench.md``) is :func:`run_suite` plus progress bars:

* :mod:`coophash.suite.config` -- suite files (:func:`load_suite`, validation errors naming file and field);
* :mod:`coophash.suite.experiments` -- the runs each experiment needs (:func:`plan_suite`);
* :mod:`coophash.suite.evals` -- the evaluations made on trained models (:data:`EVALS`: cross-dataset
  retrieval, OOD scores with :func:`auroc`, encoding speed, sample retrievals);
* :mod:`coophash.suite.search` -- search cost of HammingIndex against FAISS;
* :mod:`coophash.suite.runner` -- :func:`run_suite` (training through :func:`coophash.bench.run_grid`);
* :mod:`coophash.suite.report` / :mod:`coophash.suite.html` -- the report and the retrievals page.
"""
from coophash.suite.config import EXPERIMENTS, MethodSpec, Suite, SuiteError, load_suite, parse_suite, shipped_suites
from coophash.suite.evals import EVALS, auroc, auroc_reference
from coophash.suite.experiments import Plan, PlannedRun, plan_suite
from coophash.suite.runner import SuiteRun, run_suite
from coophash.suite.search import search_cost

__all__ = [
    "EXPERIMENTS",
    "EVALS",
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
