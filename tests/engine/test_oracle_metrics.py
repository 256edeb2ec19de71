"""embeval.evaluate against an independent brute-force reference (tests/oracle.py).

The reference reads DESIGN.md section 3 literally (float64, full score matrix,
every row sorted); the engine streams blocks and never sorts a row. Inputs are
built to break naive engines: heavy ties (small-integer embeddings, duplicated
rows, queries equal to gallery items), unknown labels (-1), queries without
positives and one-item galleries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, precision_recall_curve

import embeval

try:
    from helpers.oracle import Case, assert_matches, gauss_cases, int_cases, min_gap, reference
except ImportError:  # tests/ imported as a package
    from tests.oracle import Case, assert_matches, gauss_cases, int_cases, min_gap, reference

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(case: Case, dtype=torch.float32, **kw):
    q, g = case.sets(dtype)
    kw.setdefault("device", "cpu")
    return embeval.evaluate(q, g, **kw)


@st.composite
def options(draw, case_strategy):
    case = draw(case_strategy)
    g = len(case.gl)
    ks = tuple(sorted(draw(st.lists(st.integers(1, g), min_size=1, max_size=3, unique=True))))
    knn_k = draw(st.none() | st.integers(1, g))
    return case, ks, knn_k


# ---------------------------------------------------------------------------
# 0. The reference itself, on hand-computed examples (no engine involved)
# ---------------------------------------------------------------------------

# One query (label 0) against six gallery items, inner product in one dimension:
# scores 3, 3, 1, 2, 0, 1 with labels 0, 1, 0, 1, 1, 0. Positives score 3, 1, 1.
HAND = Case(qe=np.array([[1.0]]), ql=np.array([0]),
            ge=np.array([[3.0], [3.0], [1.0], [2.0], [0.0], [1.0]]),
            gl=np.array([0, 1, 0, 1, 1, 0]))
# positive at 3: a negative ties it -> N=2, TP=1; positives at 1: N=5, TP=3
HAND_AP = (1 / 2 + 3 / 5 + 3 / 5) / 3  # 17/30; optimistic ties would give (1 + 3/4 + 3/4)/3


def test_reference_hand_example():
    ref = HAND.ref(metric="inner", ks=(1, 2, 6), knn_k=3, pr=True)
    pq = ref.per_query
    assert pq["n_pos"].tolist() == [3]
    assert pq["ap"][0] == pytest.approx(HAND_AP, abs=1e-15)
    assert pq["first_rank"].tolist() == [2.0]  # the tied negative goes first
    assert pq["last_rank"].tolist() == [5.0]  # 3, 3, 2, 1, 1 score >= 1
    assert pq["hard_pos"].tolist() == [1.0] and pq["hard_neg"].tolist() == [3.0]
    assert pq["knn_pred"].tolist() == [1]  # items 0 (l0), 1 (l1), 3 (l1): label 1 wins 2-1
    m = ref.metrics
    assert (m["rank1"], m["rank2"], m["top1_accuracy"], m["accuracy"]) == (0.0, 1.0, 0.0, 0.0)
    assert m["mINP"] == pytest.approx(3 / 5)
    p, r, t, off = ref.pr_curves
    assert off.tolist() == [0, 2]
    assert t.tolist() == [3.0, 1.0]
    assert p.tolist() == pytest.approx([1 / 2, 3 / 5]) and r.tolist() == pytest.approx([1 / 3, 1])
    # F1 = 2TP/(N+P): 2/5 at t=3, 6/8 at t=1
    assert (m["maxF1"], m["P@maxF1"], m["R@maxF1"], m["T@maxF1"]) == pytest.approx(
        (0.75, 0.6, 1.0, 1.0))
    # kNN with k=2: one vote each, label 0's member ranks first (index 0 before index 1)
    assert HAND.ref(metric="inner", ks=(1,), knn_k=2).per_query["knn_pred"].tolist() == [0]
    # sanity: equals scikit-learn
    assert average_precision_score(HAND.gl == 0, HAND.ge[:, 0]) == pytest.approx(HAND_AP)


@pytest.mark.slow
@settings(max_examples=examples(150), **SETTINGS)
@given(case=int_cases(cameras=True), metric=st.sampled_from(["inner", "sq_euclid"]),
       cam=st.booleans())
def test_reference_agrees_with_sklearn(case, metric, cam):
    """The reference's AP and PR points equal scikit-learn's on every row (ties included)."""
    ref = case.ref(metric=metric, ks=(1,), pr=True, exclude_same_camera=cam)
    p, r, t, off = ref.pr_curves
    for i in range(len(case.ql)):
        keep = ref.keep[i]
        y, s = ref.pos[i][keep], ref.scores[i][keep]
        if not y.any():
            assert math.isnan(ref.per_query["ap"][i])
            continue
        assert ref.per_query["ap"][i] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        sp, sr, st_ = precision_recall_curve(y, s)
        on_pos = np.isin(st_, s[y])
        want = np.stack([sp[:-1][on_pos], sr[:-1][on_pos], st_[on_pos]])[:, ::-1]
        got = np.stack([p[off[i]:off[i + 1]], r[off[i]:off[i + 1]], t[off[i]:off[i + 1]]])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# 1. Exactness: heavy ties, every metric and every per-query field
# ---------------------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=examples(250), **SETTINGS)
@given(opt=options(int_cases()), metric=st.sampled_from(["inner", "sq_euclid"]))
def test_exact_against_reference_with_ties(opt, metric):
    case, ks, knn_k = opt
    res = run(case, metric=metric, ks=ks, knn_k=knn_k, pr=True)
    assert_matches(res, case.ref(metric=metric, ks=ks, knn_k=knn_k, pr=True), exact=True)


@pytest.mark.slow
@settings(max_examples=examples(60), **SETTINGS)
@given(opt=options(int_cases(max_q=4, max_g=6, max_d=3, n_labels=2)),
       metric=st.sampled_from(["inner", "sq_euclid"]), backend=st.sampled_from(["numba", "torch"]))
def test_exact_against_reference_tiny_dense_ties(opt, metric, backend):
    """Very few distinct values: almost every score ties with another (both engines)."""
    case, ks, knn_k = opt
    res = run(case, metric=metric, ks=ks, knn_k=knn_k, pr=True, backend=backend, block_size=2)
    assert_matches(res, case.ref(metric=metric, ks=ks, knn_k=knn_k, pr=True), exact=True)


@pytest.mark.slow
@settings(max_examples=examples(120), **SETTINGS)
@given(opt=options(gauss_cases()), metric=st.sampled_from(["cosine", "euclid"]))
def test_float_metrics_against_reference(opt, metric):
    case, ks, knn_k = opt
    # cosine in 1-D is the sign: exact ties in real arithmetic that a float32 formula of
    # (q.g)/(|q||g|) does not keep; exact ties are tested on integer data above
    assume(metric != "cosine" or case.qe.shape[1] > 1)
    ref = case.ref(metric=metric, ks=ks, knn_k=knn_k, pr=True)
    tol = 1e-5
    if metric == "euclid":  # -sqrt(|q|^2 + |g|^2 - 2 q.g): cancellation, then sqrt near 0
        big = float(max(np.abs(case.qe).sum(1).max(), np.abs(case.ge).sum(1).max())) ** 2
        tol += math.sqrt(16 * 2.0 ** -24 * big)
    assume(min_gap(ref.scores) > max(1e-4, 2 * tol))  # float32 vs float64 must not reorder
    res = run(case, metric=metric, ks=ks, knn_k=knn_k, pr=True)
    assert_matches(res, ref, exact=False, score_tol=tol)


@pytest.mark.parametrize("metric", ["inner", "cosine", "euclid", "sq_euclid"])
def test_hand_example_every_metric(metric):
    """The hand example rebuilt so that every metric gives the same order: same AP etc."""
    case = HAND
    if metric in ("euclid", "sq_euclid"):  # a far query keeps the order of the inner product
        case = Case(qe=np.array([[10.0]]), ql=HAND.ql, ge=HAND.ge, gl=HAND.gl)
    if metric == "cosine":  # directions: cos = 1 (l0), 1 (l1), .6 (l0), .8 (l1), 0 (l1), .6 (l0)
        case = Case(qe=np.array([[1.0, 0.0]]), ql=np.array([0]),
                    ge=np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 4.0], [4.0, 3.0], [0.0, 1.0],
                                 [6.0, 8.0]]),
                    gl=HAND.gl)
    res = run(case, metric=metric, ks=(1, 2), knn_k=3, pr=True)
    ref = case.ref(metric=metric, ks=(1, 2), knn_k=3, pr=True)
    assert_matches(res, ref, exact=metric in ("inner", "sq_euclid"))
    assert float(res.per_query["ap"][0]) == pytest.approx(HAND_AP, abs=1e-12)
    assert float(res.metrics["mAP"]) == pytest.approx(HAND_AP, abs=1e-12)
    assert res.per_query["first_rank"].tolist() == [2.0]
    assert res.per_query["last_rank"].tolist() == [5.0]
    assert res.per_query["knn_pred"].tolist() == [1]


def test_per_query_dtypes_and_shapes():
    res = run(HAND, metric="inner", ks=(1,), knn_k=2, pr=True)
    pq = res.per_query
    want = {"n_pos": torch.int64, "first_rank": torch.float64, "last_rank": torch.float64,
            "ap": torch.float64, "hard_pos": torch.float32, "hard_neg": torch.float32,
            "knn_pred": torch.int64}
    for key, dtype in want.items():
        assert pq[key].dtype == dtype, key
        assert pq[key].shape == (1,), key
    p, r, t, off = res.pr_curves
    assert (p.dtype, r.dtype, t.dtype, off.dtype) == (torch.float64, torch.float64,
                                                     torch.float32, torch.int64)
    assert res.n_valid == 1


# ---------------------------------------------------------------------------
# 2. scikit-learn: AP per row, PR points, max F1
# ---------------------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=examples(150), **SETTINGS)
@given(case=int_cases(), metric=st.sampled_from(["inner", "sq_euclid"]))
def test_ap_and_pr_against_sklearn(case, metric):
    res = run(case, metric=metric, ks=(1,), pr=True)
    ref = case.ref(metric=metric, ks=(1,))  # only for its score matrix and positive mask
    ap = res.per_query["ap"].numpy()
    p, r, t, off = (x.numpy() for x in res.pr_curves)
    f1s = []
    for i in range(len(case.ql)):
        y, s = ref.pos[i], ref.scores[i]
        if not y.any():
            assert math.isnan(ap[i]) and off[i + 1] == off[i]
            continue
        assert ap[i] == pytest.approx(average_precision_score(y, s), abs=1e-12), i
        sp, sr, st_ = precision_recall_curve(y, s)
        on_pos = np.isin(st_, s[y])
        want = np.stack([sp[:-1][on_pos], sr[:-1][on_pos], st_[on_pos]])[:, ::-1]
        got = np.stack([p[off[i]:off[i + 1]], r[off[i]:off[i + 1]],
                        t[off[i]:off[i + 1]].astype(np.float64)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"query {i}")
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(sp + sr > 0, 2 * sp * sr / (sp + sr), 0.0)
        f1s.append(f1.max())
    if f1s:
        assert res.metrics["maxF1"] == pytest.approx(np.mean(f1s), abs=1e-9)
    else:
        assert math.isnan(res.metrics["maxF1"])


def test_max_f1_ties_highest_threshold_wins():
    """Two PR points with the same F1 (2/3): the one at the higher threshold is reported.

    Query label 0; scores (inner, 1-D) 3 (pos), 2 (neg), 1 (neg), 0 (pos).
    t=3: TP=1, N=1 -> P=1, R=1/2, F1=2/3; t=0: TP=2, N=4 -> P=1/2, R=1, F1=2/3.
    """
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]), ge=np.array([[3.0], [2.0], [1.0], [0.0]]),
                gl=np.array([0, 1, 1, 0]))
    res = run(case, metric="inner", ks=(1,), pr=True)
    m = res.metrics
    assert (m["maxF1"], m["P@maxF1"], m["R@maxF1"], m["T@maxF1"]) == pytest.approx(
        (2 / 3, 1.0, 0.5, 3.0), abs=1e-12)


def test_max_f1_equal_rationals_highest_threshold_wins():
    """F1 = 2TP/(N+P) ties exactly as rationals even when 2pr/(p+r) rounds differently.

    Query label 0 (inner, 1-D): six negatives at 10, positive 9, negative 8, positive 7,
    five negatives at 6, positive 5. P = 3. Points: t=9: TP 1, N 7 (F1 2/10); t=7: TP 2,
    N 9 (F1 4/12 = 1/3); t=5: TP 3, N 15 (F1 6/18 = 1/3). The t=7 point must win.
    """
    ge = np.array([10.0] * 6 + [9.0, 8.0, 7.0] + [6.0] * 5 + [5.0])[:, None]
    gl = np.array([1] * 6 + [0, 1, 0] + [1] * 5 + [0])
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]), ge=ge, gl=gl)
    res = run(case, metric="inner", ks=(1,), pr=True)
    m = res.metrics
    assert (m["maxF1"], m["P@maxF1"], m["R@maxF1"], m["T@maxF1"]) == pytest.approx(
        (1 / 3, 2 / 9, 2 / 3, 7.0), abs=1e-12)


@pytest.mark.slow
@settings(max_examples=examples(150), **SETTINGS)
@given(scores=st.lists(st.integers(0, 12), min_size=1, max_size=60),
       data=st.data())
def test_pr_and_max_f1_long_one_dimensional_rows(scores, data):
    """Longer rows (up to 60 items, 1-D inner products) reach count patterns where equal
    F1 values are different floats when computed as 2pr/(p+r)."""
    n = len(scores)
    labels = data.draw(st.lists(st.integers(-1, 2), min_size=n, max_size=n))
    case = Case(qe=np.array([[1.0], [-1.0], [1.0]]), ql=np.array([0, 1, 2]),
                ge=np.array(scores, dtype=np.float64)[:, None], gl=np.array(labels))
    res = run(case, metric="inner", ks=(1,), pr=True)
    assert_matches(res, case.ref(metric="inner", ks=(1,), pr=True), exact=True)


# ---------------------------------------------------------------------------
# 3. Invariants: blocks, permutations, input dtypes
# ---------------------------------------------------------------------------

def _assert_identical(a, b, *, skip=()):
    ma = {k: v for k, v in a.metrics.items() if k not in skip}
    mb = {k: v for k, v in b.metrics.items() if k not in skip}
    assert ma.keys() == mb.keys()
    for k in ma:
        assert ma[k] == mb[k] or (math.isnan(ma[k]) and math.isnan(mb[k])), (k, ma[k], mb[k])
    assert a.n_valid == b.n_valid
    assert a.per_query.keys() == b.per_query.keys()
    for k in a.per_query:
        if k in skip:
            continue
        x, y = a.per_query[k], b.per_query[k]
        assert x.dtype == y.dtype and torch.equal(x.nan_to_num(-12345.0), y.nan_to_num(-12345.0)), \
            (k, x, y)


@pytest.mark.slow
@settings(max_examples=examples(25), **SETTINGS)
@given(case=gauss_cases(cameras=True, max_q=40, max_g=90, max_d=24, min_q=2, min_g=2),
       metric=st.sampled_from(["inner", "cosine", "euclid", "sq_euclid"]),
       cam=st.booleans())
def test_block_size_does_not_change_anything(case, metric, cam):
    kw = dict(metric=metric, ks=(1, 2), knn_k=min(3, len(case.gl)), pr=True,
              exclude_same_camera=cam)
    base = run(case, block_size=None, **kw)
    for bs in (1, 7, 64):
        other = run(case, block_size=bs, **kw)
        _assert_identical(base, other)
        for x, y in zip(base.pr_curves, other.pr_curves):
            assert torch.equal(x, y)


@pytest.mark.slow
@settings(max_examples=examples(25), **SETTINGS)
@given(case=int_cases(max_q=10, max_g=30), metric=st.sampled_from(["inner", "sq_euclid"]))
def test_block_size_with_ties(case, metric):
    kw = dict(metric=metric, ks=(1,), knn_k=min(4, len(case.gl)), pr=True)
    base = run(case, block_size=None, **kw)
    for bs in (1, 7, 64):
        _assert_identical(base, run(case, block_size=bs, **kw))


@pytest.mark.slow
@settings(max_examples=examples(60), **SETTINGS)
@given(case=int_cases(), metric=st.sampled_from(["inner", "sq_euclid"]), data=st.data())
def test_gallery_permutation_with_ties(case, metric, data):
    """Permuting gallery rows changes nothing but kNN tie-breaks (by gallery index)."""
    perm = np.array(data.draw(st.permutations(range(len(case.gl)))), dtype=np.int64)
    shuffled = Case(case.qe, case.ql, case.ge[perm], case.gl[perm])
    kw = dict(metric=metric, ks=(1,), knn_k=1, pr=True)
    _assert_identical(run(case, **kw), run(shuffled, **kw), skip=("knn_pred", "knn_accuracy"))


@pytest.mark.slow
@settings(max_examples=examples(40), **SETTINGS)
@given(case=gauss_cases(max_q=12, max_g=30, max_d=16),
       metric=st.sampled_from(["inner", "cosine", "euclid", "sq_euclid"]), data=st.data())
def test_gallery_permutation_without_ties(case, metric, data):
    # cosine in one dimension maps every item to +-1: all ties, covered by the test above
    assume(not (metric == "cosine" and case.ge.shape[1] == 1))
    perm = np.array(data.draw(st.permutations(range(len(case.gl)))), dtype=np.int64)
    shuffled = Case(case.qe, case.ql, case.ge[perm], case.gl[perm])
    k = data.draw(st.integers(1, len(case.gl)))
    kw = dict(metric=metric, ks=(1,), knn_k=k, pr=True)
    a, b = run(case, **kw), run(shuffled, **kw)
    _assert_identical(a, b)  # kNN included: no ties in gaussian data


@pytest.mark.slow
@settings(max_examples=examples(40), **SETTINGS)
@given(case=int_cases(), metric=st.sampled_from(["inner", "sq_euclid"]), data=st.data())
def test_query_permutation_permutes_per_query(case, metric, data):
    perm = np.array(data.draw(st.permutations(range(len(case.ql)))), dtype=np.int64)
    shuffled = Case(case.qe[perm], case.ql[perm], case.ge, case.gl)
    kw = dict(metric=metric, ks=(1,), knn_k=1, pr=True)
    a, b = run(case, **kw), run(shuffled, **kw)
    assert a.n_valid == b.n_valid
    for k, v in a.metrics.items():
        assert b.metrics[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k
    tperm = torch.from_numpy(perm)
    for k in a.per_query:
        x, y = a.per_query[k][tperm], b.per_query[k]
        assert torch.equal(x.nan_to_num(-12345.0), y.nan_to_num(-12345.0)), k
    # PR curves: query i's segment moves with it
    pa, ra, ta, oa = a.pr_curves
    pb, rb, tb, ob = b.pr_curves
    for new, old in enumerate(perm):
        sa, sb = slice(oa[old], oa[old + 1]), slice(ob[new], ob[new + 1])
        assert torch.equal(pa[sa], pb[sb]) and torch.equal(ta[sa], tb[sb])


@pytest.mark.slow
@settings(max_examples=examples(60), **SETTINGS)
@given(opt=options(int_cases()), metric=st.sampled_from(["inner", "sq_euclid"]),
       dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_inputs_small_integers_are_exact(opt, metric, dtype):
    case, ks, knn_k = opt
    res = run(case, dtype=dtype, metric=metric, ks=ks, knn_k=knn_k, pr=True)
    assert_matches(res, case.ref(metric=metric, ks=ks, knn_k=knn_k, pr=True), exact=True)


@pytest.mark.slow
@settings(max_examples=examples(40), **SETTINGS)
@given(case=gauss_cases(), metric=st.sampled_from(["inner", "cosine", "euclid", "sq_euclid"]),
       dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_inputs_equal_the_upcast_values(case, metric, dtype):
    """fp16/bf16 embeddings are evaluated as the float32 values they hold."""
    assume(metric != "cosine" or case.qe.shape[1] > 1)  # 1-D cosine: see above
    q, g = case.sets(dtype)
    upcast = Case(q.embeddings.double().numpy(), case.ql, g.embeddings.double().numpy(), case.gl)
    # the reference on the values the half tensors really hold
    ref = upcast.ref(metric=metric, ks=(1,), knn_k=1, pr=True)
    assume(min_gap(ref.scores) > 1e-4)
    res = embeval.evaluate(q, g, metric=metric, ks=(1,), knn_k=1, pr=True, device="cpu")
    assert_matches(res, ref, exact=False, score_tol=1e-5)
    _assert_identical(res, run(upcast, dtype=torch.float32, metric=metric, ks=(1,), knn_k=1,
                               pr=True))


# ---------------------------------------------------------------------------
# 5. Edge cases
# ---------------------------------------------------------------------------

def test_no_query_has_a_positive():
    """n_valid == 0: the means over valid queries are nan (nothing to average), accuracy 0."""
    case = Case(qe=np.array([[1.0, 0.0], [0.0, 1.0]]), ql=np.array([5, -1]),
                ge=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), gl=np.array([0, 1, -1]))
    for no_positive in ("skip", "zero"):
        res = run(case, metric="inner", ks=(1, 3), knn_k=1, pr=True, no_positive=no_positive)
        ref = case.ref(metric="inner", ks=(1, 3), knn_k=1, pr=True, no_positive=no_positive)
        assert res.n_valid == 0
        assert_matches(res, ref, exact=True)
        m = res.metrics
        assert m["accuracy"] == 0.0 and m["top3_accuracy"] == 0.0 and m["knn_accuracy"] == 0.0
        if no_positive == "skip":
            for key in ("mAP", "mINP", "rank1", "rank3", "maxF1", "hard_pos", "T@maxF1"):
                assert math.isnan(m[key]), key
        else:
            for key in ("mAP", "mINP", "rank1", "rank3", "maxF1"):
                assert m[key] == 0.0, key
        assert res.pr_curves[3].tolist() == [0, 0, 0]


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["inner", "cosine", "euclid", "sq_euclid"])
@pytest.mark.parametrize("dim", [1, 3, 128, 512])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_constant_embedding_scores_pessimistically(metric, dim, backend):
    """A model that maps everything to one point must score badly, not perfectly.

    Every item ties with every other one: AP_i = P_i / G, first hit = G - P_i + 1.
    Gaussian components (not round numbers) so that a positive scored by one kernel
    and a negative scored by another would differ in the last bits if the engine
    ever compared them.
    """
    rng = np.random.default_rng(dim)
    v = rng.standard_normal(dim).astype(np.float32).astype(np.float64)
    gl = np.array([0, 1, 0, 2, 1, 0, -1, 3, 3, 0, 1, 2] * 3)
    ql = np.array([0, 1, 2, 3, -1, 7])
    case = Case(qe=np.tile(v, (len(ql), 1)), ql=ql, ge=np.tile(v, (len(gl), 1)), gl=gl)
    res = run(case, metric=metric, ks=(1, 5), knn_k=4, pr=True, backend=backend, block_size=5)
    G = len(gl)
    P = np.array([(gl == lab).sum() if lab >= 0 else 0 for lab in ql])
    valid = P > 0
    ap = res.per_query["ap"].numpy()
    np.testing.assert_allclose(ap[valid], P[valid] / G, rtol=0, atol=1e-12)
    assert res.metrics["mAP"] == pytest.approx(np.mean(P[valid] / G), abs=1e-12)
    assert res.per_query["first_rank"].numpy()[valid].tolist() == (G - P[valid] + 1).tolist()
    assert res.per_query["last_rank"].numpy()[valid].tolist() == [float(G)] * int(valid.sum())
    assert res.metrics["rank1"] == 0.0 and res.metrics["rank5"] == 0.0
    assert res.metrics["accuracy"] == 0.0
    assert res.metrics["mINP"] == pytest.approx(np.mean(P[valid] / G), abs=1e-12)
    # kNN: the 4 best are the first 4 gallery items by index (0, 1, 0, 2): label 0 wins
    assert res.per_query["knn_pred"].tolist() == [0] * len(ql)
    ref = case.ref(metric=metric, ks=(1, 5), knn_k=4, pr=True)
    # distances come from |q|^2 + |g|^2 - 2 q.g: float32 cancellation of order D*u*|v|^2
    # (the reference subtracts the vectors first). Ranks above are exact all the same.
    sq_tol = 4 * dim * 2.0 ** -24 * float(v @ v)
    tol = {"sq_euclid": sq_tol, "euclid": math.sqrt(sq_tol)}.get(metric, 1e-5)
    assert_matches(res, ref, exact=False, score_tol=tol)


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["cosine", "euclid", "inner", "sq_euclid"])
@pytest.mark.parametrize("dim", [3, 64, 256])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_duplicated_gallery_items_tie_exactly(metric, dim, backend):
    """A negative that is an exact copy of a positive must tie with it (pessimistic)."""
    rng = np.random.default_rng(dim + 1)
    ge = rng.standard_normal((20, dim)).astype(np.float32).astype(np.float64)
    gl = np.arange(20) % 5
    ge = np.concatenate([ge, ge[::-1]])  # every item has a twin, usually of another label
    gl = np.concatenate([gl, (gl[::-1] + 1) % 5])
    qe = rng.standard_normal((7, dim)).astype(np.float32).astype(np.float64)
    ql = rng.integers(0, 5, 7)
    case = Case(qe, ql, ge, gl)
    ref = case.ref(metric=metric, ks=(1, 3), pr=True)
    res = run(case, metric=metric, ks=(1, 3), pr=True, backend=backend, block_size=7)
    # the twin structure must survive float32 exactly: compare only rank-based values
    for key in ("n_pos", "first_rank", "last_rank"):
        assert res.per_query[key].tolist() == ref.per_query[key].tolist(), key
    np.testing.assert_allclose(res.per_query["ap"].numpy(), ref.per_query["ap"], rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("bad_k", [0, -1, 4, 100])
def test_k_outside_the_gallery_is_an_error(bad_k):
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]), ge=np.array([[1.0], [2.0], [3.0]]),
                gl=np.array([0, 1, 0]))
    with pytest.raises(embeval.OptionError):
        run(case, metric="inner", ks=(1, bad_k))
    with pytest.raises(ValueError):  # OptionError is a ValueError
        run(case, metric="inner", ks=(1,), knn_k=bad_k)
    # the largest legal k works
    res = run(case, metric="inner", ks=(3,), knn_k=3)
    assert res.metrics["top3_accuracy"] == 1.0


def test_one_item_gallery():
    case = Case(qe=np.array([[1.0], [-1.0], [2.0]]), ql=np.array([0, 0, 1]), ge=np.array([[1.0]]),
                gl=np.array([0]))
    for metric in ("inner", "sq_euclid"):
        res = run(case, metric=metric, ks=(1,), knn_k=1, pr=True)
        assert_matches(res, case.ref(metric=metric, ks=(1,), knn_k=1, pr=True), exact=True)
        assert res.per_query["ap"][:2].tolist() == [1.0, 1.0]
        assert res.n_valid == 2
        assert res.metrics["accuracy"] == pytest.approx(2 / 3)


def test_unknown_labels_are_never_positive():
    """label -1 queries have no positives even against label -1 gallery items, and label -1
    gallery items are negatives for everyone, so they push ranks down."""
    case = Case(qe=np.array([[1.0], [1.0]]), ql=np.array([-1, 0]),
                ge=np.array([[5.0], [4.0], [1.0]]), gl=np.array([-1, -1, 0]))
    res = run(case, metric="inner", ks=(1, 3), knn_k=2)
    assert res.per_query["n_pos"].tolist() == [0, 1]
    assert res.per_query["first_rank"].tolist() == [math.inf, 3.0]
    assert res.per_query["ap"][1].item() == pytest.approx(1 / 3)
    assert res.per_query["knn_pred"].tolist() == [-1, -1]
    assert res.metrics["knn_accuracy"] == 0.0  # -1 == -1 is never a correct prediction
    assert res.metrics["top3_accuracy"] == 0.5 and res.metrics["rank3"] == 1.0
    assert res.n_valid == 1


def test_reference_rejects_nothing_silently():
    """Guard for the oracle: queries without positives are nan in AP and inf in ranks."""
    ref = reference(np.array([[1.0]]), np.array([3]), np.array([[1.0]]), np.array([0]),
                    metric="inner", ks=(1,))
    assert math.isnan(ref.per_query["ap"][0]) and ref.per_query["first_rank"][0] == math.inf
    assert ref.n_valid == 0 and math.isnan(ref.metrics["mAP"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@settings(max_examples=examples(40), **SETTINGS)
@given(opt=options(int_cases()), metric=st.sampled_from(["inner", "sq_euclid"]))
def test_cuda_exact_against_reference(opt, metric):
    case, ks, knn_k = opt
    res = run(case, metric=metric, ks=ks, knn_k=knn_k, pr=True, device="cuda")
    assert_matches(res, case.ref(metric=metric, ks=ks, knn_k=knn_k, pr=True), exact=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@settings(max_examples=examples(20), **SETTINGS)
@given(opt=options(gauss_cases()), metric=st.sampled_from(["cosine", "euclid"]))
def test_cuda_float_against_reference(opt, metric):
    case, ks, knn_k = opt
    # as on CPU: 1-D cosine is the sign, real ties that float32 (q.g)/(|q||g|) does not keep
    # (the CUDA and CPU engines agree there; the float64 reference ties them)
    assume(metric != "cosine" or case.qe.shape[1] > 1)
    ref = case.ref(metric=metric, ks=ks, knn_k=knn_k, pr=True)
    assume(min_gap(ref.scores) > 1e-4)
    res = run(case, metric=metric, ks=ks, knn_k=knn_k, pr=True, device="cuda")
    assert_matches(res, ref, exact=False, score_tol=1e-5)


# ---------------------------------------------------------------------------
# Overflow (issue 10 item 4): norms just inside the float32 limit rank like float64;
# one power of two further every metric refuses the input instead of ranking inf / NaN
# ---------------------------------------------------------------------------

RANK_KEYS = ("accuracy", "top1_accuracy", "top5_accuracy", "rank1", "rank5", "mAP", "mINP",
             "knn_accuracy", "maxF1", "P@maxF1", "R@maxF1")


def _near_limit(metric: str, precision: str) -> tuple[Case, int]:
    """A gaussian case whose queries include copies of gallery rows (inner, cosine: the
    largest dot products) and their negatives (the largest |q.g| and |q - g|), and the
    largest k such that scaling both sets by 2^k is still accepted."""
    from embeval.engine.similarity import overflow_rule

    rng = np.random.default_rng(9)  # a seed whose scores are 15 rounding bounds apart or more
    ge = rng.standard_normal((40, 16)).astype(np.float32).astype(np.float64)
    gl = rng.integers(0, 6, 40)
    extra = [-ge[5:10]] + ([ge[:5]] if metric in ("inner", "cosine") else [])
    qe = np.concatenate([rng.standard_normal((12, 16)).astype(np.float32).astype(np.float64),
                         *extra])
    ql = np.concatenate([rng.integers(0, 6, 12), gl[5:10]] + ([gl[:5]] if len(extra) > 1 else []))
    qn, gn = np.linalg.norm(qe, axis=1).max(), np.linalg.norm(ge, axis=1).max()
    k = 0
    while overflow_rule(metric, precision, 16, qn * 2.0 ** (k + 1), gn * 2.0 ** (k + 1)) is None:
        k += 1
    return Case(qe=qe, ql=ql, ge=ge, gl=gl), k


def _scaled(case: Case, k: int) -> Case:
    return Case(qe=case.qe * 2.0 ** k, ql=case.ql, ge=case.ge * 2.0 ** k, gl=case.gl)


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["inner", "cosine", "euclid", "sq_euclid"])
@pytest.mark.parametrize(("backend", "precision"), [("numba", "fp32"), ("torch", "fp32"),
                                                    ("torch", "bf16")])
def test_norms_just_inside_the_float32_limit_rank_exactly(metric, backend, precision):
    case, k = _near_limit(metric, precision)
    big = _scaled(case, k)
    kw = dict(metric=metric, ks=(1, 5), knn_k=3, pr=True, backend=backend, precision=precision)
    res, small = run(big, **kw), run(case, **kw)
    # powers of two scale every float32 step exactly: the same ranks, scores times 2^k or 4^k
    factor = {"inner": 4.0 ** k, "sq_euclid": 4.0 ** k, "euclid": 2.0 ** k, "cosine": 1.0}[metric]
    for key in RANK_KEYS:
        assert res.metrics[key] == small.metrics[key], key
    for key in ("hard_pos", "hard_neg", "T@maxF1"):
        assert res.metrics[key] == small.metrics[key] * factor, key
    extreme = torch.cat([res.per_query["hard_pos"], res.per_query["hard_neg"]]).abs()
    assert torch.isfinite(extreme).all()
    qn, gn = np.linalg.norm(big.qe, axis=1).max(), np.linalg.norm(big.ge, axis=1).max()
    size = {"inner": qn * gn, "cosine": 1.0, "euclid": qn + gn, "sq_euclid": (qn + gn) ** 2}
    if metric in ("inner", "sq_euclid"):  # scores really near float32's largest value
        assert size[metric] > 2.0 ** 124 and float(extreme.max()) > size[metric] / 16
    if precision == "fp32":  # and against float64 brute force, on the scaled values
        ref = big.ref(metric=metric, ks=(1, 5), knn_k=3, pr=True)
        # float32 rounding (about 2 D u |score|) cannot reorder scores this far apart
        assert min_gap(ref.scores) > 4 * 2 * 16 * 2.0 ** -24 * size[metric]
        assert_matches(res, ref, exact=False, score_tol=1e-5)
        assert 0 < ref.metrics["rank1"] < 1


@pytest.mark.parametrize("metric", ["inner", "cosine", "euclid", "sq_euclid"])
@pytest.mark.parametrize(("backend", "precision"), [("numba", "fp32"), ("torch", "fp32"),
                                                    ("torch", "bf16")])
def test_norms_beyond_the_limit_are_refused_naming_the_row(metric, backend, precision):
    case, k = _near_limit(metric, precision)
    for over in (k + 1, k + 40):
        with pytest.raises(embeval.InputFileError, match=r"embedding row \d+ has L2 norm .* too "
                                                         f"large for metric {metric}"):
            run(_scaled(case, over), metric=metric, knn_k=3, backend=backend, precision=precision)
