"""k-reciprocal re-ranking (embeval.rerank.kreciprocal) against a dense reimplementation of the
reference ``re_ranking`` (tests/helpers/rerank_reference.py), itself checked on a hand case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.budget import examples
from helpers.rerank_reference import k_reciprocal, re_ranking
from hypothesis import given, settings
from hypothesis import strategies as st

import embeval
from embeval import metrics as M
from embeval.engine.similarity import aux, canonical_dot, transform
from embeval.errors import OptionError
from embeval.rerank.kreciprocal import reranked_stats
from embeval.rerank.options import RerankOptions


def test_reference_on_a_hand_case() -> None:
    # four points on a line at 0, 1, 3, 7: query = item 0, gallery = items 1, 2, 3
    x = np.array([0.0, 1.0, 3.0, 7.0])
    d = np.abs(x[:, None] - x[None, :])
    e = d ** 2 / (d ** 2).max(axis=1, keepdims=True)  # row-normalised squared distances
    rank = np.argsort(e, axis=1, kind="stable")
    assert k_reciprocal(rank, 0, 1).tolist() == [0, 1]  # 0 <-> 1 mutual nearest
    assert k_reciprocal(rank, 3, 1).tolist() == [3]  # 7's nearest (3) prefers 1
    # k1 = 1, k2 = 1, half = round(0.5) = 0: each R½ is the item alone; V rows over R*
    final = re_ranking(d[:1, 1:], d[:1, :1], d[1:, 1:], k1=1, k2=1, lambda_value=0.5)
    v0 = np.exp(-e[0, [0, 1]]) / np.exp(-e[0, [0, 1]]).sum()   # item 0: R* = {0, 1}
    v1 = np.exp(-e[1, [0, 1]]) / np.exp(-e[1, [0, 1]]).sum()   # item 1: R* = {0, 1}
    m01 = np.minimum(v0, v1).sum()
    want_1 = 0.5 * (1 - m01 / (2 - m01)) + 0.5 * e[0, 1]
    # item 2 (at 3): its nearest is 1, which prefers 0: R*(2) = {2}; disjoint from {0, 1}
    want_2 = 0.5 * 1.0 + 0.5 * e[0, 2]
    assert final[0, 0] == pytest.approx(want_1, rel=1e-12)
    assert final[0, 1] == pytest.approx(want_2, rel=1e-12)
    assert final[0, 2] == pytest.approx(0.5 + 0.5 * e[0, 3], rel=1e-12)


def _canonical(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    qa, ga = aux(a, metric), aux(b, metric)
    i = torch.arange(len(a)).repeat_interleave(len(b))
    j = torch.arange(len(b)).repeat(len(a))
    return transform(canonical_dot(a[i], b[j]), qa[i], ga[j], metric).view(len(a), len(b))


def _distance(s: torch.Tensor, metric: str) -> np.ndarray:
    s64 = s.double().numpy()
    return np.clip(1 - s64, 0, None) if metric == "cosine" else np.clip(-s64, 0, None)


def reference_final(q: torch.Tensor, g: torch.Tensor, metric: str, k1: int, k2: int,
                    lam: float) -> np.ndarray:
    """The reference fed embeval's own (canonical float32) distances."""
    return re_ranking(_distance(_canonical(q, g, metric), metric),
                      _distance(_canonical(q, q, metric), metric),
                      _distance(_canonical(g, g, metric), metric), k1, k2, lam)


def oracle_metrics(final: np.ndarray, ql: np.ndarray, gl: np.ndarray,
                   keep: np.ndarray) -> tuple[list[float], list[int]]:
    """Per query with positives: AP and first-hit rank of the distances, pessimistic ties."""
    aps, first = [], []
    for i in range(len(ql)):
        r, k = final[i], keep[i]
        pos = (gl == ql[i]) & k & (ql[i] >= 0)
        if not pos.any():
            continue
        ps = np.sort(r[pos])
        aps.append(float(np.mean([(pos & (r <= t)).sum() / (k & (r <= t)).sum() for t in ps])))
        first.append(int((k & ~pos & (r <= ps[0])).sum()) + 1)
    return aps, first


def _sets(seed: int, qn: int, gn: int, dim: int, classes: int, cams: bool = False):
    rng = np.random.default_rng(seed)
    q = torch.from_numpy(rng.standard_normal((qn, dim)).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal((gn, dim)).astype(np.float32))
    ql, gl = rng.integers(0, classes, qn), rng.integers(0, classes, gn)
    qc = torch.from_numpy(rng.integers(0, 2, qn)) if cams else None
    gc = torch.from_numpy(rng.integers(0, 2, gn)) if cams else None
    return (embeval.EmbeddingSet(q, torch.from_numpy(ql), qc),
            embeval.EmbeddingSet(g, torch.from_numpy(gl), gc), ql, gl)


