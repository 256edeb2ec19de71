"""TPIR@FPIR under query weights (embeval.uncertainty.openset): all-ones weights give identify's
reported values; integer weights give the metric of the records repeated that many times, from
the definition (ci_oracle.tpir, a brute force over np.repeat-ed records)."""

from __future__ import annotations

import math

import numpy as np
import torch
from ci_oracle import tpir
from helpers.budget import examples
from helpers.oracle import int_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import embeval
from embeval.data.relevance import Relevance
from embeval.uncertainty.openset import OpenSetRecords, OpenSetStatistics, open_set_records
from embeval.verification.identify import identify

FPIRS = [0.1, 0.2, 0.25, 1 / 3, 0.5, 0.75]
KS = [1, 2]
RULES = ("embeval", "insightface")


def all_keys(fpirs=FPIRS, ks=KS) -> list[tuple[str, float, int]]:
    return [(f"TPIR@FPIR={f:g}" + (f",rank{k}" if k > 1 else ""), f, k) for f in fpirs for k in ks]


def same(got: float, want: float) -> bool:
    return math.isnan(got) and math.isnan(want) or got == want


@st.composite
def blind_cases(draw):
    """int_cases (heavy ties, unknown labels) plus queries that see no gallery item at all (every
    item junk to them): non-mated with a top-1 score of -inf."""
    case = draw(int_cases(max_q=10, max_g=8))
    blind = draw(arrays(np.bool_, len(case.ql)))
    return case, blind


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cb=blind_cases())
def test_ones_weights_give_identifys_values(cb):
    case, blind = cb
    nq, ng = len(case.ql), len(case.gl)
    qi, gi, rel = [], [], []
    for i in range(nq):
        for j in range(ng):
            if blind[i]:
                qi.append(i), gi.append(j), rel.append(-1)
            elif case.ql[i] >= 0 and case.gl[j] == case.ql[i]:
                qi.append(i), gi.append(j), rel.append(1)
    relevance = Relevance.from_pairs(torch.tensor(qi, dtype=torch.long),
                                     torch.tensor(gi, dtype=torch.long),
                                     torch.tensor(rel, dtype=torch.long), n_query=nq, n_gallery=ng)
    q = embeval.EmbeddingSet(torch.from_numpy(case.qe).float(), torch.from_numpy(case.ql))
    g = embeval.EmbeddingSet(torch.from_numpy(case.ge).float(), torch.from_numpy(case.gl))
    ks = sorted({1, min(2, ng)})
    keys = all_keys(ks=ks)
    for rule in RULES:
        res = identify(q, g, fpirs=FPIRS, ks=ks, fpir_rule=rule, relevance=relevance,
                       metric="inner", device="cpu")
        records = open_set_records(res.stats)
        if blind.any():
            assert torch.isinf(records.decision[torch.from_numpy(blind)]).all()
        got = OpenSetStatistics(records, keys, rule)(np.ones((1, nq)))[0]
        for (key, _, _), value in zip(keys, got):
            want = res.metrics.get(key, math.nan)  # omitted (embeval rule, m = 0): nan
            assert same(float(value), float(want)), (rule, key, value, want)


@st.composite
def weighted_records(draw):
    n = draw(st.integers(1, 12))
    mated = draw(arrays(np.bool_, n))
    decision = draw(arrays(np.float64, n, elements=st.integers(-2, 2).map(float)))
    blind = draw(arrays(np.bool_, n)) & ~mated
    decision[blind] = -np.inf
    first = np.where(mated, draw(arrays(np.float64, n, elements=st.integers(1, 3).map(float))),
                     np.inf)
    weights = draw(arrays(np.int64, (3, n), elements=st.integers(0, 3)))
    return mated, decision, first, weights


@settings(max_examples=examples(150), deadline=None)
@given(wr=weighted_records(), rule=st.sampled_from(RULES))
def test_integer_weights_equal_repeated_records(wr, rule):
    mated, decision, first, weights = wr
    records = OpenSetRecords(torch.from_numpy(mated), torch.from_numpy(decision).float(),
                             torch.from_numpy(first))
    keys = all_keys()
    got = OpenSetStatistics(records, keys, rule)(weights.astype(np.float64))
    for row, w in zip(got, weights):
        m, d, f = (np.repeat(x, w) for x in (mated, decision, first))
        for (key, fpir, k), value in zip(keys, row):
            want = tpir(m, d, f, fpir, k, rule)
            assert same(float(value), want), (rule, key, w.tolist(), value, want)


def test_hand_example():
    """4 non-mated top-1 scores 4, 3, 3, -inf; mated (score, first rank): (5, 1), (3.5, 1),
    (3, 1), (2, 3). FPIR 0.25 → m = 1, s = the 2nd highest = 3 (the tie): TPIR = 2/4; rank 3
    changes nothing; weights doubling query 0 (score 4): N = 5, m = 1, s = 4 → TPIR = 1/4."""
    mated = torch.tensor([False, False, False, False, True, True, True, True])
    decision = torch.tensor([4.0, 3.0, 3.0, -math.inf, 5.0, 3.5, 3.0, 2.0])
    first = torch.tensor([math.inf] * 4 + [1.0, 1.0, 1.0, 3.0], dtype=torch.float64)
    stat = OpenSetStatistics(OpenSetRecords(mated, decision, first),
                             [("a", 0.25, 1), ("b", 0.25, 3)])
    w = np.ones((2, 8))
    w[1, 0] = 2
    assert stat(w).tolist() == [[0.5, 0.5], [0.25, 0.25]]
