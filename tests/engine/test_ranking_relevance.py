"""Per-query relevance in the engine against the float64 brute force (tests/helpers/oracle.py),
and its invariances: label-equivalent lists, backends, blocks, shards, gallery order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embeval
from embeval.data.relevance import Relevance
from embeval.engine import Protocol, rank_stats
from embeval.engine.hardest import hardest_negatives

try:
    from helpers.data import assert_same, sets
    from helpers.oracle import Case, assert_matches, int_cases
except ImportError:  # tests/ imported as a package
    from tests.helpers.data import assert_same, sets
    from tests.helpers.oracle import Case, assert_matches, int_cases

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def draw_lists(data, n_query: int, n_gallery: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per query: positives and junk (disjoint gallery indices), some queries with neither."""
    pos, junk = [], []
    for _ in range(n_query):
        mark = data.draw(st.lists(st.sampled_from([0, 0, 1, -1]), min_size=n_gallery,
                                  max_size=n_gallery))
        pos.append([j for j, m in enumerate(mark) if m == 1])
        junk.append([j for j, m in enumerate(mark) if m == -1])
    return pos, junk


def to_relevance(pos, junk, n_gallery: int, *, repeat: bool = False) -> Relevance:
    q = [i for i, p in enumerate(pos) for _ in p] + [i for i, j in enumerate(junk) for _ in j]
    g = [x for p in pos for x in p] + [x for j in junk for x in j]
    r = [1] * sum(map(len, pos)) + [-1] * sum(map(len, junk))
    if repeat:  # identical duplicates count once
        q, g, r = q + q[::2], g + g[::2], r + r[::2]
    return Relevance.from_pairs(torch.tensor(q, dtype=torch.int64), torch.tensor(g, dtype=torch.int64),
                                torch.tensor(r), n_query=len(pos), n_gallery=n_gallery)


@pytest.mark.slow
@settings(max_examples=examples(150), **SETTINGS)
@given(case=int_cases(cameras=True), metric=st.sampled_from(["inner", "sq_euclid"]),
       backend=st.sampled_from(["torch", "numba"]), cam=st.booleans(), data=st.data())
def test_relevance_matches_the_brute_force(case: Case, metric, backend, cam, data) -> None:
    """Exact ties (small integers, duplicated rows): junk tied with positives, queries without
    positives, the camera rule on top."""
    pos, junk = draw_lists(data, len(case.ql), len(case.gl))
    knn_k = data.draw(st.integers(1, len(case.gl)), label="knn_k")
    ks = (1, min(3, len(case.gl)))
    q, g = case.sets()
    res = embeval.evaluate(q, g, ks=ks, knn_k=knn_k, pr=True, metric=metric, device="cpu",
                           backend=backend, exclude_same_camera=cam, block_size=3,
                           relevance=to_relevance(pos, junk, len(case.gl), repeat=True))
    ref = case.ref(metric=metric, ks=ks, knn_k=knn_k, pr=True, exclude_same_camera=cam,
                   relevance=(pos, junk))
    assert_matches(res, ref, exact=True)
    for i, row in enumerate(res.stats.topk_indices.tolist()):  # junk never in the top-k
        assert not set(row) & set(junk[i])


@pytest.mark.slow
@settings(max_examples=examples(60), **SETTINGS)
@given(case=int_cases(same_set=True, cameras=True), cam=st.booleans(), data=st.data())
def test_relevance_with_exclude_self(case: Case, cam, data) -> None:
    pos, junk = draw_lists(data, len(case.ql), len(case.gl))
    q, g = case.sets()
    for backend in ("torch", "numba"):
        res = embeval.evaluate(q, g, ks=(1,), knn_k=1, metric="inner", device="cpu",
                               backend=backend, exclude_self=True, exclude_same_camera=cam,
                               relevance=to_relevance(pos, junk, len(case.gl)))
        ref = case.ref(metric="inner", ks=(1,), knn_k=1, exclude_self=True,
                       exclude_same_camera=cam, relevance=(pos, junk))
        assert_matches(res, ref, exact=True)


def label_relevance(q: embeval.EmbeddingSet, g: embeval.EmbeddingSet) -> Relevance:
    qid, gid = embeval.positive_pairs(q.labels, g.labels)
    return Relevance.from_pairs(qid, gid, torch.ones_like(qid), n_query=q.n, n_gallery=g.n)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("protocol", [Protocol(), Protocol(exclude_same_camera=True)])
