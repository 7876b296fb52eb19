"""Tests for coophash.metrics against slow references written straight from the definitions."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from coophash.codes import pack_bits
from coophash.metrics import (
    STANDARD_R,
    compute_retrieval_stats,
    evaluate,
    map_at_r,
    mean_average_precision,
    precision_at_k,
    precision_recall_at_ks,
    precision_recall_curve,
    precision_within_radius,
    recall_at_k,
)

# --------------------------------------------------------------------------------- slow references


def ref_distances(q_bits: np.ndarray, d_bits: np.ndarray) -> list[list[int]]:
    """Hamming distances bit by bit from the unpacked 0/1 bits."""
    return [[sum(int(a) != int(b) for a, b in zip(qb, db)) for db in d_bits] for qb in q_bits]


def ref_relevance(q_lab: np.ndarray, d_lab: np.ndarray) -> list[list[bool]]:
    """Share at least one label."""
    return [[any(int(a) and int(b) for a, b in zip(ql, dl)) for dl in d_lab] for ql in q_lab]


def ref_order(dist_row: list[int]) -> list[int]:
    n = len(dist_row)
    return sorted(range(n), key=lambda j: (dist_row[j], j))


def ref_ap(dist_row, rel_row, R, normalizer) -> float:
    n = len(dist_row)
    cut = n if R is None else min(R, n)
    order = ref_order(dist_row)
    hits = 0
    total = 0.0
    for k in range(1, cut + 1):
        if rel_row[order[k - 1]]:
            hits += 1
            total += hits / k
    n_q = hits if normalizer == "field" else sum(rel_row)
    return total / n_q if n_q > 0 else 0.0


def ref_map(dist, rel, R, normalizer) -> float:
    return sum(ref_ap(d, r, R, normalizer) for d, r in zip(dist, rel)) / len(dist)


def ref_p_r_at_k(dist, rel, k) -> tuple[float, float]:
    ps, rs = [], []
    for d, r in zip(dist, rel):
        cut = min(k, len(d))
        order = ref_order(d)
        hits = sum(1 for j in order[:cut] if r[j])
        ps.append(hits / cut)
        rs.append(hits / sum(r) if sum(r) > 0 else 0.0)
    return sum(ps) / len(ps), sum(rs) / len(rs)


def ref_pr_curve(dist, rel, nbits, skip_empty=False):
    precision, recall = [], []
    for radius in range(nbits + 1):
        ps, rs = [], []
        for d, r in zip(dist, rel):
            retrieved = [j for j in range(len(d)) if d[j] <= radius]
            good = sum(1 for j in retrieved if r[j])
            if retrieved:
                ps.append(good / len(retrieved))
            elif not skip_empty:
                ps.append(0.0)
            rs.append(good / sum(r) if sum(r) > 0 else 0.0)
        precision.append(sum(ps) / len(ps) if ps else float("nan"))
        recall.append(sum(rs) / len(rs))
    return precision, recall


# ------------------------------------------------------------------------------------------ fixtures


def random_case(seed: int, nbits: int, n_q: int = 12, n_db: int = 200, n_classes: int = 5):
    """Few bits (many ties), sparse multi-labels, some queries and items with no label at all."""
    rng = np.random.default_rng(seed)
    q_bits = rng.integers(0, 2, (n_q, nbits), dtype=np.uint8)
    d_bits = rng.integers(0, 2, (n_db, nbits), dtype=np.uint8)
    # Make some database codes near the queries so that small radii retrieve something.
    near = rng.integers(0, n_q, n_db // 4)
    flips = (rng.random((n_db // 4, nbits)) < 0.1).astype(np.uint8)
    d_bits[: n_db // 4] = q_bits[near] ^ flips
    q_lab = (rng.random((n_q, n_classes)) < 0.25).astype(np.uint8)
    d_lab = (rng.random((n_db, n_classes)) < 0.25).astype(np.uint8)
    q_lab[0] = 0  # guaranteed query with no relevant item
    q_lab[1] = 0
    q_lab[1, n_classes - 1] = 1
    d_lab[:, n_classes - 1] = 0  # ... and another one, whose only class is absent from the database
    d_lab[5] = 0
    return q_bits, d_bits, q_lab, d_lab


CASES = [(seed, nbits) for seed in (0, 1, 2) for nbits in (8, 12)]


@pytest.fixture(scope="module", params=CASES, ids=[f"seed{s}-{b}bit" for s, b in CASES])
def case(request):
    seed, nbits = request.param
    q_bits, d_bits, q_lab, d_lab = random_case(seed, nbits)
    dist = ref_distances(q_bits, d_bits)
    rel = ref_relevance(q_lab, d_lab)
    return {
        "args": (pack_bits(q_bits), pack_bits(d_bits), q_lab, d_lab, nbits),
        "dist": dist,
        "rel": rel,
        "nbits": nbits,
        "n_db": d_bits.shape[0],
    }


def test_random_case_is_hard_enough(case):
    """The fixtures must contain ties, queries with no relevant item and both normalisers must differ."""
    dist, rel = case["dist"], case["rel"]
    assert any(len(set(row)) < len(row) for row in dist)
    assert any(sum(r) == 0 for r in rel)
    assert ref_map(dist, rel, 10, "field") != ref_map(dist, rel, 10, "strict")


# ------------------------------------------------------------------------------- reference checks

R_VALUES = [None, 1, 10, 50, 500]


@pytest.mark.parametrize("normalizer", ["field", "strict"])
@pytest.mark.parametrize("R", R_VALUES)
def test_map_matches_reference(case, R, normalizer):
    got = mean_average_precision(*case["args"], R=R, normalizer=normalizer)
    assert got == pytest.approx(ref_map(case["dist"], case["rel"], R, normalizer), abs=1e-12)


@pytest.mark.parametrize("normalizer", ["field", "strict"])
def test_per_query_ap_and_map_at_r(case, normalizer):
    stats = compute_retrieval_stats(*case["args"], cutoffs=R_VALUES)
    for R in R_VALUES:
        ref = [ref_ap(d, r, R, normalizer) for d, r in zip(case["dist"], case["rel"])]
        np.testing.assert_allclose(stats.average_precision(R, normalizer), ref, rtol=0, atol=1e-12)
    many = map_at_r(*case["args"], rs=R_VALUES, normalizer=normalizer)
    assert list(many) == ["map@all", "map@1", "map@10", "map@50", "map@500"]
    for R in R_VALUES:
        key = "map@all" if R is None else f"map@{R}"
        assert many[key] == pytest.approx(ref_map(case["dist"], case["rel"], R, normalizer), abs=1e-12)


def test_normalisers_coincide_at_all_and_clip(case):
    field = mean_average_precision(*case["args"], R=None, normalizer="field")
    strict = mean_average_precision(*case["args"], R="all", normalizer="strict")
    clipped = mean_average_precision(*case["args"], R=case["n_db"] + 1, normalizer="strict")
    assert field == pytest.approx(strict, abs=1e-12)
    assert clipped == field


@pytest.mark.parametrize("ks", [(1, 5, 10, 50, 200, 300)])
def test_precision_recall_at_k_matches_reference(case, ks):
    precision, recall = precision_recall_at_ks(*case["args"], ks=ks)
    for i, k in enumerate(ks):
        ref_p, ref_r = ref_p_r_at_k(case["dist"], case["rel"], k)
        assert precision[i] == pytest.approx(ref_p, abs=1e-12)
        assert recall[i] == pytest.approx(ref_r, abs=1e-12)
    assert precision_at_k(*case["args"], k=10) == pytest.approx(precision[2], abs=1e-15)
    assert recall_at_k(*case["args"], k=10) == pytest.approx(recall[2], abs=1e-15)


@pytest.mark.parametrize("skip_empty", [False, True])
def test_pr_curve_matches_reference(case, skip_empty):
    radii, precision, recall = precision_recall_curve(*case["args"], skip_empty=skip_empty)
    ref_p, ref_r = ref_pr_curve(case["dist"], case["rel"], case["nbits"], skip_empty)
    assert radii.tolist() == list(range(case["nbits"] + 1))
    np.testing.assert_allclose(precision, ref_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(recall, ref_r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("radius", [0, 2, 5])
def test_precision_within_radius_matches_reference(case, radius):
    ref_p, _ = ref_pr_curve(case["dist"], case["rel"], case["nbits"])
    assert precision_within_radius(*case["args"], radius=radius) == pytest.approx(ref_p[radius], abs=1e-12)
    ref_skip, _ = ref_pr_curve(case["dist"], case["rel"], case["nbits"], skip_empty=True)
    got_skip = precision_within_radius(*case["args"], radius=radius, skip_empty=True)
    assert got_skip == pytest.approx(ref_skip[radius], abs=1e-12, nan_ok=True)
    # A radius beyond nbits is clipped to nbits.
    assert precision_within_radius(*case["args"], radius=99) == pytest.approx(ref_p[-1], abs=1e-12)


def test_evaluate_matches_individual_functions(case):
    res = evaluate(*case["args"], R=STANDARD_R, topk=(10, 100), radius=2, normalizer="field")
    json.dumps(res, allow_nan=False)  # plain, JSON-serialisable values
    assert set(res) == {
        "map@all", "map@1000", "map@5000", "precision@10", "recall@10",
        "precision@100", "recall@100", "precision@r2", "pr_curve",
    }
    ref_all = ref_map(case["dist"], case["rel"], None, "field")
    # R = 1000 and 5000 exceed the 200-item database: clipped, hence equal to mAP@all.
    for key in ("map@all", "map@1000", "map@5000"):
        assert res[key] == pytest.approx(ref_all, abs=1e-12)
    ref_p, ref_r = ref_p_r_at_k(case["dist"], case["rel"], 100)
    assert res["precision@100"] == pytest.approx(ref_p, abs=1e-12)
    assert res["recall@100"] == pytest.approx(ref_r, abs=1e-12)
    curve_p, curve_r = ref_pr_curve(case["dist"], case["rel"], case["nbits"])
    assert res["precision@r2"] == pytest.approx(curve_p[2], abs=1e-12)
    assert res["pr_curve"]["radius"] == list(range(case["nbits"] + 1))
    np.testing.assert_allclose(res["pr_curve"]["precision"], curve_p, atol=1e-12)
    np.testing.assert_allclose(res["pr_curve"]["recall"], curve_r, atol=1e-12)
    assert all(type(v) is float for k, v in res.items() if k != "pr_curve")


def test_evaluate_strict_at_r(case):
    res = evaluate(*case["args"], R=10, topk=(), normalizer="strict")
    assert res["map@10"] == pytest.approx(ref_map(case["dist"], case["rel"], 10, "strict"), abs=1e-12)


# ------------------------------------------------------------------------------ hand-computed cases


def codes_at_distances(distances, nbits=8):
    """Query code 0 and database codes whose Hamming distance to it is given."""
    d_bits = np.zeros((len(distances), nbits), dtype=np.uint8)
    for j, d in enumerate(distances):
        d_bits[j, :d] = 1
    return pack_bits(np.zeros((1, nbits), dtype=np.uint8)), pack_bits(d_bits)


def test_three_item_list():
    # Ranking: relevant, irrelevant, relevant  ->  AP = (1/1 + 2/3) / 2.
    q, d = codes_at_distances([0, 1, 2])
    ql, dl = np.array([0]), np.array([0, 1, 0])
    assert mean_average_precision(q, d, ql, dl, 8) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert mean_average_precision(q, d, ql, dl, 8, R=2, normalizer="field") == pytest.approx(1.0)
    assert mean_average_precision(q, d, ql, dl, 8, R=2, normalizer="strict") == pytest.approx(0.5)
    assert mean_average_precision(q, d, ql, dl, 8, R=1, normalizer="strict") == pytest.approx(0.5)
    assert precision_at_k(q, d, ql, dl, 8, k=2) == pytest.approx(0.5)
    assert recall_at_k(q, d, ql, dl, 8, k=2) == pytest.approx(0.5)
    assert recall_at_k(q, d, ql, dl, 8, k=3) == pytest.approx(1.0)
    radii, p, r = precision_recall_curve(q, d, ql, dl, 8)
    np.testing.assert_allclose(p[:4], [1.0, 0.5, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r[:4], [0.5, 0.5, 1.0, 1.0])


def test_ties_broken_by_database_index():
    # All three items tie at distance 1; index order gives irrelevant, relevant, relevant.
    q, d = codes_at_distances([1, 1, 1])
    ql, dl = np.array([0]), np.array([1, 0, 0])
    assert mean_average_precision(q, d, ql, dl, 8) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert precision_at_k(q, d, ql, dl, 8, k=1) == 0.0
    assert precision_at_k(q, d, ql, dl, 8, k=2) == 0.5


def test_perfect_ranking_gives_one():
    q, d = codes_at_distances([0, 0, 1, 5, 6, 7, 8])
    ql, dl = np.array([3]), np.array([3, 3, 3, 1, 2, 1, 2])
    for R in (None, 1, 3, 100):
        assert mean_average_precision(q, d, ql, dl, 8, R=R, normalizer="field") == pytest.approx(1.0)
    for R in (None, 3, 100):
        assert mean_average_precision(q, d, ql, dl, 8, R=R, normalizer="strict") == pytest.approx(1.0)
    # Strict divides by all 3 relevant items even when R = 1 holds only one of them.
    assert mean_average_precision(q, d, ql, dl, 8, R=1, normalizer="strict") == pytest.approx(1 / 3)
    assert precision_at_k(q, d, ql, dl, 8, k=3) == 1.0
    assert recall_at_k(q, d, ql, dl, 8, k=3) == 1.0


def test_query_without_relevant_items_counts_as_zero():
    q1, d = codes_at_distances([0, 3])
    q = np.concatenate([q1, q1])
    ql = np.array([[1, 0, 0], [0, 0, 1]])  # second query's class is absent from the database
    dl = np.array([[1, 0, 0], [0, 1, 0]])
    assert mean_average_precision(q, d, ql, dl, 8) == pytest.approx(0.5)
    assert mean_average_precision(q, d, ql, dl, 8, normalizer="strict") == pytest.approx(0.5)
    assert recall_at_k(q, d, ql, dl, 8, k=2) == pytest.approx(0.5)


def test_empty_hamming_ball_precision_convention():
    q, d = codes_at_distances([3, 4])
    q2 = pack_bits(np.array([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=np.uint8))  # distance 0 and 1
    qs = np.concatenate([q, q2])
    ql, dl = np.array([0, 0]), np.array([0, 1])
    # Query 0 retrieves nothing within radius 2 -> precision 0; query 1 retrieves items 0 (relevant, at
    # distance 0) and 1 (irrelevant, at distance 1) -> 1/2.
    assert precision_within_radius(qs, d, ql, dl, 8, radius=2) == pytest.approx(0.25)
    assert precision_within_radius(qs, d, ql, dl, 8, radius=2, skip_empty=True) == pytest.approx(0.5)
    _, p, _ = precision_recall_curve(qs[:1], d, ql[:1], dl, 8, skip_empty=True)
    assert math.isnan(p[0]) and p[3] == 1.0


def test_multi_label_relevance():
    q, d = codes_at_distances([0, 1, 2, 3])
    ql = np.array([[1, 1, 0, 0]])
    dl = np.array([[0, 0, 1, 1], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # relevance in rank order: 0, 1, 1, 0 -> AP = (1/2 + 2/3) / 2
    assert mean_average_precision(q, d, ql, dl, 8) == pytest.approx((1 / 2 + 2 / 3) / 2)


# ------------------------------------------------------------------------------- chunking, inputs


def test_chunking_is_exact(case):
    cutoffs = [None, 1, 7, 50, 500]
    ref = compute_retrieval_stats(*case["args"], cutoffs=cutoffs, chunk_size=10**6)
    assert ref.hits.shape == (12, 4)  # 200 and 500 both clip to the database size
    for kw in ({"chunk_size": 1}, {"chunk_size": 5}, {"memory_budget": 1}, {}):
        got = compute_retrieval_stats(*case["args"], cutoffs=cutoffs, **kw)
        for field in ("cutoffs", "level_counts", "level_relevant", "hits", "ap_sum"):
            assert np.array_equal(getattr(got, field), getattr(ref, field)), (kw, field)


def test_large_case_chunked_equals_single_chunk():
    rng = np.random.default_rng(7)
    nbits = 32
    q = pack_bits(rng.integers(0, 2, (40, nbits), dtype=np.uint8))
    d = pack_bits(rng.integers(0, 2, (3000, nbits), dtype=np.uint8))
    ql = rng.integers(0, 2, (40, 70))
    dl = rng.integers(0, 2, (3000, 70)) * (rng.random((3000, 70)) < 0.05)
    a = evaluate(q, d, ql, dl, nbits, R=(None, 1000), topk=(10, 100), chunk_size=3)
    b = evaluate(q, d, ql, dl, nbits, R=(None, 1000), topk=(10, 100), chunk_size=40)
    assert a == b
    # 70 label columns use two 64-bit label words: compare with a dense matmul relevance.
    rel = (ql @ dl.T) > 0
    from coophash.codes import hamming_distance

    dist = hamming_distance(q, d)
    order = np.argsort(dist, axis=1, kind="stable")
    ranked = np.take_along_axis(rel, order, axis=1)
    hits = np.cumsum(ranked, axis=1)
    ks = np.arange(1, d.shape[0] + 1)
    ap = np.where(hits[:, -1] > 0, (ranked * hits / ks).sum(axis=1) / np.maximum(hits[:, -1], 1), 0.0)
    assert a["map@all"] == pytest.approx(ap.mean(), abs=1e-12)


def test_integer_class_labels_equal_one_hot(case):
    rng = np.random.default_rng(3)
    q_codes, d_codes, _, _, nbits = case["args"]
    qc = rng.integers(0, 6, q_codes.shape[0])
    dc = rng.integers(0, 6, d_codes.shape[0])
    eye = np.eye(6, dtype=np.uint8)
    want = evaluate(q_codes, d_codes, eye[qc], eye[dc], nbits, R=(None, 10))
    assert evaluate(q_codes, d_codes, qc, dc, nbits, R=(None, 10)) == want
    assert evaluate(q_codes, d_codes, qc, eye[dc], nbits, R=(None, 10)) == want
    assert evaluate(q_codes, d_codes, eye[qc], dc, nbits, R=(None, 10)) == want
    ref = ref_map(case["dist"], ref_relevance(eye[qc], eye[dc]), 10, "field")
    assert want["map@10"] == pytest.approx(ref, abs=1e-12)


def test_torch_and_bool_inputs(case):
    q, d, ql, dl, nbits = case["args"]
    want = evaluate(q, d, ql, dl, nbits)
    got = evaluate(
        torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(ql.astype(bool)),
        torch.from_numpy(dl.astype(np.float32)), nbits,
    )
    assert got == want


# ----------------------------------------------------------------------------------------- errors


def _tiny():
    rng = np.random.default_rng(0)
    return (
        pack_bits(rng.integers(0, 2, (4, 12), dtype=np.uint8)),
        pack_bits(rng.integers(0, 2, (6, 12), dtype=np.uint8)),
        rng.integers(0, 2, (4, 3)),
        rng.integers(0, 2, (6, 3)),
    )


def test_errors_name_the_argument():
    q, d, ql, dl = _tiny()
    with pytest.raises(ValueError, match="query_labels has 3 rows but query_codes has 4"):
        evaluate(q, d, ql[:3], dl, 12)
    with pytest.raises(ValueError, match="db_labels has 5 rows but db_codes has 6"):
        evaluate(q, d, ql, dl[:5], 12)
    with pytest.raises(ValueError, match="query_labels has 3 label columns but db_labels has 4"):
        evaluate(q, d, ql, np.concatenate([dl, dl[:, :1]], axis=1), 12)
    with pytest.raises(ValueError, match="query_codes must have shape"):
        evaluate(q, d, ql, dl, 24)
    with pytest.raises(ValueError, match="db_codes must have shape"):
        evaluate(q, np.zeros((6, 3), dtype=np.uint8), ql, dl, 12)
    with pytest.raises(TypeError, match="db_codes must be packed uint8"):
        evaluate(q, d.astype(np.int32), ql, dl, 12)
    with pytest.raises(ValueError, match="query_codes has non-zero padding bits"):
        evaluate(q | 0xF0, d, ql, dl, 12)
    with pytest.raises(ValueError, match="db_labels must be multi-hot"):
        evaluate(q, d, ql, dl * 2, 12)
    with pytest.raises(ValueError, match="db_labels has class id 3"):
        evaluate(q, d, ql, np.array([0, 1, 2, 3, 0, 1]), 12)
    with pytest.raises(ValueError, match="normalizer"):
        evaluate(q, d, ql, dl, 12, normalizer="trec")
    with pytest.raises(ValueError, match="R must be >= 1"):
        mean_average_precision(q, d, ql, dl, 12, R=0)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        precision_within_radius(q, d, ql, dl, 12, radius=-1)
    with pytest.raises(ValueError, match="db_codes is empty"):
        evaluate(q, d[:0], ql, dl[:0], 12)


def test_stats_reject_uncomputed_cutoff():
    stats = compute_retrieval_stats(*_tiny(), 12, cutoffs=[2])
    with pytest.raises(ValueError, match="not among the cutoffs"):
        stats.average_precision(3)


# -------------------------------------------------------------------------------- torchmetrics check


def _torchmetrics_inputs(case):
    """Scores that order the database exactly like our ranking, all > 0 (torchmetrics masks scores <= 0)."""
    dist = np.array(case["dist"], dtype=np.float64)
    n_q, n = dist.shape
    j = np.arange(n, dtype=np.float64)
    scores = (case["nbits"] + 1 - dist) - (j + 1) / (n + 2)
    assert scores.min() > 0
    indexes = np.repeat(np.arange(n_q), n)
    target = np.array(case["rel"], dtype=bool)
    return (
        torch.from_numpy(scores.ravel()),
        torch.from_numpy(target.ravel()),
        torch.from_numpy(indexes),
    )


def test_map_all_matches_torchmetrics(case):
    tm = pytest.importorskip("torchmetrics")
    preds, target, indexes = _torchmetrics_inputs(case)
    # torchmetrics: AP normalised by all relevant items, empty queries -> 0 ("neg"): our mAP@all.
    ref = tm.retrieval.RetrievalMAP(empty_target_action="neg")(preds, target, indexes=indexes).item()
    for normalizer in ("field", "strict"):
        assert mean_average_precision(*case["args"], R=None, normalizer=normalizer) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("R", [1, 10, 50])
def test_map_top_k_matches_torchmetrics_field_normaliser(case, R):
    # torchmetrics' top_k AP averages precision over the relevant items *within* the top k, i.e. it divides
    # by the relevant count in the top k: our "field" normaliser, not "strict".
    tm = pytest.importorskip("torchmetrics")
    preds, target, indexes = _torchmetrics_inputs(case)
    ref = tm.retrieval.RetrievalMAP(empty_target_action="neg", top_k=R)(preds, target, indexes=indexes).item()
    assert mean_average_precision(*case["args"], R=R, normalizer="field") == pytest.approx(ref, abs=1e-6)
    if R > 1:
        strict = mean_average_precision(*case["args"], R=R, normalizer="strict")
        assert strict != pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_precision_recall_at_k_match_torchmetrics(case, k):
    tm = pytest.importorskip("torchmetrics")
    preds, target, indexes = _torchmetrics_inputs(case)
    ref_p = tm.retrieval.RetrievalPrecision(empty_target_action="neg", top_k=k)(preds, target, indexes=indexes)
    ref_r = tm.retrieval.RetrievalRecall(empty_target_action="neg", top_k=k)(preds, target, indexes=indexes)
    # torchmetrics gives precision 0 to queries without relevant items; so do we (no hit can be relevant).
    assert precision_at_k(*case["args"], k=k) == pytest.approx(ref_p.item(), abs=1e-6)
    assert recall_at_k(*case["args"], k=k) == pytest.approx(ref_r.item(), abs=1e-6)
