"""Bootstrap intervals (embeval.uncertainty.intervals) against a plain numpy bootstrap that redraws
the documented resampling stream (ci_oracle.py), and the invariances the seed promises: same
seed → same bounds, whatever the block size, shard split, gallery order or thread count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ci_oracle import percentile, plain_replicates, resampled_queries, tpir
from helpers.data import sets

import embeval
from embeval.evaluation import evaluation_stats, summarize
from embeval.uncertainty import bootstrap, intervals
from embeval.uncertainty.terms import mean_terms
from embeval.verification.identify import identify


@pytest.fixture(scope="module")
def case():
    q, g = sets(nq=160, ng=400, d=16, classes=25, seed=3)
    return q, g


def oracle_columns(res) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-query values and the queries each metric averages over, from the result's per-query
    columns and the definitions (not from embeval.uncertainty.terms)."""
    pq = {k: v.numpy() for k, v in res.per_query.items()}
    valid = pq["n_pos"] > 0
    over = valid if res.options["no_positive"] == "skip" else np.ones_like(valid)
    labels = res.stats.query_labels.numpy()
    z = np.nan_to_num
    return {
        "rank1": ((pq["first_rank"] <= 1).astype(float), over),
        "rank5": ((pq["first_rank"] <= 5).astype(float), over),
        "accuracy": ((pq["first_rank"] <= 1).astype(float), np.ones_like(valid)),
        "mAP": (z(pq["ap"]), over),
        "mINP": (z(pq["n_pos"] / pq["last_rank"]), over),
        "MRR": (z(pq["rr"]), over),
        "nDCG@5": (z(pq["ndcg@5"]), over),
        "hard_neg": (z(pq["hard_neg"].astype(float)), ~np.isnan(pq["hard_neg"])),
        "maxF1": (z(pq["max_f1"]), over),
        "knn_accuracy": (((pq["knn_pred"] == labels) & (labels >= 0)).astype(float),
                         np.ones_like(valid)),
    }


@pytest.mark.parametrize("by,no_positive", [("query", "skip"), ("label", "zero")])
def test_intervals_equal_a_plain_bootstrap_on_the_documented_stream(case, by, no_positive):
    q, g = case
    res = embeval.evaluate(q, g, ks=(1, 5), knn_k=5, pr=True, no_positive=no_positive,
                           device="cpu")
    assert (res.stats.query_labels < 0).any()  # unknown labels: units of their own
    ci = intervals(res, n_resamples=300, seed=11, by=by, level=0.9)
    reps = plain_replicates(oracle_columns(res), res.stats.query_labels.numpy(), by, 300, 11)
    for key, r in reps.items():
        want, got = percentile(r, 0.9), ci.bounds[key]
        assert got is not None and want is not None
        assert abs(got[0] - want[0]) <= 1e-9 and abs(got[1] - want[1]) <= 1e-9, (key, got, want)


def test_label_units_resample_whole_identities():
    """By label, a resample holds every query of a drawn identity (so each identity's count of
    queries divides the count of its label), unknown-label queries one by one."""
    labels = np.array([3, 3, 3, -1, 5, 5, -1, 3])
    for sel in resampled_queries(labels, "label", 50, 2):
        drawn = labels[sel]
        assert (drawn == 3).sum() % 4 == 0 and (drawn == 5).sum() % 2 == 0
    # and the code agrees: same weights per unit
    unit, n = bootstrap.resampling_units(torch.from_numpy(labels), "label")
    assert n == 4 and len(set(unit[labels == 3])) == 1 and len(set(unit[labels < 0])) == 2


@pytest.mark.parametrize("rule", ["embeval", "insightface"])
def test_tpir_intervals_equal_a_plain_bootstrap(case, rule):
    q, g = case
    labels = torch.where(q.labels % 5 == 0, 1000 + q.labels, q.labels)  # absent: non-mated
    q = embeval.EmbeddingSet(q.embeddings, labels)
    res = identify(q, g, fpirs=[0.1, 0.3], ks=[1, 5], fpir_rule=rule, device="cpu")
    ci = intervals(res, n_resamples=150, seed=5, by="label")
    stats = res.stats
    mated = (stats.n_pos > 0).numpy()
    top = (stats.pos_offsets[1:] - 1).clamp_min(0)
    best = stats.pos_scores[top.clamp_max(len(stats.pos_scores) - 1)].numpy().astype(float)
    decision = np.where(mated, best, stats.max_neg.numpy().astype(float))
    first = embeval.metrics.first_hit_rank(stats).numpy()
    keys = [k for k in res.metrics if k.startswith("TPIR")]
    assert len(keys) == 4
    for key in keys:
        f, _, rank = key.removeprefix("TPIR@FPIR=").partition(",rank")
        reps = [tpir(mated[s], decision[s], first[s], float(f), int(rank or 1), rule)
                for s in resampled_queries(stats.query_labels.numpy(), "label", 150, 5)]
        want, got = percentile(reps, 0.95), ci.bounds[key]
        assert abs(got[0] - want[0]) <= 1e-9 and abs(got[1] - want[1]) <= 1e-9, (key, got, want)


