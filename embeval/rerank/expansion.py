"""Query expansion (average, alpha) and database-side augmentation (DBA): new embeddings that
the usual exact pass then ranks.

- ``dba K``: each gallery item becomes the weighted mean of its K best gallery items by the
  metric (itself included: first for cosine and the Euclidean metrics), weights
  (K − r)/K for the item at 0-based place r (1, (K−1)/K, ..., 1/K; Gordo et al. 2017).
- ``qe average``: each query becomes the mean of itself and its ``qe_k`` best gallery items
  (average QE, Chum et al. 2007: the query included, as the landmark literature does).
- ``qe alpha``: the weighted mean of the query (weight 1) and its ``qe_k`` best gallery items,
  weights max(s, 0)^α of their scores s (α-QE, Radenović et al. 2018); cosine or inner only.

Neighbours come from one streaming top-k pass (:func:`embeval.engine.rank_stats`: canonical
scores, ties to the lower index, never label information: the query's top-k is taken over
the whole gallery, with ``exclude_self`` only, since the camera rule and relevance lists use
labels). Means are summed in float64 in neighbour order and stored as float32, so the new sets
are a function of the inputs alone: every shard and every torchrun rank computes the same ones.
With DBA, query expansion uses the augmented gallery. Memory: the gallery's embeddings (DBA,
and the rows QE gathers) plus the block budget.
"""

from __future__ import annotations

import torch

from embeval.data.store import EmbeddingSet
from embeval.engine.rank import rank_stats
from embeval.engine.stats import NO_INDEX, Protocol
from embeval.errors import OptionError
from embeval.rerank.options import RerankOptions

__all__ = ["expand", "query_expansion", "database_augmentation"]


def _unlabelled(s: EmbeddingSet) -> EmbeddingSet:
    return EmbeddingSet(s.embeddings.float(), torch.full((s.n,), -1, dtype=torch.int64),
                        name=s.name)


def _weighted_mean(first: torch.Tensor | None, rows: torch.Tensor, idx: torch.Tensor,
                   w: torch.Tensor) -> torch.Tensor:
    """(first + Σ_r w[:, r] rows[idx[:, r]]) / (1 + Σ w) (no ``first``: Σ w rows / Σ w),
    summed in float64 in place order: [n, D] float32."""
    present = idx != NO_INDEX
    w = torch.where(present, w.double(), torch.zeros((), dtype=torch.float64))
    safe = torch.where(present, idx, 0)
    acc = first.double().clone() if first is not None else torch.zeros(
        len(idx), rows.shape[1], dtype=torch.float64)
    total = torch.ones(len(idx), dtype=torch.float64) if first is not None else torch.zeros(
        len(idx), dtype=torch.float64)
    for r in range(idx.shape[1]):
        acc += w[:, r, None] * rows[safe[:, r]].double()
        total += w[:, r]
    return (acc / total[:, None]).float()


def database_augmentation(gallery: EmbeddingSet, k: int, *, metric: str, device: str = "auto",
                          memory: int | str | None = None) -> EmbeddingSet:
    """The gallery with each item replaced by the weighted mean of its ``k`` best items."""
    k = min(k, gallery.n)
    g = _unlabelled(gallery)
    stats = rank_stats(g, g, metric=metric, topk=k, device=device, memory=memory)
    assert stats.topk_indices is not None
    weights = ((k - torch.arange(k, dtype=torch.float64)) / k).expand(gallery.n, k)
    emb = _weighted_mean(None, g.embeddings, stats.topk_indices, weights)
    return EmbeddingSet(emb, gallery.labels, gallery.cameras, metadata=gallery.metadata,
                        name=f"{gallery.name} (DBA {k})")


def query_expansion(query: EmbeddingSet, gallery: EmbeddingSet, how: str, k: int, *,
                    alpha: float = 3.0, metric: str, exclude_self: bool = False,
                    device: str = "auto", memory: int | str | None = None) -> EmbeddingSet:
    """The queries replaced by their average / alpha expansion over their ``k`` best items."""
    if how == "alpha" and metric not in ("cosine", "inner"):
        raise OptionError(f"qe: alpha query expansion weights neighbours by their similarity: "
                          f"metric cosine or inner, not {metric}", param=("qe", "metric"))
    k = min(k, gallery.n)
    g = _unlabelled(gallery)
    stats = rank_stats(_unlabelled(query), g, metric=metric, topk=k, device=device,
                       memory=memory, protocol=Protocol(exclude_self=exclude_self))
    assert stats.topk_indices is not None and stats.topk_scores is not None
    if how == "average":
        weights = torch.ones(query.n, k, dtype=torch.float64)
    else:
        weights = stats.topk_scores.double().clamp_min(0.0).pow(alpha)
    emb = _weighted_mean(query.embeddings.float(), g.embeddings, stats.topk_indices, weights)
    return EmbeddingSet(emb, query.labels, query.cameras, metadata=query.metadata,
                        name=f"{query.name} ({how} QE {k})")


def expand(query: EmbeddingSet, gallery: EmbeddingSet, opts: RerankOptions, *, metric: str,
           exclude_self: bool = False, device: str = "auto",
           memory: int | str | None = None) -> tuple[EmbeddingSet, EmbeddingSet]:
    """``(query, gallery)`` after ``opts.dba`` (first) and ``opts.qe``."""
    if opts.dba is not None:
        gallery = database_augmentation(gallery, opts.dba, metric=metric, device=device,
                                        memory=memory)
    if opts.qe is not None:
        query = query_expansion(query, gallery, opts.qe, opts.qe_k, alpha=opts.qe_alpha,
                                metric=metric, exclude_self=exclude_self, device=device,
                                memory=memory)
    return query, gallery
