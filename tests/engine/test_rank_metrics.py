"""MRR, MAP@R, R-precision, P@k and nDCG@k (DESIGN.md section 7) against independent oracles.

(a) A float64 brute force written here: the full dense score matrix, every row sorted, each
    positive ranked pessimistically by where its score falls in the sorted row; exact fractions
    where the metric is rational. Hypothesis cases with heavy ties, duplicates, unknown labels,
    queries without positives (both ``no_positive`` policies) and the protocol exclusions.
(b) pytorch-metric-learning's ``AccuracyCalculator`` and torchmetrics' retrieval metrics on
    tie-free cases, where their definitions and embeval's coincide (see each test for how).
(c) The new metrics do not depend on the block size or on the gallery shards.
"""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.budget import examples
from helpers.cli import cli
from helpers.oracle import Case, gauss_case, int_cases, keep_mask, min_gap, score_matrix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embeval
from embeval.evaluation import evaluation_stats, summarize

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
NEW = ("MRR", "MAP@R", "R-precision")
PER_QUERY = ("rr", "map_at_r", "r_precision")


def new_keys(ks) -> list[str]:
    return [*NEW, *(f"P@{k}" for k in ks), *(f"nDCG@{k}" for k in ks)]


# ---------------------------------------------------------------------------
# (a) brute force over the sorted dense matrix
# ---------------------------------------------------------------------------

def brute_force(case: Case, *, metric: str, ks, no_positive: str = "skip",
                exclude_same_camera: bool = False, exclude_self: bool = False):
    """(metrics, per_query) of the new rank metrics, from each query's fully sorted row.

    The position rule (DESIGN.md section 3): the j-th positive by descending score is at position
    N_j = j + #negatives scoring ≥ s_j (inside a run of equal scores the negatives first, then
    the positives in consecutive places); j positives are ranked up to it. (Until issue 23 this
    oracle encoded N_j = #kept items scoring ≥ s_j, which put tied positives all at the last
    place of their run.) tests/engine/test_tied_positives.py checks the rule itself against
    every ordering of the tied items.
    """
    S = score_matrix(case.qe, case.ge, metric)
    keep = keep_mask(case.ql, case.gl, case.qc, case.gc, exclude_same_camera=exclude_same_camera,
                     exclude_self=exclude_self)
    per = {name: [] for name in (*PER_QUERY, *(f"P@{k}" for k in ks), *(f"nDCG@{k}" for k in ks))}
    for i in range(len(case.ql)):
        s = S[i, keep[i]]
        pos = (case.gl[keep[i]] == case.ql[i]) & (case.ql[i] >= 0)
        P = int(pos.sum())
        if P == 0:
            for values in per.values():
                values.append(math.nan)
            continue
        negatives = s[~pos]
        N = np.array([j + int((negatives >= sj).sum())
                      for j, sj in enumerate(sorted(s[pos], reverse=True), 1)])
        TP = np.arange(1, P + 1)
        first_hit = int(N[0])
        per["rr"].append(float(Fraction(1, first_hit)))
        per["map_at_r"].append(float(sum((Fraction(int(t), int(n)) for t, n in zip(TP, N) if n <= P),
                                         Fraction(0)) / P))
        per["r_precision"].append(float(Fraction(int((N <= P).sum()), P)))
        for k in ks:
            per[f"P@{k}"].append(float(Fraction(int((N <= k).sum()), k)))
            dcg = math.fsum(1 / math.log2(n + 1) for n in N if n <= k)
            ideal = math.fsum(1 / math.log2(r + 1) for r in range(1, min(P, k) + 1))
            per[f"nDCG@{k}"].append(dcg / ideal)
    names = {"MRR": "rr", "MAP@R": "map_at_r", "R-precision": "r_precision",
             **{f"P@{k}": f"P@{k}" for k in ks}, **{f"nDCG@{k}": f"nDCG@{k}" for k in ks}}
    metrics = {}
    for key, name in names.items():
        values = [v for v in per[name] if not math.isnan(v)]
        if no_positive == "zero":
            values += [0.0] * (len(per[name]) - len(values))
        metrics[key] = math.fsum(values) / len(values) if values else math.nan
    return metrics, {k: np.array(per[k]) for k in PER_QUERY}