def test_label_equality_as_a_list_is_bit_identical(backend: str, protocol: Protocol) -> None:
    q, g = sets(nq=200, ng=1500)
    kw = dict(metric="cosine", protocol=protocol, topk=7, device="cpu", backend=backend,
              block_size=301)
    assert_same(rank_stats(q, g, **kw), rank_stats(q, g, relevance=label_relevance(q, g), **kw))


def test_label_equality_as_a_list_with_exclude_self() -> None:
    q, _ = sets(nq=300, ng=10)
    kw = dict(metric="inner", protocol=Protocol(exclude_self=True), topk=4, device="cpu")
    for backend in ("torch", "numba"):
        assert_same(rank_stats(q, q, backend=backend, **kw),
                    rank_stats(q, q, backend=backend, relevance=label_relevance(q, q), **kw))


def random_relevance(nq: int, ng: int, per: int, seed: int = 0) -> Relevance:
    gen = torch.Generator().manual_seed(seed)
    qid = torch.arange(nq).repeat_interleave(2 * per)
    gid = torch.randint(0, ng, (len(qid),), generator=gen)
    rel = torch.tensor([1, -1]).repeat(nq * per)
    key = qid * ng + gid  # keep one relevance per pair
    _, first = np.unique(key.numpy(), return_index=True)
    first = torch.from_numpy(first)
    return Relevance.from_pairs(qid[first], gid[first], rel[first], n_query=nq, n_gallery=ng)


@pytest.mark.slow
def test_blocks_backends_and_shards_agree() -> None:
    q, g = sets(nq=150, ng=2100, integer=True)
    rel = random_relevance(q.n, g.n, 20)
    kw = dict(metric="inner", topk=5, device="cpu", relevance=rel,
              protocol=Protocol(exclude_same_camera=False))
    whole = rank_stats(q, g, backend="numba", **kw)
    assert_same(whole, rank_stats(q, g, backend="numba", block_size=97, **kw))
    assert_same(whole, rank_stats(q, g, backend="torch", block_size=500, **kw))
    parts = [rank_stats(q, g, backend=b, gallery_range=r, **kw)
             for b, r in (("numba", (0, 700)), ("torch", (700, 1333)), ("numba", (1333, 2100)))]
    assert_same(whole, parts[0].merge(parts[1]).merge(parts[2]))
    assert int(whole.n_pos.sum()) > 0 and int(whole.n_neg.min()) < g.n - 20


def test_gallery_order_does_not_matter() -> None:
    q, g = sets(nq=60, ng=900, integer=True)
    rel = random_relevance(q.n, g.n, 15, seed=3)
    perm = torch.randperm(g.n, generator=torch.Generator().manual_seed(1))
    inverse = torch.argsort(perm)  # new index of old item j
    g2 = embeval.EmbeddingSet(g.embeddings[perm], g.labels[perm])
    rel2 = Relevance.from_pairs(rel.query_ids(), inverse[rel.gallery],
                                torch.where(rel.positive, 1, -1), n_query=q.n, n_gallery=g.n)
    a = embeval.evaluate(q, g, ks=(1, 5), metric="inner", device="cpu", relevance=rel)
    b = embeval.evaluate(q, g2, ks=(1, 5), metric="inner", device="cpu", relevance=rel2)
    assert a.metrics == b.metrics
    for key in ("n_pos", "first_rank", "last_rank", "ap"):
        assert torch.equal(a.per_query[key], b.per_query[key]), key


def test_hardest_negative_skips_junk_and_listed_positives() -> None:
    q = embeval.EmbeddingSet(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    g = embeval.EmbeddingSet(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]]),
                             torch.tensor([5, 5, 5, 5]))
    rel = Relevance.from_pairs(torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([-1, 1]),
                               n_query=1, n_gallery=4)
    stats = rank_stats(q, g, metric="inner", device="cpu", relevance=rel, topk=2)
    assert stats.topk_indices.tolist() == [[1, 2]]  # item 0 (junk) scores best: never listed
    assert stats.n_neg.tolist() == [2] and float(stats.max_neg[0]) == 0.5
    assert hardest_negatives(q, g, stats.max_neg, metric="inner", relevance=rel).tolist() == [2]


def test_relevance_for_other_sets_is_refused() -> None:
    q, g = sets(nq=5, ng=30)
    with pytest.raises(embeval.OptionError, match="is for 5 queries × 29 gallery items"):
        rank_stats(q, g, device="cpu", relevance=random_relevance(5, 29, 2))
    with pytest.raises(embeval.OptionError, match="aggregate mean cannot be combined"):
        embeval.evaluate(q, g, device="cpu", aggregate="mean",
                         relevance=random_relevance(5, 30, 2))
