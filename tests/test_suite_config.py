"""Suite files: every validation error of the experiment settings, word for word.

The messages were recorded with the code before the restructure (issue 10), when the checks of all kinds
were one function; each kind now has its own check in ``_KIND_CHECKS``, and the messages must not change.
"""
from __future__ import annotations

import pytest

from coophash.suite import EXPERIMENTS, SuiteError, parse_suite
from coophash.suite.config import EXPERIMENT_DEFAULTS, _KIND_CHECKS

BASE = """name: t
methods:
  - {name: a, method: supervised, loss: dpsh}
  - {name: b, method: supervised, loss: csq}
experiments:
"""

ERRORS = [
    ('  main: {grids: []}',
     't.yaml: experiments.main.grids must be a non-empty list, found []'),
    ('  main: {grids: [7]}',
     't.yaml: experiments.main.grids[0] must be a mapping (bits, label_fractions, methods), found 7'),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0], colour: 1}]}',
     "t.yaml: experiments.main.grids[0]: unknown key(s) ['colour']; known: bits, label_fractions, methods, top"),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0], top: {n: 1}}]}',
     "t.yaml: experiments.main.grids[0].top: the first grid cannot rank by results; put 'top' on a later grid"),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0]}, {bits: [8], label_fractions: [1.0], top: {n: 0}}]}',
     't.yaml: experiments.main.grids[1].top.n must be a positive integer, found 0'),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0]}, {bits: [8], label_fractions: [1.0], top: {n: 1, family: 3}}]}',
     't.yaml: experiments.main.grids[1].top.family must be a method name (e.g. supervised), found 3'),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0]}, {bits: [8], label_fractions: [1.0], top: {n: 1, what: 3}}]}',
     "t.yaml: experiments.main.grids[1].top must be a mapping {n: <int>, family: <method>, bits: <int>}, found {'n': 1, 'what': 3}"),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0]}, {bits: [8], label_fractions: [1.0], top: {n: 1, bits: 16}}]}',
     't.yaml: experiments.main.grids[1].top.bits: no earlier grid has 16 bits'),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0]}, {bits: [8], label_fractions: [1.0], top: {n: 1, bits: -2}}]}',
     't.yaml: experiments.main.grids[1].top.bits must be a positive integer, found -2'),
    ('  main: {grids: [{label_fractions: [1.0]}]}',
     't.yaml: experiments.main.grids[0].bits must be a non-empty list, found None'),
    ('  main: {grids: [{bits: [8], label_fractions: []}]}',
     't.yaml: experiments.main.grids[0].label_fractions must be a non-empty list, found []'),
    ('  main: {grids: [{bits: [8.5], label_fractions: [1.0]}]}',
     't.yaml: experiments.main.grids[0].bits[0] must be a positive integer, found 8.5'),
    ('  main: {grids: [{bits: [8], label_fractions: [0]}]}',
     't.yaml: experiments.main.grids[0].label_fractions[0] must be a number in (0, 1], found 0'),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0], methods: []}]}',
     't.yaml: experiments.main.grids[0].methods must be a non-empty list of method names, found []'),
    ('  main: {grids: [{bits: [8], label_fractions: [1.0], methods: [a, zz]}]}',
     "t.yaml: experiments.main.grids[0].methods: 'zz' is not a method of this suite (a, b)"),
    ('  main: {}\n  scarcity: {bits: 0}',
     't.yaml: experiments.scarcity.bits must be a positive integer, found 0'),
    ('  main: {}\n  pr: {label_fraction: 2}',
     't.yaml: experiments.pr.label_fraction must be a number in (0, 1], found 2'),
    ('  unseen: {seen_classes: []}',
     't.yaml: experiments.unseen.seen_classes must be a non-empty list of class indices, found []'),
    ('  unseen: {seen_classes: [0, -1]}',
     't.yaml: experiments.unseen.seen_classes must be a non-empty list of class indices, found [0, -1]'),
    ('  unseen: {overrides: 3}',
     't.yaml: experiments.unseen.overrides must be a mapping of TrainConfig fields, found 3'),
    ('  cross_dataset: {dataset: 3}',
     't.yaml: experiments.cross_dataset.dataset must be a dataset name, found 3'),
    ('  cross_dataset: {dataset_args: []}',
     't.yaml: experiments.cross_dataset.dataset_args must be a mapping, found []'),
    ('  cross_dataset: {protocol_args: 1}',
     't.yaml: experiments.cross_dataset.protocol_args must be a mapping, found 1'),
    ('  unseen: {}\n  ood_detection: {against: []}',
     "t.yaml: experiments.ood_detection.against must be a non-empty list of 'unseen' and/or 'cross_dataset', found []"),
    ('  unseen: {}\n  ood_detection: {against: [moon]}',
     "t.yaml: experiments.ood_detection.against must be a non-empty list of 'unseen' and/or 'cross_dataset', found ['moon']"),
    ('  cost: {search: 3}',
     't.yaml: experiments.cost.search must be a mapping, found 3'),
    ('  cost: {search: {colour: 1}}',
     "t.yaml: experiments.cost.search: unknown key(s) ['colour']"),
    ('  cost: {search: {bits: []}}',
     't.yaml: experiments.cost.search.bits must be a non-empty list, found []'),
    ('  cost: {search: {bits: [32, 0]}}',
     't.yaml: experiments.cost.search.bits[1] must be a positive integer, found 0'),
    ('  cost: {search: {k: 0}}',
     't.yaml: experiments.cost.search.k must be a positive integer, found 0'),
    ('  cost: {search: {repeats: 1.5}}',
     't.yaml: experiments.cost.search.repeats must be a positive integer, found 1.5'),
    ('  cost: {bits: 7.5}',
     't.yaml: experiments.cost.bits must be a positive integer, found 7.5'),
    ('  retrievals: {n_queries: 0}',
     't.yaml: experiments.retrievals.n_queries must be a positive integer, found 0'),
    ('  retrievals: {k: -1}',
     't.yaml: experiments.retrievals.k must be a positive integer, found -1'),
    ('  retrievals: {seed: -1}',
     't.yaml: experiments.retrievals.seed must be null (the first seed) or a seed, found -1'),
    ('  retrievals: {sections: [main, moon]}',
     "t.yaml: experiments.retrievals.sections must be a list of 'main', 'unseen', 'cross_dataset', found ['main', 'moon']"),
    ('  retrievals: {methods: [zz]}',
     "t.yaml: experiments.retrievals.methods: 'zz' is not a method of this suite (a, b)"),
    ('  retrievals: {methods: []}',
     't.yaml: experiments.retrievals.methods must be a non-empty list of method names, found []'),
    ('  mian: {}',
     "t.yaml: experiments: unknown kind(s) ['mian']; known: ['main', 'scarcity', 'unseen', 'cross_dataset', 'ood_detection', 'pr', 'cost', 'retrievals', 'overfitting']"),
    ('  main: {colour: 1}',
     "t.yaml: experiments.main: unknown setting(s) ['colour']; known: ['grids']"),
]