def assert_close(got: float, want: float, tol: float = 1e-12, what: str = "") -> None:
    if math.isnan(want):
        assert math.isnan(got), what
    else:
        assert abs(got - want) <= tol, f"{what}: got {got!r}, want {want!r}"


def check(case: Case, *, metric: str, ks, **kw) -> embeval.EvalResult:
    q, g = case.sets()
    res = embeval.evaluate(q, g, ks=ks, metric=metric, device="cpu", **kw)
    want, want_pq = brute_force(case, metric=metric, ks=ks, **kw)
    names = list(res.metrics)
    after = names.index("mINP") + 1
    assert names[after:after + len(want)] == new_keys(ks)  # cmc's order
    for key, value in want.items():
        assert_close(res.metrics[key], value, what=key)
    for key, values in want_pq.items():
        got = res.per_query[key].numpy()
        assert got.dtype == np.float64 and got.shape == values.shape
        for i, (a, b) in enumerate(zip(got, values)):
            assert_close(float(a), float(b), what=f"{key}[{i}]")
    return res


def hand_case() -> Case:
    """One query (label 0), inner product in 1-D: scores 3, 3, 1, 2, 0, 1 with labels
    0, 1, 0, 1, 1, 0. Positives: 3 (tied with a negative: position 2), 1 and 1 (tied with each
    other after two negatives: positions 4 and 5)."""
    return Case(qe=np.array([[1.0]]), ql=np.array([0]),
                ge=np.array([[3.0], [3.0], [1.0], [2.0], [0.0], [1.0]]),
                gl=np.array([0, 1, 0, 1, 1, 0]))