def test_same_seed_same_bounds_other_seed_other_bounds(case):
    q, g = case
    res = embeval.evaluate(q, g, ks=(1, 5), device="cpu")
    a = intervals(res, n_resamples=200, seed=1)
    assert intervals(res, n_resamples=200, seed=1).bounds == a.bounds
    b = intervals(res, n_resamples=200, seed=2)
    assert b.bounds["mAP"] != a.bounds["mAP"] and b.bounds["rank1"] != a.bounds["rank1"]


def test_chunking_does_not_change_the_draws(case, monkeypatch):
    q, g = case
    res = embeval.evaluate(q, g, ks=(1, 5), device="cpu")
    whole = intervals(res, n_resamples=200, seed=4).bounds
    monkeypatch.setattr(bootstrap, "CHUNK_CELLS", 7 * 160)  # 7 resamples per matrix product
    assert intervals(res, n_resamples=200, seed=4).bounds == whole


def test_intervals_contain_the_point_estimate(case):
    q, g = case
    res = embeval.evaluate(q, g, ks=(1, 5, 10), knn_k=5, pr=True, device="cpu")
    ident = identify(q, g, fpirs=[0.1, 0.3], ks=[1, 5], device="cpu")
    for r in (res, ident):
        ci = intervals(r, n_resamples=1000)
        for key, bound in ci.bounds.items():
            lo, hi = bound
            assert lo <= r.metrics[key] <= hi and lo < hi, (key, bound, r.metrics[key])


def test_width_shrinks_as_one_over_sqrt_q():
    """Queries from one population against one gallery: 4x the queries, half the width."""
    q, g = sets(nq=750, ng=300, d=16, classes=20, seed=8)
    widths = []
    for part in (slice(0, 150), slice(150, 750)):
        sub = embeval.EmbeddingSet(q.embeddings[part], q.labels[part])
        ci = intervals(embeval.evaluate(sub, g, ks=(1,), device="cpu"), n_resamples=1000)
        widths.append({k: ci.bounds[k][1] - ci.bounds[k][0] for k in ("mAP", "rank1", "mINP")})
    for key in widths[0]:
        assert 1.6 <= widths[0][key] / widths[1][key] <= 2.4, (key, widths)


def bounds_and_values(res):
    return intervals(res, n_resamples=200, seed=9).bounds, mean_terms(res)


def assert_same_terms(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k].values, b[k].values) and torch.equal(a[k].include, b[k].include), k


def test_block_size_shards_gallery_order_and_threads_do_not_matter(case):
    q, g = case
    opts = {"ks": (1, 5), "knn_k": 3, "pr": True}
    ref_bounds, ref_terms = bounds_and_values(embeval.evaluate(q, g, device="cpu", **opts))
    variants = {f"block_size={b}": embeval.evaluate(q, g, device="cpu", block_size=b, **opts)
                for b in (1, 37)}
    parts = [evaluation_stats(q, g, ks=(1, 5), knn_k=3, shard=(i, 3), device="cpu")
             for i in range(3)]
    merged = parts[0].stats.merge(parts[1].stats).merge(parts[2].stats)
    variants["3 shards"] = summarize(merged, g.labels, ks=(1, 5), knn_k=3, pr=True,
                                     options=parts[0].options)
    perm = torch.randperm(g.n, generator=torch.Generator().manual_seed(0))
    shuffled = embeval.EmbeddingSet(g.embeddings[perm], g.labels[perm], g.cameras[perm])
    variants["permuted gallery"] = embeval.evaluate(q, shuffled, device="cpu", **opts)
    for threads in (1, 2):
        torch.set_num_threads(threads)  # the autouse fixture restores the count
        variants[f"{threads} threads"] = embeval.evaluate(q, g, device="cpu", **opts)
    for name, res in variants.items():
        bounds, terms = bounds_and_values(res)
        assert_same_terms(terms, ref_terms)
        assert bounds == ref_bounds, name


def test_no_interval_where_nothing_is_included():
    """Every query without positives and no_positive=skip: the metric is nan, its interval None."""
    q = embeval.EmbeddingSet(torch.eye(3), torch.tensor([7, 8, -1]))
    g = embeval.EmbeddingSet(torch.eye(3), torch.tensor([0, 1, 2]))
    res = embeval.evaluate(q, g, ks=(1,), device="cpu")
    ci = intervals(res, n_resamples=50)
    assert math.isnan(res.metrics["mAP"]) and ci.bounds["mAP"] is None
    assert ci.bounds["accuracy"] == (0.0, 0.0)
