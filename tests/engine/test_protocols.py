"""Evaluation protocols against independent references (tests/oracle.py):
exclude_same_camera (Market-1501 / torchreid), exclude_self (leave-one-out),
aggregate="mean" (class prototypes) and no_positive="zero"."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import embeval

try:
    from helpers.oracle import Case, assert_matches, gauss_cases, int_cases, min_gap, prototypes
except ImportError:  # tests/ imported as a package
    from tests.oracle import Case, assert_matches, gauss_cases, int_cases, min_gap, prototypes

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(case: Case, **kw):
    q, g = case.sets()
    kw.setdefault("device", "cpu")
    return embeval.evaluate(q, g, **kw)


def _knn_k(data, case):
    return data.draw(st.none() | st.integers(1, len(case.gl)), label="knn_k")


# ---------------------------------------------------------------------------
# exclude_same_camera
# ---------------------------------------------------------------------------

@settings(max_examples=examples(200), **SETTINGS)
@given(case=int_cases(cameras=True), metric=st.sampled_from(["inner", "sq_euclid"]),
       data=st.data())
def test_exclude_same_camera_exact(case, metric, data):
    knn_k = _knn_k(data, case)
    kw = dict(metric=metric, ks=(1,), knn_k=knn_k, pr=True, exclude_same_camera=True)
    assert_matches(run(case, **kw), case.ref(**kw), exact=True)


@settings(max_examples=examples(40), **SETTINGS)
@given(case=gauss_cases(cameras=True), metric=st.sampled_from(["cosine", "euclid"]),
       data=st.data())
def test_exclude_same_camera_float(case, metric, data):
    knn_k = _knn_k(data, case)
    kw = dict(metric=metric, ks=(1,), knn_k=knn_k, pr=True, exclude_same_camera=True)
    ref = case.ref(**kw)
    assume(min_gap(ref.scores) > 1e-4 and case.qe.shape[1] > 1)
    assert_matches(run(case, **kw), ref, exact=False)


def _torchreid_market1501(S, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The classic evaluation loop (torchreid's eval_market1501, re-typed from its
    published description): argsort each row, drop same-id same-camera items, CMC,
    AP as the mean precision at each hit, mINP = #hits / rank of the last hit.
    It breaks ties by sort order, so it is only comparable on tie-free scores."""
    order = np.argsort(-S, axis=1, kind="stable")
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(len(q_pids)):
        o = order[i]
        keep = ~((g_pids[o] == q_pids[i]) & (g_cams[o] == q_cams[i]))
        hits = (g_pids[o] == q_pids[i])[keep].astype(np.int64)
        if not hits.any():
            continue
        cum = hits.cumsum()
        last = np.flatnonzero(hits).max()
        all_inp.append(cum[last] / (last + 1.0))
        cmc = (cum >= 1).astype(np.float64)
        cmc = np.concatenate([cmc, np.full(max(0, max_rank - len(cmc)), cmc[-1])])  # short rows
        all_cmc.append(cmc[:max_rank])
        prec = cum / np.arange(1, len(hits) + 1)
        all_ap.append((prec * hits).sum() / hits.sum())
    return np.mean(all_cmc, axis=0), float(np.mean(all_ap)), float(np.mean(all_inp))


@settings(max_examples=examples(40), **SETTINGS)
@given(case=gauss_cases(cameras=True, max_q=12, max_g=30, n_labels=3, min_g=5),
       metric=st.sampled_from(["cosine", "euclid", "inner"]))
def test_exclude_same_camera_matches_the_torchreid_loop(case, metric):
    case.ql, case.gl = np.abs(case.ql), np.abs(case.gl)  # the classic loop has no unknown label
    ref = case.ref(metric=metric, ks=(1,), exclude_same_camera=True)
    assume(min_gap(ref.scores) > 1e-4 and case.qe.shape[1] > 1 and ref.n_valid > 0)
    max_rank = 5
    res = run(case, metric=metric, ks=tuple(range(1, max_rank + 1)), exclude_same_camera=True)
    cmc, mAP, mINP = _torchreid_market1501(ref.scores, case.ql, case.gl, case.qc, case.gc,
                                           max_rank)
    got_cmc = [res.metrics[f"rank{k}"] for k in range(1, max_rank + 1)]
    np.testing.assert_allclose(got_cmc, cmc, rtol=0, atol=1e-12)
    assert res.metrics["mAP"] == pytest.approx(mAP, abs=1e-12)
    assert res.metrics["mINP"] == pytest.approx(mINP, abs=1e-12)