@pytest.mark.slow
@settings(max_examples=examples(12), deadline=None)
@given(seed=st.integers(0, 2**31), qn=st.integers(1, 10), gn=st.integers(2, 30),
       metric=st.sampled_from(["euclid", "sq_euclid", "cosine"]), k1=st.integers(1, 8),
       k2=st.integers(1, 4), lam=st.sampled_from([0.3, 0.05, 1.0]), cams=st.booleans())
def test_equals_the_reference(seed, qn, gn, metric, k1, k2, lam, cams) -> None:
    q, g, ql, gl = _sets(seed, qn, gn, 4, 3, cams)
    final = reference_final(q.embeddings, g.embeddings, metric, k1, k2, lam)
    keep = np.ones((qn, gn), bool)
    if cams:
        keep = ~((ql[:, None] == gl[None, :]) &
                 (q.cameras.numpy()[:, None] == g.cameras.numpy()[None, :]))
    opts = RerankOptions(method="k-reciprocal", k1=k1, k2=k2, lam=lam)
    k = min(3, gn)
    stats = reranked_stats(q, g, opts, metric=metric, topk=k, device="cpu",
                           protocol=embeval.Protocol(exclude_same_camera=cams))
    aps, first = oracle_metrics(final, ql, gl, keep)
    valid = (stats.n_pos > 0).numpy()
    assert M.average_precision(stats).numpy()[valid] == pytest.approx(aps, abs=1e-12)
    assert M.first_hit_rank(stats).numpy()[valid].tolist() == first
    # the top-k: the reference's best k (kept items), lower index first on ties
    masked = np.where(keep, final, np.inf)
    order = np.argsort(masked, axis=1, kind="stable")[:, :k]
    got = stats.topk_indices.numpy()
    for i in range(qn):
        n_kept = min(k, int(keep[i].sum()))
        assert got[i, :n_kept].tolist() == order[i, :n_kept].tolist()
        # cosine's float32 score of (i, j) and (j, i) can differ by an ulp (the transform
        # multiplies in a different order); the reference reads the (j, i) one for row i
        assert -stats.topk_scores.numpy()[i, :n_kept] == pytest.approx(
            masked[i, order[i, :n_kept]], abs=1e-6 if metric == "cosine" else 1e-12)


@pytest.mark.slow
def test_block_size_and_backend_do_not_change_the_statistics() -> None:
    q, g, _, _ = _sets(3, 40, 300, 8, 12)
    opts = RerankOptions(method="k-reciprocal", k1=6, k2=3)
    base = reranked_stats(q, g, opts, metric="euclid", topk=5, device="cpu")
    for kw in ({"block_size": 7, "memory": "1MB"}, {"backend": "torch", "block_size": 33}):
        other = reranked_stats(q, g, opts, metric="euclid", topk=5, device="cpu", **kw)
        for name in ("pos_scores", "neg_hist", "n_neg", "max_neg", "topk_scores", "topk_indices"):
            assert torch.equal(getattr(base, name), getattr(other, name)), name


def test_exclude_self_and_relevance() -> None:
    q, g, ql, gl = _sets(5, 25, 25, 4, 4)
    g = embeval.EmbeddingSet(q.embeddings, q.labels)  # the same set: leave-one-out
    opts = RerankOptions(method="k-reciprocal", k1=4, k2=2)
    final = reference_final(q.embeddings, g.embeddings, "euclid", 4, 2, 0.3)
    keep = ~np.eye(25, dtype=bool)
    stats = reranked_stats(q, g, opts, metric="euclid", device="cpu",
                           protocol=embeval.Protocol(exclude_self=True))
    aps, _ = oracle_metrics(final, ql, ql, keep)
    valid = (stats.n_pos > 0).numpy()
    assert M.average_precision(stats).numpy()[valid] == pytest.approx(aps, abs=1e-12)
    # relevance: the label positives of query 0 as a list, item 3 junk for query 1
    pos = [(i, j) for i in range(25) for j in range(25) if ql[i] == ql[j] and i != j]
    rel = embeval.Relevance.from_pairs(torch.tensor([p[0] for p in pos] + [1]),
                                       torch.tensor([p[1] for p in pos] + [3]),
                                       torch.tensor([1] * len(pos) + [-1]), n_query=25,
                                       n_gallery=25)
    listed = reranked_stats(q, g, opts, metric="euclid", device="cpu", relevance=rel,
                            protocol=embeval.Protocol(exclude_self=True))
    keep[1, 3] = keep[1, 3] and ql[3] == ql[1]  # junk unless a positive (listed twice: error)
    aps, _ = oracle_metrics(final, ql, ql, keep)
    valid = (listed.n_pos > 0).numpy()
    assert M.average_precision(listed).numpy()[valid] == pytest.approx(aps, abs=1e-12)