def test_hand_example_pessimistic_ties() -> None:
    res = check(hand_case(), metric="inner", ks=(1, 2, 5))
    m = res.metrics
    assert m["MRR"] == 1 / 2  # a negative ties the best positive
    assert m["MAP@R"] == pytest.approx((1 / 2) / 3, abs=1e-15)  # R = 3: only N=2 is within
    assert m["R-precision"] == pytest.approx(1 / 3, abs=1e-15)
    assert (m["P@1"], m["P@2"], m["P@5"]) == (0.0, 0.5, 0.6)
    ideal5 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["nDCG@1"] == 0.0
    assert m["nDCG@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)), abs=1e-15)
    assert m["nDCG@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6))
                                        / ideal5, abs=1e-15)


def test_everything_tied_scores_badly() -> None:
    """One point for every item: each positive ranks last, as the house rule wants."""
    case = Case(qe=np.ones((2, 2)), ql=np.array([0, 1]), ge=np.ones((6, 2)),
                gl=np.array([0, 0, 1, 2, 2, 2]))
    m = check(case, metric="inner", ks=(1, 6)).metrics
    assert m["MRR"] == pytest.approx((1 / 5 + 1 / 6) / 2)
    assert m["MAP@R"] == m["R-precision"] == m["P@1"] == m["nDCG@1"] == 0.0
    assert m["P@6"] == pytest.approx((2 / 6 + 1 / 6) / 2)


@st.composite
def int_options(draw, **case_kw):
    case = draw(int_cases(**case_kw))
    ks = tuple(sorted(draw(st.lists(st.integers(1, len(case.gl)), min_size=1, max_size=3,
                                    unique=True))))
    return case, ks, draw(st.sampled_from(["skip", "zero"])), draw(st.sampled_from(["inner",
                                                                                   "sq_euclid"]))


@settings(max_examples=examples(60), **SETTINGS)
@given(int_options())
def test_brute_force_heavy_ties(args) -> None:
    case, ks, no_positive, metric = args
    check(case, metric=metric, ks=ks, no_positive=no_positive)


@settings(max_examples=examples(30), **SETTINGS)
@given(int_options(cameras=True))
def test_brute_force_exclude_same_camera(args) -> None:
    case, ks, no_positive, metric = args
    check(case, metric=metric, ks=ks, no_positive=no_positive, exclude_same_camera=True)


@settings(max_examples=examples(30), **SETTINGS)
@given(int_options(same_set=True))
def test_brute_force_exclude_self(args) -> None:
    case, ks, no_positive, metric = args
    check(case, metric=metric, ks=ks, no_positive=no_positive, exclude_self=True)


def test_no_positive_policies_and_all_invalid() -> None:
    """Queries without positives: skipped, or counted as 0; nan (JSON null) when none has one."""
    case = Case(qe=np.array([[1.0], [1.0], [2.0]]), ql=np.array([0, -1, 5]),
                ge=np.array([[1.0], [2.0], [0.0]]), gl=np.array([1, 0, 0]))
    skip = check(case, metric="inner", ks=(1, 2)).metrics
    zero = check(case, metric="inner", ks=(1, 2), no_positive="zero").metrics
    for key in new_keys((1, 2)):
        assert zero[key] == pytest.approx(skip[key] / 3, abs=1e-15), key
    none = Case(qe=case.qe, ql=np.array([-1, 5, 7]), ge=case.ge, gl=case.gl)
    res = check(none, metric="inner", ks=(1,))
    assert all(math.isnan(res.metrics[k]) for k in new_keys((1,)))
    assert all(torch.isnan(res.per_query[k]).all() for k in PER_QUERY)


# ---------------------------------------------------------------------------
# (b) peers, on tie-free cases
# ---------------------------------------------------------------------------

def tie_free(seed: int, nq: int, ng: int, d: int, n_labels: int, *, same_set: bool = False) -> Case:
    """The first gaussian case from ``seed`` on whose float64 scores in a row differ by far more
    than float32's rounding, so every library sorts each row the same way."""
    for s in range(seed, seed + 100):
        case = gauss_case(s, nq, ng, d, same_set=same_set, n_labels=n_labels)
        if min_gap(score_matrix(case.qe, case.ge, "inner")) > 1e-5:
            return case
    raise AssertionError("no tie-free case")


def pml_calculator():
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    # k=None: PML's knn keeps every reference item (its MRR and mAP then see the whole row;
    # MAP@R and R-precision need k ≥ the largest R). avg_of_avgs=False: the mean over queries.
    return AccuracyCalculator(
        include=("mean_average_precision_at_r", "r_precision", "precision_at_1",
                 "mean_reciprocal_rank", "mean_average_precision"),
        k=None, avg_of_avgs=False, device=torch.device("cpu"),
        knn_func=CustomKNN(DotProductSimilarity(normalize_embeddings=False)),
        kmeans_func=lambda x, n: None)


PML_KEYS = {"mean_average_precision_at_r": "MAP@R", "r_precision": "R-precision",
            "precision_at_1": "P@1", "mean_reciprocal_rank": "MRR", "mean_average_precision": "mAP"}


def pml_tolerance(key: str) -> float:
    """PML averages float64 per-query values, but its reciprocal ranks are float32."""
    return 1e-6 if key == "mean_reciprocal_rank" else 1e-12


def test_pytorch_metric_learning_query_and_reference() -> None:
    """Separate query and reference sets. PML's labels must be >= 0 (it has no unknown label):
    queries whose label has no reference item are "lone" and left out, as ``skip`` does."""
    case = tie_free(7, 40, 160, 12, 10)
    case.ql[case.ql < 0] = 10  # no reference item has label 10: lone queries
    case.gl[case.gl < 0] = 11
    q, g = case.sets()
    acc = pml_calculator().get_accuracy(q.embeddings, q.labels, g.embeddings, g.labels,
                                        ref_includes_query=False)
    res = embeval.evaluate(q, g, ks=(1,), metric="inner", device="cpu")
    assert res.n_valid < res.n_query  # lone queries present
    for pml, ours in PML_KEYS.items():
        assert acc[pml] == pytest.approx(res.metrics[ours], abs=pml_tolerance(pml)), pml


def test_pytorch_metric_learning_leave_one_out() -> None:
    """``get_accuracy(x, labels)`` with no reference: PML drops each query from its own neighbours
    and R = the label's count - 1, which is embeval's ``exclude_self`` on the same file."""
    case = tie_free(11, 0, 120, 8, 15, same_set=True)
    case.gl[case.gl < 0] = 15  # singletons and small classes: some lone queries
    case.ql = case.gl.copy()
    q, g = case.sets()
    acc = pml_calculator().get_accuracy(q.embeddings, q.labels)
    res = embeval.evaluate(q, g, ks=(1,), metric="inner", exclude_self=True, device="cpu")
    for pml, ours in PML_KEYS.items():
        assert acc[pml] == pytest.approx(res.metrics[ours], abs=pml_tolerance(pml)), pml


@pytest.mark.slow
@pytest.mark.parametrize(("no_positive", "empty_target_action"), [("skip", "skip"), ("zero", "neg")])
def test_torchmetrics_retrieval(no_positive: str, empty_target_action: str) -> None:
    """torchmetrics' grouped retrieval metrics over every (query, kept gallery item) pair.

    Their ``empty_target_action`` is the ``--no-positive`` policy (``neg`` = ``zero``). Their
    precision and reciprocal rank ignore a relevant item whose ``pred`` is <= 0, so the scores
    are shifted to be positive (order unchanged). They compute in float32: 1e-6.
    """
    from torchmetrics import retrieval as R

    case = tie_free(3, 30, 50, 6, 5, same_set=True)
    case.ql = case.gl.copy()
    ks = (1, 4, 50)  # 50 = every item: more than the 49 each query keeps (divisor still 50)
    q, g = case.sets()
    res = embeval.evaluate(q, g, ks=ks, metric="inner", exclude_self=True,
                           no_positive=no_positive, device="cpu")
    S = score_matrix(case.qe, case.ge, "inner")
    keep = keep_mask(case.ql, case.gl, exclude_self=True)
    rows, cols = np.nonzero(keep)
    preds = torch.tensor(S[rows, cols] - S.min() + 1.0)
    target = torch.tensor((case.gl[cols] == case.ql[rows]) & (case.ql[rows] >= 0))
    indexes = torch.tensor(rows)
    peers = {"MRR": R.RetrievalMRR(empty_target_action=empty_target_action),
             "R-precision": R.RetrievalRPrecision(empty_target_action=empty_target_action),
             "mAP": R.RetrievalMAP(empty_target_action=empty_target_action)}
    for k in ks:
        peers[f"P@{k}"] = R.RetrievalPrecision(top_k=k, empty_target_action=empty_target_action)
        peers[f"nDCG@{k}"] = R.RetrievalNormalizedDCG(top_k=k,
                                                      empty_target_action=empty_target_action)
    assert 0 < res.n_valid < res.n_query
    for key, metric in peers.items():
        assert float(metric(preds, target, indexes=indexes)) == pytest.approx(
            res.metrics[key], abs=1e-6), key


# ---------------------------------------------------------------------------
# (c) blocks and shards
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_blocks_and_shards_do_not_change_them(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ge = rng.integers(-2, 3, (37, 3)).astype(np.float64)
    ge[20:] = ge[:17]  # duplicates: ties across blocks and shards
    ql = rng.integers(-1, 6, 23)
    case = Case(qe=ge[rng.integers(0, 37, 23)] + rng.integers(-1, 2, (23, 3)), ql=ql, ge=ge,
                gl=rng.integers(-1, 5, 37))
    ks = (1, 3, 10)
    q, g = case.sets()
    kw = dict(ks=ks, metric="inner", no_positive="zero", device="cpu")
    base = check(case, metric="inner", ks=ks, no_positive="zero")
    keys = new_keys(ks)
    for block_size in (1, 4, 16):
        other = embeval.evaluate(q, g, block_size=block_size, **kw)
        assert [other.metrics[k] for k in keys] == [base.metrics[k] for k in keys]
    parts = [evaluation_stats(q, g, shard=(i, 3), ks=ks, metric="inner", device="cpu",
                              block_size=5) for i in (2, 0, 1)]
    stats = parts[0].stats.merge(parts[1].stats).merge(parts[2].stats)
    merged = summarize(stats, g.labels, ks=ks, no_positive="zero")
    assert [merged.metrics[k] for k in keys] == [base.metrics[k] for k in keys]

    qf = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels)
    gf = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels)
    flags = ["-k", "1", "3", "10", "--metric", "inner", "--no-positive", "zero"]
    for i in range(3):
        rc, _, err = cli(capsys, "cmc", qf, gf, *flags, "--shard", f"{i}/3",
                         "--out-part", tmp_path / f"part{i}.safetensors")
        assert rc == 0, err
    from_parts = embeval.merge_partials([str(tmp_path / "part*.safetensors")])
    assert [from_parts.metrics[k] for k in keys] == [base.metrics[k] for k in keys]
    for key in PER_QUERY:
        torch.testing.assert_close(from_parts.per_query[key], base.per_query[key], rtol=0, atol=0,
                                   equal_nan=True, msg=key)


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------

