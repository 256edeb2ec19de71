"""Per-query terms (embeval.uncertainty.terms): every mean metric a command reports is the mean of
its terms over the included queries, for the options that change what is included.

Oracle: the reported number itself (``evaluate``, ``identify``, ``revisited``) and, for which
queries are included, the definitions written here from ``n_pos`` and the labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.budget import examples
from helpers.oracle import int_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embeval
from embeval.metrics import exact_mean
from embeval.protocols.revisited import revisited, revisited_settings
from embeval.uncertainty import intervals
from embeval.uncertainty.terms import mean_terms
from embeval.verification.identify import identify

FAST = settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sets_of(case) -> tuple[embeval.EmbeddingSet, embeval.EmbeddingSet]:
    q = embeval.EmbeddingSet(torch.from_numpy(case.qe).float(), torch.from_numpy(case.ql))
    g = embeval.EmbeddingSet(torch.from_numpy(case.ge).float(), torch.from_numpy(case.gl))
    return q, g


def same_number(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return got == want or abs(got - want) <= 1e-15


# metrics averaged over every query whatever no_positive says (a query without positives: a miss)
OVER_ALL = ("accuracy", "knn_accuracy")


def expected_include(key: str, n_pos: np.ndarray, no_positive: str, pq: dict) -> np.ndarray:
    """Which queries a metric averages over, from the definitions (DESIGN.md section 3)."""
    valid = n_pos > 0
    if key in OVER_ALL or (key.startswith("top") and key.endswith("_accuracy")):
        return np.ones_like(valid)
    if key in ("hard_pos", "hard_neg"):
        return ~np.isnan(pq[key].numpy())
    if key == "T@maxF1":
        return valid
    return valid if no_positive == "skip" else np.ones_like(valid)


@FAST
@given(case=int_cases(max_q=9, max_g=10), no_positive=st.sampled_from(["skip", "zero"]),
       pr=st.booleans(), knn=st.booleans(), metric=st.sampled_from(["inner", "sq_euclid"]),
       ap=st.sampled_from(["standard", "trapezoid"]))
def test_terms_reproduce_every_evaluate_metric(case, no_positive, pr, knn, metric, ap):
    q, g = sets_of(case)
    ks = sorted({1, min(2, g.n), g.n})
    res = embeval.evaluate(q, g, ks=ks, knn_k=min(3, g.n) if knn else None, pr=pr,
                           no_positive=no_positive, metric=metric, ap=ap, device="cpu")
    terms = mean_terms(res)
    assert list(terms) == list(res.metrics)  # every key of evaluate is a mean over queries
    n_pos = res.stats.n_pos.numpy()
    for key, (values, include) in terms.items():
        assert values.dtype == torch.float64 and include.dtype == torch.bool
        assert values.shape == include.shape == (q.n,)
        assert torch.isfinite(values).all() and not values[~include].any(), key
        assert np.array_equal(include.numpy(), expected_include(key, n_pos, no_positive,
                                                                res.per_query)), key
        assert same_number(exact_mean(values[include]), res.metrics[key]), \
            (key, exact_mean(values[include]), res.metrics[key])
    ci = intervals(res, n_resamples=20)
    assert ci.reasons == {} and set(ci.bounds) == set(res.metrics)


def test_terms_see_unknown_labels_and_queries_without_positives():
    """A fixed case with every kind of query: the rank-1 terms are written out by hand."""
    q = embeval.EmbeddingSet(torch.tensor([[1., 0.], [0., 1.], [1., 1.], [1., 0.]]),
                             torch.tensor([0, 1, -1, 7]))  # -1 unknown, 7 absent from the gallery
    g = embeval.EmbeddingSet(torch.tensor([[1., 0.], [2., 0.], [0., 1.]]), torch.tensor([0, 0, 1]))
    for policy, include in (("skip", [True, True, False, False]), ("zero", [True] * 4)):
        res = embeval.evaluate(q, g, ks=(1,), knn_k=1, no_positive=policy, metric="inner",
                               device="cpu")
        t = mean_terms(res)
        # query 0: best is gallery 1 (score 2, a positive): a hit; query 1: a hit
        assert t["rank1"].include.tolist() == include
        assert t["rank1"].values.tolist() == [1.0, 1.0, 0.0, 0.0]
        assert t["accuracy"].include.tolist() == [True] * 4
        # kNN-1: query 0 → label 0, query 1 → label 1, unknown labels never count as correct
        assert t["knn_accuracy"].values.tolist() == [1.0, 1.0, 0.0, 0.0]
        assert res.metrics["rank1"] == sum(include[:2]) / sum(include)


@FAST
@given(case=int_cases(max_q=9, max_g=10), rule=st.sampled_from(["embeval", "insightface"]))
def test_terms_reproduce_identify_rank_k(case, rule):
    q, g = sets_of(case)
    ks = sorted({1, min(2, g.n), g.n})
    res = identify(q, g, fpirs=[0.2, 0.5], ks=ks, fpir_rule=rule, metric="inner", device="cpu")
    terms = mean_terms(res)
    assert sorted(terms) == sorted(f"rank{k}" for k in ks)
    mated = res.stats.n_pos.numpy() > 0
    for key, (values, include) in terms.items():
        assert np.array_equal(include.numpy(), mated)  # closed-set CMC: over mated queries only
        assert same_number(exact_mean(values[include]), res.metrics[key]), key
    ci = intervals(res, n_resamples=20)
    no_ci = {k for k in res.metrics if k.startswith(("threshold@", "n_"))}
    assert set(ci.reasons) == no_ci
    assert set(ci.bounds) == set(res.metrics) - no_ci  # rank-k and TPIR@FPIR


@st.composite
def revisited_cases(draw):
    case = draw(int_cases(max_q=6, max_g=9))
    nq, ng = len(case.ql), len(case.gl)
    pairs = draw(st.dictionaries(st.tuples(st.integers(0, nq - 1), st.integers(0, ng - 1)),
                                 st.integers(0, 2), max_size=3 * nq))
    return case, pairs


@pytest.mark.slow
@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rc=revisited_cases(), ap=st.sampled_from(["standard", "trapezoid"]))
def test_terms_reproduce_revisited_metrics(rc, ap):
    case, pairs = rc
    q, g = sets_of(case)
    keys = list(pairs)
    qi = np.array([k[0] for k in keys], dtype=np.int64)
    gi = np.array([k[1] for k in keys], dtype=np.int64)
    kind = np.array([pairs[k] for k in keys], dtype=np.int64)
    truth = revisited_settings(qi, gi, kind, n_query=q.n, n_gallery=g.n)
    ks = sorted({1, min(3, g.n)})
    res = revisited(q, g, truth, ks=ks, metric="inner", ap=ap, device="cpu")
    terms = mean_terms(res)
    assert sorted(terms) == sorted(res.metrics)  # mAP@s and mP@k@s, every setting
    for key, (values, include) in terms.items():
        setting = key.rpartition("@")[2]
        assert np.array_equal(include.numpy(), res.settings[setting].stats.n_pos.numpy() > 0)
        assert same_number(exact_mean(values[include]), res.metrics[key]), key