def test_inner_and_bad_ranges_are_refused() -> None:
    q, g, _, _ = _sets(1, 5, 20, 4, 2)
    opts = RerankOptions(method="k-reciprocal")
    with pytest.raises(OptionError, match="needs a distance"):
        reranked_stats(q, g, opts, metric="inner", device="cpu")
    with pytest.raises(OptionError, match="outside the gallery"):
        reranked_stats(q, g, opts, device="cpu", gallery_range=(5, 21))
    with pytest.raises(OptionError, match="lam"):
        RerankOptions(method="k-reciprocal", lam=0)


@pytest.mark.slow
@pytest.mark.parametrize("exclude_self", [False, True])
def test_query_chunks_do_not_change_the_statistics(monkeypatch, exclude_self) -> None:
    import embeval.rerank.kreciprocal as kr

    q, g, _, _ = _sets(11, 30, 30, 6, 5, cams=True)
    if exclude_self:
        g = embeval.EmbeddingSet(q.embeddings, q.labels, q.cameras)
    run = dict(metric="euclid", topk=4, device="cpu",
               protocol=embeval.Protocol(exclude_same_camera=True, exclude_self=exclude_self))
    opts = RerankOptions(method="k-reciprocal", k1=5, k2=3)
    whole = kr.reranked_stats(q, g, opts, **run)
    seen = []

    def one_query_each(weight, limit, max_rows, align=1):
        for a in range(len(weight)):
            seen.append(a)
            yield a, a + 1

    monkeypatch.setattr(kr, "chunks", one_query_each)
    chunked = kr.reranked_stats(q, g, opts, **run)
    assert seen == list(range(30))
    for name in ("pos_offsets", "pos_scores", "neg_hist", "n_neg", "max_neg", "topk_scores",
                 "topk_indices"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name


def test_chunks_hold_whole_query_tiles() -> None:
    from embeval.rerank.encoding import chunks

    assert list(chunks(np.ones(1300), 700, 10**9, 512)) == [(0, 512), (512, 1024), (1024, 1300)]
    assert list(chunks(np.ones(10), 3, 100, 512)) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert list(chunks(np.ones(10), 100, 4)) == [(0, 4), (4, 8), (8, 10)]


def test_dense_lists_at_k1_k2_n_minus_1_are_chunk_invariant_and_the_reference(monkeypatch) -> None:
    """k1 = k2 = N − 1 (every list holds every item: V dense, its expansion dense), ties from
    duplicated rows: one item (R*'s candidates, the expansion) and one query per chunk give the
    statistics of the whole run to the last bit, and both are the dense reference's."""
    import embeval.rerank.encoding as enc
    import embeval.rerank.kreciprocal as kr

    q, g, ql, gl = _sets(29, 12, 28, 5, 4)
    g.embeddings[10:16] = g.embeddings[:6]  # exact ties inside the gallery
    q.embeddings[:3] = g.embeddings[20:23]  # and across queries and gallery
    n = 40
    opts = RerankOptions(method="k-reciprocal", k1=n - 1, k2=n - 1)
    run = dict(metric="euclid", topk=5, device="cpu")
    whole = kr.reranked_stats(q, g, opts, **run)
    seen = {"enc": 0, "kr": 0}

    def one_row_each(key):
        def gen(weight, limit, max_rows, align=1):
            for a in range(len(weight)):
                seen[key] += 1
                yield a, a + 1
        return gen

    monkeypatch.setattr(enc, "chunks", one_row_each("enc"))
    monkeypatch.setattr(kr, "chunks", one_row_each("kr"))
    chunked = kr.reranked_stats(q, g, opts, **run)
    assert seen == {"enc": 2 * n, "kr": 12}  # R*'s candidates and the expansion; the queries
    for name in ("pos_offsets", "pos_scores", "neg_hist", "n_neg", "max_neg", "topk_scores",
                 "topk_indices"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name
    final = reference_final(q.embeddings, g.embeddings, "euclid", n - 1, n - 1, 0.3)
    aps, first = oracle_metrics(final, ql, gl, np.ones((12, 28), bool))
    valid = (whole.n_pos > 0).numpy()
    assert M.average_precision(whole).numpy()[valid] == pytest.approx(aps, abs=1e-12)
    assert M.first_hit_rank(whole).numpy()[valid].tolist() == first