def test_cmc_json_table_and_per_query_csv(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    case = hand_case()
    q, g = case.sets()
    qf = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels)
    gf = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels)
    rc, out, err = cli(capsys, "cmc", qf, gf, "-k", "1", "2", "--metric", "inner", "--json",
                       "--per-query", tmp_path / "pq.csv")
    assert rc == 0, err
    metrics = json.loads(out)["metrics"]
    assert list(metrics) == ["rank1", "rank2", "mAP", "mINP", "MRR", "MAP@R", "R-precision",
                             "P@1", "P@2", "nDCG@1", "nDCG@2"]
    assert metrics["MRR"] == 0.5 and metrics["P@2"] == 0.5
    rows = list(csv.DictReader(open(tmp_path / "pq.csv")))
    assert list(rows[0])[-3:] == ["rr", "map_at_r", "r_precision"]
    assert list(rows[0])[:8] == ["index", "label", "n_pos", "first_rank", "last_rank", "ap",
                                 "hard_pos", "hard_neg"]  # the existing columns first, unchanged
    assert (rows[0]["rr"], float(rows[0]["map_at_r"]), float(rows[0]["r_precision"])) == \
        ("0.5", pytest.approx(1 / 6, abs=1e-6), pytest.approx(1 / 3, abs=1e-6))
    rc, out, err = cli(capsys, "cmc", qf, gf, "-k", "2", "--metric", "inner")
    assert rc == 0, err
    for word in ("MRR", "MAP@R", "R-precision", "P@2", "nDCG@2", "50.00%"):
        assert word in out



def test_ndcg_discounts_are_libm_log2_for_every_rank() -> None:
    """nDCG's 1/log2(N + 1) comes from math.log2 for every rank up to 2·10^5: torch's vectorised
    log2 differs from it in the last bit for some ranks (15 of 2·10^5 here) and its results
    changed between runs of one process (seen: nDCG@5 ...503620 vs ...50402 on the same ranks)."""
    from embeval import metrics as M

    ranks = torch.arange(1, 200_000)
    want = torch.tensor([1.0 / math.log2(r + 1) for r in ranks.tolist()], dtype=torch.float64)
    assert torch.equal(M._discount(ranks), want)
    assert torch.equal(M._discount(ranks.flip(0)), want.flip(0))
