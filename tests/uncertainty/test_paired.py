"""Paired comparison (embeval.uncertainty.paired.compare) on SavedResult objects built here: the
difference, its bootstrap interval, and the randomisation p-value against a brute force over
every swap pattern written as a python loop (ci_oracle)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ci_oracle import tpir, units_of
from helpers.budget import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import embeval
from embeval.errors import OptionError
from embeval.uncertainty import compare, saved_result
from embeval.uncertainty.openset import OpenSetRecords
from embeval.uncertainty.paired import holm
from embeval.uncertainty.saved import SavedResult
from embeval.uncertainty.terms import Terms

RULE = "embeval"
TPIR_KEY, TPIR_F = "TPIR@FPIR=0.5", 0.5


def plain_mean(values: np.ndarray, include: np.ndarray) -> float:
    v = values[include]
    return float(np.mean(v)) if len(v) else math.nan


def saved(columns: dict[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray,
          openset: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
          name: str = "A") -> SavedResult:
    """A result with the given per-query terms (and open-set records); metrics from them."""
    metrics = {k: plain_mean(v, i) for k, (v, i) in columns.items()}
    terms = {k: Terms(torch.tensor(np.where(i, v, 0.0), dtype=torch.float64),
                      torch.tensor(i, dtype=torch.bool)) for k, (v, i) in columns.items()}
    records = None
    options: dict = {}
    if openset is not None:
        mated, decision, first = openset
        records = OpenSetRecords(torch.tensor(mated), torch.tensor(decision, dtype=torch.float32),
                                 torch.tensor(first, dtype=torch.float64))
        metrics[TPIR_KEY] = tpir(mated, decision, first, TPIR_F, 1, RULE)
        options["fpir_rule"] = RULE
    return SavedResult(name, metrics, options, {}, len(labels), 10,
                       torch.tensor(labels, dtype=torch.int64), terms, records)


def brute_p(a_records: list, b_records: list, labels: np.ndarray, by: str, metric) -> float:
    """Exact two-sided p: ``metric(records)`` → float; every subset of the differing units
    swapped, |T*| >= |T| (ties within 1e-12 count)."""
    units = units_of(labels, by)
    differing = [u for u in units if any(a_records[i] != b_records[i] for i in u)]
    observed = metric(b_records) - metric(a_records)
    extreme = 0
    for pattern in itertools.product((False, True), repeat=len(differing)):
        a, b = list(a_records), list(b_records)
        for swap, u in zip(pattern, differing):
            if swap:
                for i in u:
                    a[i], b[i] = b[i], a[i]
        t = metric(b) - metric(a)
        extreme += abs(t) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
    return extreme / 2 ** len(differing)


def mean_of_records(records: list) -> float:
    v = [x for x, inc in records if inc]
    return sum(v) / len(v) if v else math.nan


def tpir_of_records(records: list) -> float:
    mated, decision, first = (np.array(x) for x in zip(*records))
    return tpir(mated, decision, first, TPIR_F, 1, RULE)


def test_identical_results_differ_by_nothing():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 5, 30)
    cols = {"mAP": (rng.random(30), rng.random(30) < 0.8)}
    a, b = saved(cols, labels), saved(cols, labels, name="B")
    m = compare(a, b, n_resamples=200).metrics["mAP"]
    assert (m.diff, m.ci, m.p_value, m.n_differing, m.exact) == (0.0, (0.0, 0.0), 1.0, 0, True)


def hit_results(q: int = 200):
    labels = np.arange(q) % 50
    a_hits = (np.arange(q) < 100).astype(float)  # A: queries 0..99
    b_hits = (np.arange(q) < 140).astype(float)  # B: also 100..139 (20% more), never worse
    everyone = np.ones(q, bool)
    return (saved({"rank1": (a_hits, everyone)}, labels),
            saved({"rank1": (b_hits, everyone)}, labels, name="B"))


def test_a_better_model_is_detected():
    a, b = hit_results()
    m = compare(a, b, n_resamples=1000, n_permutations=2000).metrics["rank1"]
    assert m.diff == pytest.approx(0.2, abs=1e-15) and m.n_differing == 40 and not m.exact
    assert 0.0 < m.ci[0] <= 0.2 <= m.ci[1]
    assert m.p_value < 0.01 and m.p_value == 1 / 2001  # no random swap is as extreme


def test_swapping_a_and_b_negates_the_difference():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 8, 60)
    inc = rng.random(60) < 0.9
    a = saved({"mAP": (rng.random(60), inc), "rank1": (rng.random(60) < .5, inc)}, labels)
    b = saved({"mAP": (rng.random(60), inc), "rank1": (rng.random(60) < .6, inc)}, labels,
              name="B")
    for by in ("query", "label"):
        ab, ba = compare(a, b, by=by, n_resamples=300), compare(b, a, by=by, n_resamples=300)
        for k, m in ab.metrics.items():
            r = ba.metrics[k]
            assert r.diff == -m.diff and r.p_value == m.p_value
            assert r.ci == pytest.approx((-m.ci[1], -m.ci[0]), abs=1e-12)
            assert m.ci[0] < m.ci[1]


@st.composite
def small_pairs(draw):
    q = draw(st.integers(2, 9))
    labels = draw(arrays(np.int64, q, elements=st.integers(-1, 3)))
    vals = st.sampled_from([0.0, 0.25, 0.5, 1.0])
    va, vb = (draw(arrays(np.float64, q, elements=vals)) for _ in range(2))
    include = draw(arrays(np.bool_, q))
    mated = draw(arrays(np.bool_, q))
    da, db = (draw(arrays(np.float64, q, elements=st.integers(0, 3).map(float))) for _ in range(2))
    fa, fb = (np.where(mated, draw(arrays(np.float64, q, elements=st.integers(1, 2).map(float))),
                       np.inf) for _ in range(2))
    by = draw(st.sampled_from(["query", "label"]))
    return labels, (va, vb, include), (mated, da, db, fa, fb), by


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=small_pairs())
def test_exact_p_equals_a_brute_force_over_all_swaps(case):
    labels, (va, vb, include), (mated, da, db, fa, fb), by = case
    a = saved({"m": (va, include)}, labels, (mated, da, fa))
    b = saved({"m": (vb, include)}, labels, (mated, db, fb), name="B")
    c = compare(a, b, by=by, n_resamples=50, n_permutations=1024)
    inc = include.tolist()
    records = {"m": (list(zip(np.where(include, va, 0.0).tolist(), inc)),
                     list(zip(np.where(include, vb, 0.0).tolist(), inc)), mean_of_records),
               TPIR_KEY: (list(zip(mated.tolist(), da.tolist(), fa.tolist())),
                          list(zip(mated.tolist(), db.tolist(), fb.tolist())), tpir_of_records)}
    for key, (ra, rb, metric) in records.items():
        if math.isnan(a.metrics[key]) or math.isnan(b.metrics[key]):
            assert key in c.skipped and key not in c.metrics  # nothing to test
            continue
        want = brute_p(ra, rb, labels, by, metric)
        got = c.metrics[key]
        assert got.exact and got.p_value == pytest.approx(want, abs=1e-12), (key, got, want)


def test_a_metric_without_a_value_is_skipped_not_significant():
    """No query included (e.g. mAP when no query has a positive): no difference to test; it
    once got p = 0 ("significant") from a nan observed difference."""
    labels = np.arange(6)
    a = saved({"m": (np.zeros(6), np.zeros(6, bool)), "r": (np.zeros(6), np.ones(6, bool))},
              labels)
    b = saved({"m": (np.ones(6), np.zeros(6, bool)), "r": (np.full(6, .5), np.ones(6, bool))},
              labels, name="B")
    c = compare(a, b, n_resamples=20)
    assert list(c.metrics) == ["r"] and "m" in c.skipped
    assert c.metrics["r"].p_value == 2 / 2 ** 6
    only_nan = compare(saved({"m": (np.zeros(6), np.zeros(6, bool))}, labels),
                       saved({"m": (np.zeros(6), np.zeros(6, bool))}, labels), n_resamples=20)
    assert only_nan.metrics == {} and "m" in only_nan.skipped


def test_monte_carlo_p_is_close_to_the_exact_p():
    rng = np.random.default_rng(5)
    q = 14
    labels = np.arange(q)
    everyone = np.ones(q, bool)
    va = rng.random(q)
    vb = va + rng.normal(0.05, 0.2, q)  # differs on every query: 2^14 = 16384 patterns
    a, b = saved({"m": (va, everyone)}, labels), saved({"m": (vb, everyone)}, labels, name="B")
    exact = compare(a, b, n_resamples=50, n_permutations=20000).metrics["m"]
    mc = compare(a, b, n_resamples=50, n_permutations=4000).metrics["m"]
    assert exact.exact and not mc.exact and 0.05 < exact.p_value < 0.95
    assert abs(mc.p_value - exact.p_value) < 0.03, (mc.p_value, exact.p_value)
    assert mc.p_value == compare(a, b, n_resamples=50, n_permutations=4000).metrics["m"].p_value


def test_by_label_swaps_whole_identities():
    """B is better on every query of 3 identities (4 queries each): by query 12 independent
    swaps (p = 2 / 2^12), by label only 3 (p = 2 / 2^3)."""
    labels = np.repeat(np.arange(6), 4)
    everyone = np.ones(24, bool)
    va = np.zeros(24)
    vb = np.where(labels < 3, 1.0, 0.0)
    a, b = saved({"m": (va, everyone)}, labels), saved({"m": (vb, everyone)}, labels, name="B")
    by_query = compare(a, b, by="query", n_resamples=50).metrics["m"]
    by_label = compare(a, b, by="label", n_resamples=50).metrics["m"]
    assert (by_query.n_differing, by_query.p_value) == (12, 2 / 2 ** 12)
    assert (by_label.n_differing, by_label.p_value) == (3, 2 / 2 ** 3)
    assert compare(a, b, by="label", n_resamples=50).n_units == 6


def test_holm_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    a, b = hit_results()
    rng = np.random.default_rng(2)
    noise = rng.random(200)
    a.terms["x"] = Terms(torch.tensor(noise), torch.ones(200, dtype=torch.bool))
    b.terms["x"] = Terms(torch.tensor(noise[::-1].copy()), torch.ones(200, dtype=torch.bool))
    a.metrics["x"], b.metrics["x"] = float(noise.mean()), float(noise[::-1].mean())
    c = compare(a, b, n_resamples=100, n_permutations=500).metrics
    p1, p2 = c["rank1"].p_value, c["x"].p_value
    assert p1 < p2
    assert c["rank1"].p_holm == pytest.approx(min(1, 2 * p1))
    assert c["x"].p_holm == pytest.approx(max(min(1, 2 * p1), p2))


def test_results_of_other_queries_are_refused():
    a, _ = hit_results()
    labels = a.query_labels.numpy().copy()
    labels[7] += 1
    b = saved({"rank1": (np.ones(200), np.ones(200, bool))}, labels, name="B")
    with pytest.raises(OptionError, match="label of query 7"):
        compare(a, b)


def test_compare_saved_evaluations():
    """Two models on the same queries, through saved_result: diff = difference of the reported
    metrics; a model compared with itself: p = 1."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 8, generator=g)
    ql, gl = torch.arange(60) % 10, torch.arange(100) % 10
    gal = embeval.EmbeddingSet(centres[gl] + 0.8 * torch.randn(100, 8, generator=g), gl)
    noise = torch.randn(60, 8, generator=g)
    good = embeval.EmbeddingSet(centres[ql] + 0.5 * noise, ql)
    bad = embeval.EmbeddingSet(centres[ql] + 1.5 * noise, ql)
    ra, rb = (embeval.evaluate(x, gal, ks=(1, 5), device="cpu") for x in (bad, good))
    a, b = (saved_result("cmc", r, inputs={}) for r in (ra, rb))
    c = compare(a, b, n_resamples=300, n_permutations=2000)
    assert set(c.metrics) == set(ra.metrics)
    for k, m in c.metrics.items():
        assert m.diff == rb.metrics[k] - ra.metrics[k]
    assert c.metrics["mAP"].diff > 0 and c.metrics["mAP"].p_value < 0.01
    assert compare(a, a, n_resamples=50).metrics["mAP"].p_value == 1.0