def test_exclude_same_camera_hand_example():
    """Query (label 0, camera 0). Gallery: an exact copy with label 0 camera 0 (dropped),
    label 0 camera 1 (the only positive), label 1 camera 0 (a negative, kept: only the
    label AND camera pair is dropped), label -1 camera 0."""
    case = Case(qe=np.array([[2.0]]), ql=np.array([0]), qc=np.array([0]),
                ge=np.array([[2.0], [1.0], [3.0], [0.0]]), gl=np.array([0, 0, 1, -1]),
                gc=np.array([0, 1, 0, 0]))
    res = run(case, metric="inner", ks=(1, 2), knn_k=1, exclude_same_camera=True)
    assert res.per_query["n_pos"].tolist() == [1]
    assert res.per_query["first_rank"].tolist() == [2.0]  # the label-1 item at 6 is ahead
    assert res.per_query["ap"].tolist() == [0.5]
    assert res.per_query["hard_pos"].tolist() == [2.0]
    assert res.per_query["hard_neg"].tolist() == [6.0]
    assert res.per_query["knn_pred"].tolist() == [1]  # the dropped copy (score 4) can't vote
    # without the protocol the copy is a positive and ranks first
    res = run(case, metric="inner", ks=(1,), knn_k=1)
    assert res.per_query["n_pos"].tolist() == [2] and res.per_query["first_rank"].tolist() == [2.0]


def test_exclude_same_camera_unknown_label_query():
    """A query with label -1 has no label to share, so the camera rule drops nothing for it:
    a gallery item with label -1 and the query's camera stays a negative. (torchreid's
    literal mask ``g_pid == q_pid & g_cam == q_cam`` would drop it; Market-1501 never asks,
    as its junk images (-1) are gallery-only.) It shows in hard_neg and kNN only."""
    case = Case(qe=np.array([[1.0]]), ql=np.array([-1]), qc=np.array([0]),
                ge=np.array([[5.0], [1.0]]), gl=np.array([-1, 2]), gc=np.array([0, 0]))
    kw = dict(metric="inner", ks=(1,), knn_k=1, exclude_same_camera=True)
    ref = case.ref(**kw)
    assert ref.per_query["hard_neg"].tolist() == [5.0]
    assert ref.per_query["knn_pred"].tolist() == [-1]
    assert_matches(run(case, **kw), ref, exact=True)


def test_exclude_same_camera_needs_cameras():
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]), ge=np.array([[1.0]]), gl=np.array([0]))
    with pytest.raises(ValueError):
        run(case, metric="inner", ks=(1,), exclude_same_camera=True)


# ---------------------------------------------------------------------------
# exclude_self (leave-one-out: the same set is query and gallery)
# ---------------------------------------------------------------------------

@settings(max_examples=examples(200), **SETTINGS)
@given(case=int_cases(same_set=True, cameras=True), metric=st.sampled_from(["inner", "sq_euclid"]),
       cam=st.booleans(), data=st.data())
def test_exclude_self_exact(case, metric, cam, data):
    knn_k = _knn_k(data, case)
    kw = dict(metric=metric, ks=(1,), knn_k=knn_k, pr=True, exclude_self=True,
              exclude_same_camera=cam)
    assert_matches(run(case, **kw), case.ref(**kw), exact=True)


@settings(max_examples=examples(40), **SETTINGS)
@given(case=gauss_cases(same_set=True, min_g=2), metric=st.sampled_from(["cosine", "euclid"]))
def test_exclude_self_float(case, metric):
    kw = dict(metric=metric, ks=(1,), knn_k=1, pr=True, exclude_self=True)
    ref = case.ref(**kw)
    assume(min_gap(ref.scores) > 1e-4 and case.qe.shape[1] > 1)
    res = run(case, **kw)
    assert_matches(res, ref, exact=False)
    # without exclusion each item finds itself first (its own label when known)
    res = run(case, metric=metric, ks=(1,), knn_k=1)
    assert res.per_query["knn_pred"].tolist() == np.where(case.gl >= 0, case.gl, -1).tolist()


