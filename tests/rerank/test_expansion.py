"""Query expansion and DBA (embeval.rerank.expansion) against a dense numpy reimplementation,
and their gallery shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import embeval
from embeval.rerank.expansion import database_augmentation, query_expansion
from embeval.rerank.options import RerankOptions


def _sets(seed: int, qn: int = 20, gn: int = 60, dim: int = 6):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((qn, dim)).astype(np.float32)
    g = rng.standard_normal((gn, dim)).astype(np.float32)
    return (embeval.EmbeddingSet(torch.from_numpy(q), torch.from_numpy(rng.integers(0, 4, qn))),
            embeval.EmbeddingSet(torch.from_numpy(g), torch.from_numpy(rng.integers(0, 4, gn))))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 / np.linalg.norm(a64, axis=1, keepdims=True)) @ \
        (b64 / np.linalg.norm(b64, axis=1, keepdims=True)).T


def dense_qe(q: np.ndarray, g: np.ndarray, k: int, alpha: float | None) -> np.ndarray:
    """Query expansion from the full cosine matrix: the query (weight 1) and its k best."""
    s = _cos(q, g)
    out = np.empty_like(q, dtype=np.float64)
    for i in range(len(q)):
        top = np.argsort(-s[i], kind="stable")[:k]
        w = np.ones(k) if alpha is None else np.clip(s[i, top], 0, None) ** alpha
        out[i] = (q[i] + (w[:, None] * g[top]).sum(0)) / (1 + w.sum())
    return out


def dense_dba(g: np.ndarray, k: int) -> np.ndarray:
    s = _cos(g, g)
    w = (k - np.arange(k)) / k
    out = np.empty_like(g, dtype=np.float64)
    for i in range(len(g)):
        top = np.argsort(-s[i], kind="stable")[:k]
        out[i] = (w[:, None] * g[top]).sum(0) / w.sum()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("how,alpha", [("average", None), ("alpha", 3.0)])
def test_query_expansion_equals_dense(how: str, alpha: float | None) -> None:
    q, g = _sets(0)
    got = query_expansion(q, g, how, 4, alpha=alpha or 3.0, metric="cosine", device="cpu")
    want = dense_qe(q.embeddings.numpy(), g.embeddings.numpy(), 4, alpha)
    np.testing.assert_allclose(got.embeddings.numpy(), want, rtol=1e-6, atol=1e-6)
    res = embeval.evaluate(q, g, rerank=RerankOptions(qe=how, qe_k=4, qe_alpha=alpha or 3.0),
                           device="cpu")
    plain = embeval.evaluate(got, g, device="cpu")
    assert res.metrics == pytest.approx(plain.metrics, abs=0)


def test_dba_equals_dense_and_shards_merge() -> None:
    q, g = _sets(1)
    got = database_augmentation(g, 3, metric="cosine", device="cpu")
    np.testing.assert_allclose(got.embeddings.numpy(), dense_dba(g.embeddings.numpy(), 3),
                               rtol=1e-6, atol=1e-6)
    opts = RerankOptions(dba=3, qe="alpha", qe_k=5)
    whole = embeval.evaluation_stats(q, g, rerank=opts, device="cpu", knn_k=3).stats
    a = embeval.evaluation_stats(q, g, rerank=opts, device="cpu", knn_k=3, shard=(0, 2)).stats
    b = embeval.evaluation_stats(q, g, rerank=opts, device="cpu", knn_k=3, shard=(1, 2)).stats
    merged = a.merge(b)
    for name in ("pos_scores", "neg_hist", "n_neg", "max_neg", "topk_scores", "topk_indices"):
        assert torch.equal(getattr(whole, name), getattr(merged, name)), name


def test_alpha_qe_needs_a_similarity() -> None:
    q, g = _sets(2)
    with pytest.raises(embeval.OptionError, match="cosine or inner"):
        query_expansion(q, g, "alpha", 3, metric="euclid", device="cpu")
