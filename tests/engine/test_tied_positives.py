"""Tied positives (issue 23): every position metric equals its worst value over every ordering
of the tied items (oracle: :mod:`helpers.orderings`, which enumerates them); the threshold
metrics keep scikit-learn's shared threshold (``average_precision_score``).

Cases: small-integer embeddings with inner / squared-Euclidean scores, exact in float32, so
duplicated rows give exact ties (between positives, between negatives, across both).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import cli
from helpers.oracle import Case, int_cases, keep_mask, score_matrix
from helpers.orderings import best, metrics_of_ranking, n_orderings, rankings, worst
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

import embeval
from embeval.protocols.revisited import revisited, revisited_settings
from embeval.uncertainty.terms import mean_terms
from embeval.verification.identify import identify

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
POSITION = ("first_rank", "last_rank", "rr", "map_at_r", "r_precision")


def rows(case: Case, metric: str, **protocol):
    """Per query: (scores of the kept items, which are positives), float64 brute force."""
    S = score_matrix(case.qe, case.ge, metric)
    keep = keep_mask(case.ql, case.gl, case.qc, case.gc, **protocol)
    for i in range(len(case.ql)):
        yield S[i, keep[i]], (case.gl[keep[i]] == case.ql[i]) & (case.ql[i] >= 0)


def per_query_oracle(case: Case, metric: str, ks, **protocol) -> list[dict[str, float]]:
    return [worst(s, pos, ks) for s, pos in rows(case, metric, **protocol)]


def assert_per_query(got: torch.Tensor, want: list[float], what: str) -> None:
    got_list = got.double().tolist()
    assert len(got_list) == len(want), what
    for i, (a, b) in enumerate(zip(got_list, want)):
        if math.isnan(b):
            assert math.isnan(a), f"{what}[{i}]: got {a}, want nan"
        else:
            assert a == pytest.approx(b, rel=0, abs=1e-12), f"{what}[{i}]: got {a}, want {b}"


def check_against_orderings(case: Case, metric: str, ks, **protocol) -> embeval.EvalResult:
    q, g = case.sets()
    res = embeval.evaluate(q, g, ks=ks, metric=metric, device="cpu", **protocol)
    trap = embeval.evaluate(q, g, ks=ks, metric=metric, device="cpu", ap="trapezoid", **protocol)
    oracle = per_query_oracle(case, metric, ks, **protocol)
    inf = {"first_rank": math.inf, "last_rank": math.inf}

    def col(key: str) -> list[float]:
        return [o.get(key, inf.get(key, math.nan)) for o in oracle]

    for key in POSITION:
        assert_per_query(res.per_query[key], col(key), key)
    for k in ks:
        assert_per_query(res.per_query[f"p@{k}"], col(f"p@{k}"), f"p@{k}")
        assert_per_query(res.per_query[f"ndcg@{k}"], col(f"ndcg@{k}"), f"ndcg@{k}")
    assert_per_query(trap.per_query["ap"], col("trapezoid_ap"), "trapezoid ap")
    inp = res.per_query["n_pos"].double() / res.per_query["last_rank"]
    assert_per_query(torch.where(res.per_query["n_pos"] > 0, inp, torch.nan), col("inp"), "inp")
    # threshold rule: standard AP is scikit-learn's, ties shared
    for i, (s, pos) in enumerate(rows(case, metric, **protocol)):
        if pos.any():
            want = average_precision_score(pos.astype(int), s)
            assert float(res.per_query["ap"][i]) == pytest.approx(want, abs=1e-12), f"ap[{i}]"
    return res


# ----------------------------------------------------------------- the oracle itself


def test_oracle_enumerates_every_ordering() -> None:
    """3 tied positives, 2 tied negatives with them, 1 better negative: C(5,3) = 10 relevance
    lists stand for 5! = 120 orderings; the worst puts both tied negatives first."""
    scores, pos = [2.0, 1.0, 1.0, 1.0, 1.0, 1.0], [False, True, True, True, False, False]
    lists = list(rankings(scores, pos))
    assert len(lists) == 10 and len({tuple(x) for x in lists}) == 10
    assert n_orderings(scores) == 120
    w = worst(scores, pos, [1, 3])
    assert w == metrics_of_ranking([False, False, False, True, True, True], [1, 3])
    assert best(scores, pos, [1, 3])["first_rank"] == 2


# ----------------------------------------------------------------- the cases


def test_two_identical_positives_on_top_is_perfect(capsys, tmp_path: Path) -> None:
    """Two identical positives on top, a negative below: every ordering gives 1.0."""
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]), ge=np.array([[2.0], [2.0], [1.0]]),
                gl=np.array([0, 0, 1]))
    assert best([2.0, 2.0, 1.0], [True, True, False], [1, 2]) == \
        worst([2.0, 2.0, 1.0], [True, True, False], [1, 2])
    m = check_against_orderings(case, "inner", (1, 2)).metrics
    for key in ("rank1", "mAP", "MRR", "MAP@R", "R-precision", "P@1", "P@2", "nDCG@1", "nDCG@2",
                "mINP"):
        assert m[key] == 1.0, key
    q, g = case.sets()
    gt = revisited_settings(np.array([0, 0]), np.array([0, 1]), np.array([0, 0]), n_query=1,
                            n_gallery=3)
    r = revisited(q, g, gt, ks=(1, 2), metric="inner", device="cpu").metrics
    assert (r["mAP@easy"], r["mP@1@easy"], r["mP@2@easy"], r["mAP@medium"]) == (1.0,) * 4
    # the command line: --protocol roxford, and the per-query CSV of cmc
    qf = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels)
    gf = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels)
    (tmp_path / "gt.csv").write_text("query,gallery,kind\n0,0,easy\n0,1,easy\n")
    rc, out, err = cli(capsys, "cmc", qf, gf, "--metric", "inner", "-k", "1", "2",
                       "--protocol", "roxford", "--relevance", tmp_path / "gt.csv", "--json")
    assert rc == 0, err
    import json
    got = json.loads(out)["metrics"]
    assert (got["mAP@easy"], got["mP@1@easy"]) == (1.0, 1.0)
    rc, _, err = cli(capsys, "cmc", qf, gf, "--metric", "inner", "-k", "1", "2",
                     "--per-query", tmp_path / "pq.csv")
    assert rc == 0, err
    row = next(csv.DictReader(open(tmp_path / "pq.csv")))
    assert (row["first_rank"], row["last_rank"], row["rr"], row["map_at_r"],
            row["r_precision"]) == ("1", "2", "1", "1", "1")


def test_tied_positives_straddling_the_cut() -> None:
    """A negative above, then three tied positives and a tied negative, then a positive:
    R = 4 cuts the tied run. Worst order: n, n, p, p, p, p → positions 3, 4, 5, 6."""
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]),
                ge=np.array([[3.0], [2.0], [2.0], [2.0], [2.0], [1.0]]),
                gl=np.array([1, 0, 0, 0, 1, 0]))
    m = check_against_orderings(case, "inner", (1, 2, 4, 6)).metrics
    assert m["R-precision"] == pytest.approx(2 / 4)
    assert m["MAP@R"] == pytest.approx((1 / 3 + 2 / 4) / 4)
    assert m["P@4"] == pytest.approx(2 / 4) and m["rank1"] == 0.0 and m["MRR"] == 1 / 3


def test_three_tied_groups_map_at_r_not_above_the_worst() -> None:
    """Three runs of tied positives and negatives: MAP@R is the worst ordering's, not above."""
    case = Case(qe=np.array([[1.0]]), ql=np.array([0]),
                ge=np.array([[3.0], [3.0], [3.0], [2.0], [2.0], [2.0], [1.0], [1.0]]),
                gl=np.array([0, 0, 1, 0, 1, 1, 0, 1]))
    check_against_orderings(case, "inner", (1, 3, 5))