def test_exclude_self_hand_example():
    """Items 3, 2, 1 (1-D, inner), labels 0, 1, 0. Leave-one-out: item 0 (self score 9
    dropped) sees item 1 (6, negative) before item 2 (3, its positive): first hit 2, AP 1/2;
    item 2 sees item 0 (3, positive) before item 1 (2): first hit 1; item 1 has no positive
    left (only itself had label 1)."""
    e = np.array([[3.0], [2.0], [1.0]])
    case = Case(qe=e, ql=np.array([0, 1, 0]), ge=e.copy(), gl=np.array([0, 1, 0]))
    res = run(case, metric="inner", ks=(1, 2), knn_k=1, exclude_self=True)
    assert res.per_query["n_pos"].tolist() == [1, 0, 1]
    assert res.per_query["first_rank"].tolist() == [2.0, math.inf, 1.0]
    assert res.per_query["ap"][[0, 2]].tolist() == [0.5, 1.0]
    assert res.per_query["knn_pred"].tolist() == [1, 0, 0]
    assert res.n_valid == 2
    assert res.metrics["accuracy"] == pytest.approx(1 / 3) and res.metrics["rank1"] == 0.5
    assert res.metrics["rank2"] == 1.0 and res.metrics["knn_accuracy"] == pytest.approx(1 / 3)


def test_exclude_self_identical_items():
    """Every item has an exact twin of another label; leaving oneself out must not also
    drop the twin (ties are pessimistic: the twin ties the positive)."""
    e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    lab = np.array([0, 1, 0, 1])
    case = Case(qe=e, ql=lab, ge=e.copy(), gl=lab.copy())
    res = run(case, metric="inner", ks=(1,), exclude_self=True)
    # item 0: positive is item 2 (score 0); negatives item 1 (score 1) and item 3 (score 0)
    assert res.per_query["first_rank"].tolist() == [3.0] * 4
    assert res.per_query["ap"].tolist() == pytest.approx([1 / 3] * 4)
    assert_matches(res, case.ref(metric="inner", ks=(1,), exclude_self=True), exact=True)


def test_exclude_self_needs_equal_sizes():
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]), ge=np.array([[1.0], [2.0]]),
                gl=np.array([0, 0]))
    with pytest.raises(ValueError):
        run(case, metric="inner", ks=(1,), exclude_self=True)


# ---------------------------------------------------------------------------
# aggregate="mean": class prototypes
# ---------------------------------------------------------------------------

@settings(max_examples=examples(60), **SETTINGS)
@given(case=gauss_cases(max_g=20), metric=st.sampled_from(["inner", "cosine", "euclid",
                                                           "sq_euclid"]),
       scale=st.booleans(), data=st.data())
def test_aggregate_mean_against_prototypes(case, metric, scale, data):
    if scale:  # embeddings of different norms: the mean of raw vectors != mean of unit ones
        rng = np.random.default_rng(len(case.gl))
        case.ge = (case.ge * rng.uniform(0.2, 5.0, (len(case.gl), 1))).astype(np.float32) \
            .astype(np.float64)
    pe, pl = prototypes(case.ge, case.gl)
    knn_k = data.draw(st.integers(1, len(pl)), label="knn_k")
    kw = dict(metric=metric, ks=(1,), knn_k=knn_k, pr=True)
    ref = case.ref(aggregate="mean", **kw)
    assume(min_gap(ref.scores) > 1e-4 and (metric != "cosine" or case.qe.shape[1] > 1))
    res = run(case, aggregate="mean", **kw)
    assert_matches(res, ref, exact=False, score_tol=1e-5)
    # the same as evaluating against the prototypes as a gallery
    proto = Case(case.qe, case.ql, pe, pl)
    assert_matches(res, proto.ref(**kw), exact=False, score_tol=1e-5)