@pytest.mark.parametrize("experiments, message", ERRORS)
def test_experiment_setting_errors_are_unchanged(experiments, message):
    with pytest.raises(SuiteError) as info:
        parse_suite(BASE + experiments + "\n", "t.yaml")
    assert str(info.value) == message


def test_experiment_kinds_keep_their_order_and_checks_are_registered_by_kind():
    assert EXPERIMENTS == ("main", "scarcity", "unseen", "cross_dataset", "ood_detection", "pr", "cost",
                           "retrievals", "overfitting")  # overfitting (issue 12) appended: the others keep order
    assert tuple(EXPERIMENT_DEFAULTS) == EXPERIMENTS
    assert set(_KIND_CHECKS) <= set(EXPERIMENTS)
    assert set(_KIND_CHECKS) == {"main", "unseen", "cross_dataset", "ood_detection", "cost", "retrievals",
                                 "overfitting"}


def test_valid_settings_pass_and_top_gets_its_default_bits():
    suite = parse_suite(BASE + "  main: {grids: [{bits: [16, 32], label_fractions: [1.0]}, "
                               "{bits: [8], label_fractions: [0.5], top: {n: 1}}]}\n"
                               "  cost: {search: {bits: [32]}}\n", "t.yaml")
    assert suite.experiments["main"]["grids"][1]["top"]["bits"] == 16
    assert suite.experiments["cost"]["search"]["n_database"] == 1_000_000  # defaults merged key by key