# ----------------------------------------------------------------- hypothesis: every metric


@st.composite
def tie_cases(draw, **kw):
    case = draw(int_cases(max_g=9, max_q=5, max_d=2, **kw))
    ks = tuple(sorted(draw(st.lists(st.integers(1, len(case.gl)), min_size=1, max_size=3,
                                    unique=True))))
    return case, ks, draw(st.sampled_from(["inner", "sq_euclid"]))


@settings(max_examples=25, **SETTINGS)
@given(tie_cases())
def test_every_position_metric_is_the_worst_ordering(args) -> None:
    case, ks, metric = args
    check_against_orderings(case, metric, ks)


@settings(max_examples=10, **SETTINGS)
@given(tie_cases(cameras=True))
def test_with_exclusions(args) -> None:
    case, ks, metric = args
    check_against_orderings(case, metric, ks, exclude_same_camera=True)


@settings(max_examples=10, **SETTINGS)
@given(tie_cases(), st.data())
def test_revisited_identify_and_bootstrap_terms(args, data) -> None:
    """revisitop's trapezoid AP and mP@k per setting, identify's closed-set rank-k and the
    bootstrap's per-query terms, against the worst ordering."""
    case, ks, metric = args
    q, g = case.sets()
    nq, ng = len(case.ql), len(case.gl)
    kinds = data.draw(st.lists(st.integers(-1, 2), min_size=nq * ng, max_size=nq * ng))
    kind = np.array(kinds).reshape(nq, ng)  # -1: unlisted, 0 easy, 1 hard, 2 junk
    qi, gi = np.nonzero(kind >= 0)
    gt = revisited_settings(qi, gi, kind[qi, gi], n_query=nq, n_gallery=ng)
    res = revisited(q, g, gt, ks=ks, metric=metric, device="cpu")
    S = score_matrix(case.qe, case.ge, metric)
    for name, (pos_kinds, ign_kinds) in {"easy": ((0,), (2, 1)), "medium": ((0, 1), (2,)),
                                         "hard": ((1,), (2, 0))}.items():
        part = res.settings[name]
        want = []
        for i in range(nq):
            keep = ~np.isin(kind[i], ign_kinds)
            want.append(worst(S[i, keep], np.isin(kind[i], pos_kinds)[keep], ks))
        assert_per_query(part.per_query["ap"], [w.get("trapezoid_ap", math.nan) for w in want],
                         f"ap@{name}")
        for k in ks:
            assert_per_query(part.per_query[f"mp@{k}"], [w.get(f"mp@{k}", math.nan) for w in want],
                             f"mp@{k}@{name}")
        terms = mean_terms(res)
        for k in ks:
            t = terms[f"mP@{k}@{name}"]
            valid = [w for w in want if w]
            assert t.values[t.include].tolist() == pytest.approx([w[f"mp@{k}"] for w in valid],
                                                                 abs=1e-12)
    # identify: closed-set rank-k over mated queries
    ident = identify(q, g, fpirs=[0.5], ks=list(ks), metric=metric, device="cpu")
    oracle = per_query_oracle(case, metric, ks)
    mated = [o for o in oracle if o]
    for k in ks:
        want_k = sum(o["first_rank"] <= k for o in mated) / len(mated) if mated else math.nan
        got = ident.metrics[f"rank{k}"]
        assert (math.isnan(got) and math.isnan(want_k)) or got == pytest.approx(want_k), k
    # bootstrap terms of cmc's position metrics
    res = embeval.evaluate(q, g, ks=ks, metric=metric, device="cpu")
    terms = mean_terms(res)
    for key, col in (("MAP@R", "map_at_r"), ("R-precision", "r_precision"), ("MRR", "rr"),
                     *((f"P@{k}", f"p@{k}") for k in ks), *((f"nDCG@{k}", f"ndcg@{k}") for k in ks)):
        t = terms[key]
        assert t.values[t.include].tolist() == pytest.approx([o[col] for o in mated], abs=1e-12), key