def test_aggregate_mean_hand_example():
    """Label 0: (3, 0) and (0, 1) -> mean (1.5, 0.5) -> unit prototype (3, 1)/sqrt(10).
    Label 1: (0, 2) -> (0, 1). Unknown (-1) item (4, 0) -> (1, 0), kept on its own.
    Inner product with query (1, 0): 3/sqrt(10), 0 and 1."""
    case = Case(qe=np.array([[1.0, 0.0]]), ql=np.array([0]),
                ge=np.array([[3.0, 0.0], [0.0, 2.0], [0.0, 1.0], [4.0, 0.0]]),
                gl=np.array([0, 1, 0, -1]))
    res = run(case, metric="inner", ks=(1, 3), knn_k=1, aggregate="mean")
    assert res.per_query["n_pos"].tolist() == [1]
    assert res.per_query["hard_pos"].item() == pytest.approx(3 / math.sqrt(10), abs=1e-6)
    assert res.per_query["hard_neg"].item() == pytest.approx(1.0, abs=1e-6)
    assert res.per_query["first_rank"].tolist() == [2.0]
    assert res.per_query["knn_pred"].tolist() == [-1]
    assert res.metrics["rank3"] == 1.0 and res.metrics["mAP"] == 0.5
    # k is checked against the aggregated gallery (3 items), not the 4 raw ones
    with pytest.raises(ValueError):
        run(case, metric="inner", ks=(4,), aggregate="mean")


def test_aggregate_with_exclusions_is_rejected():
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]), qc=np.array([0]),
                ge=np.array([[1.0]]), gl=np.array([0]), gc=np.array([1]))
    with pytest.raises(ValueError):
        run(case, metric="inner", ks=(1,), aggregate="mean", exclude_same_camera=True)


# ---------------------------------------------------------------------------
# no_positive="zero"
# ---------------------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=examples(150), **SETTINGS)
@given(case=int_cases(cameras=True), metric=st.sampled_from(["inner", "sq_euclid"]),
       cam=st.booleans())
def test_no_positive_zero_exact(case, metric, cam):
    kw = dict(metric=metric, ks=tuple(sorted({1, len(case.gl)})), knn_k=1, pr=True, exclude_same_camera=cam)
    zero = run(case, no_positive="zero", **kw)
    assert_matches(zero, case.ref(no_positive="zero", **kw), exact=True)
    skip = run(case, no_positive="skip", **kw)
    n, nv = len(case.ql), zero.n_valid
    if nv:
        # "zero" rescales the means over valid queries by n_valid / n_query
        for key in ("mAP", "mINP", "rank1", "maxF1"):
            assert zero.metrics[key] == pytest.approx(skip.metrics[key] * nv / n, abs=1e-12), key
    # per-query values and the all-query metrics do not depend on the policy
    for key in ("accuracy", "top1_accuracy", "hard_pos", "hard_neg", "knn_accuracy", "T@maxF1"):
        assert zero.metrics[key] == pytest.approx(skip.metrics[key], abs=1e-12, nan_ok=True), key
    for key in ("n_pos", "first_rank", "ap"):
        assert torch.equal(zero.per_query[key].nan_to_num(-1.0), skip.per_query[key].nan_to_num(-1.0))


def test_no_positive_hand_example():
    """Two queries, one without positives: skip -> mAP 1, zero -> mAP 1/2."""
    case = Case(qe=np.array([[1.0], [1.0]]), ql=np.array([0, 9]), ge=np.array([[1.0], [0.0]]),
                gl=np.array([0, 1]))
    skip = run(case, metric="inner", ks=(1,))
    zero = run(case, metric="inner", ks=(1,), no_positive="zero")
    assert (skip.metrics["mAP"], zero.metrics["mAP"]) == (1.0, 0.5)
    assert (skip.metrics["rank1"], zero.metrics["rank1"]) == (1.0, 0.5)
    assert skip.metrics["accuracy"] == zero.metrics["accuracy"] == 0.5
    assert skip.n_valid == zero.n_valid == 1
    with pytest.raises(ValueError):
        run(case, metric="inner", ks=(1,), no_positive="ignore")