def test_shards_and_merge_keep_the_positions(capsys, tmp_path: Path) -> None:
    """Tied positives split across gallery shards: the merged per-query values are the worst
    ordering's (and the unsharded run's)."""
    rng = np.random.default_rng(23)
    ge = rng.integers(-1, 2, (14, 2)).astype(np.float64)
    ge[7:] = ge[:7]  # every item duplicated: shard 0 holds one copy, shard 1 the other
    gl = np.tile(rng.integers(0, 3, 7), 2)
    case = Case(qe=rng.integers(-1, 2, (6, 2)).astype(np.float64), ql=rng.integers(0, 3, 6),
                ge=ge, gl=gl)
    ks = (1, 2, 5)
    base = check_against_orderings(case, "inner", ks)
    q, g = case.sets()
    qf = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels)
    gf = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels)
    for i in range(2):
        rc, _, err = cli(capsys, "cmc", qf, gf, "-k", "1", "2", "5", "--metric", "inner",
                         "--shard", f"{i}/2", "--out-part", tmp_path / f"part{i}.safetensors")
        assert rc == 0, err
    merged = embeval.merge_partials([str(tmp_path / "part*.safetensors")])
    for key in (*POSITION, *(f"p@{k}" for k in ks), *(f"ndcg@{k}" for k in ks)):
        torch.testing.assert_close(merged.per_query[key], base.per_query[key], rtol=0, atol=0,
                                   equal_nan=True, msg=key)


def test_pytorch_metric_learning_with_ties_lies_between_worst_and_best() -> None:
    """pytorch-metric-learning's AccuracyCalculator ranks by ``torch.topk`` (CustomKNN): among
    tied items it takes topk's order, which nothing specifies, so its MAP@R and R-precision are
    one ordering's, between the worst (embeval's) and the best. (Tie-free, they are equal:
    tests/engine/test_rank_metrics.py.)"""
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(4)
    ge = rng.integers(0, 3, (12, 1)).astype(np.float64)  # 3 distinct points: runs of ~4 ties
    case = Case(qe=rng.integers(1, 3, (15, 1)).astype(np.float64), ql=rng.integers(0, 3, 15),
                ge=ge, gl=rng.integers(0, 3, 12))
    q, g = case.sets()
    calc = AccuracyCalculator(include=("mean_average_precision_at_r", "r_precision"), k=None,
                              avg_of_avgs=False, device=torch.device("cpu"),
                              knn_func=CustomKNN(DotProductSimilarity(normalize_embeddings=False)))
    acc = calc.get_accuracy(q.embeddings, q.labels, g.embeddings, g.labels,
                            ref_includes_query=False)
    res = embeval.evaluate(q, g, ks=(1,), metric="inner", device="cpu")
    lo = [worst(s, p, [1]) for s, p in rows(case, "inner")]
    hi = [best(s, p, [1]) for s, p in rows(case, "inner")]
    for pml, ours, col in (("mean_average_precision_at_r", "MAP@R", "map_at_r"),
                           ("r_precision", "R-precision", "r_precision")):
        worst_mean = math.fsum(w[col] for w in lo if w) / sum(1 for w in lo if w)
        best_mean = math.fsum(b[col] for b in hi if b) / sum(1 for b in hi if b)
        assert res.metrics[ours] == pytest.approx(worst_mean, abs=1e-12)
        assert worst_mean - 1e-12 <= acc[pml] <= best_mean + 1e-12, pml
        assert worst_mean < best_mean  # the case has ties that matter
