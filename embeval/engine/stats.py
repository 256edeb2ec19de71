"""The mergeable statistics of one evaluation, and what a query ignores.

:class:`RankStats` is what every engine pass fills (:mod:`embeval.engine.rank`), every shard
writes (:mod:`embeval.results.partials`) and every metric reads (:mod:`embeval.metrics`).
Statistics of disjoint gallery shards add up (:meth:`RankStats.merge`), those of disjoint
query shards concatenate (:meth:`RankStats.concat`): the same object serves blocks,
out-of-core galleries and multi-process runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from embeval.engine import plan

__all__ = ["Protocol", "RankStats", "NO_INDEX", "merge_topk"]

NO_INDEX = torch.iinfo(torch.int64).max  # top-k slot without an item
COMPILED_MERGE = 1 << 16  # top-k entries from which merge_topk runs the compiled merge


@dataclass(frozen=True)
class Protocol:
    """Which gallery items a query ignores.

    ``exclude_same_camera``: drop items with the query's label AND camera (Market-1501).
    ``exclude_self``: query i ignores gallery item i (query set == gallery set).
    """

    exclude_same_camera: bool = False
    exclude_self: bool = False


@dataclass
class RankStats:
    """Mergeable per-query statistics of one evaluation.

    ``pos_offsets`` [Q+1]: query i's positives are ``pos_scores[pos_offsets[i]:pos_offsets[i+1]]``
    (float32, ascending). ``neg_hist`` [sum(P) + Q] int64: query i owns ``P_i + 1`` bins starting
    at ``pos_offsets[i] + i``; bin b counts negatives with exactly b positives scoring ≤ them.
    ``n_neg`` [Q] int64 negatives seen, ``max_neg`` [Q] float32 hardest negative (-inf: none).
    ``topk_scores`` [Q, k] float32 (desc; -inf where empty) and ``topk_indices`` [Q, k] int64
    gallery indices (``NO_INDEX`` where empty), present when the pass kept a top-k.
    """

    metric: str
    n_gallery: int
    query_labels: torch.Tensor
    pos_offsets: torch.Tensor
    pos_scores: torch.Tensor
    neg_hist: torch.Tensor
    n_neg: torch.Tensor
    max_neg: torch.Tensor
    topk_scores: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_query(self) -> int:
        return int(self.query_labels.numel())

    @property
    def n_pos(self) -> torch.Tensor:
        """[Q] int64 positives per query."""
        return self.pos_offsets[1:] - self.pos_offsets[:-1]

    def merge(self, other: RankStats) -> RankStats:
        """Combine the statistics of two disjoint gallery shards (same queries, same positives)."""
        if not torch.equal(self.pos_offsets, other.pos_offsets):
            raise ValueError("cannot merge statistics computed with different positives: gallery "
                             "shards must be ranges of one gallery, rank_stats(q, g, "
                             "gallery_range=(a, b)), whose positives come from all of g")
        topv, topi = self.topk_scores, self.topk_indices
        if topv is not None and other.topk_scores is not None:
            topv, topi = topv.clone(), topi.clone()  # type: ignore[union-attr]
            merge_topk(topv, topi, other.topk_scores, other.topk_indices)  # type: ignore[arg-type]
        return replace(self, neg_hist=self.neg_hist + other.neg_hist, n_neg=self.n_neg + other.n_neg,
                       max_neg=torch.maximum(self.max_neg, other.max_neg),
                       topk_scores=topv, topk_indices=topi)

    @staticmethod
    def concat(parts: Sequence[RankStats]) -> RankStats:
        """Join the statistics of consecutive query shards, in order."""
        first = parts[0]
        offsets = [first.pos_offsets]
        for p in parts[1:]:
            offsets.append(p.pos_offsets[1:] + offsets[-1][-1])

        def cat(name: str) -> torch.Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        def cat_optional(name: str) -> torch.Tensor | None:
            return None if getattr(first, name) is None else cat(name)

        return replace(first, query_labels=cat("query_labels"), pos_offsets=torch.cat(offsets),
                       pos_scores=cat("pos_scores"), neg_hist=cat("neg_hist"), n_neg=cat("n_neg"),
                       max_neg=cat("max_neg"), topk_scores=cat_optional("topk_scores"),
                       topk_indices=cat_optional("topk_indices"))


def merge_topk(av: torch.Tensor, ai: torch.Tensor, bv: torch.Tensor, bi: torch.Tensor) -> None:
    """In place: ``av``/``ai`` ← the best k of both lists (score desc, index asc)."""
    if av.numel() > COMPILED_MERGE and plan.compiled_available():  # small lists: no compile
        from embeval.engine import kernels

        kernels.merge_topk(av.numpy(), ai.numpy(), bv.numpy(), bi.numpy())
        return
    v = torch.cat([av, bv], 1)
    i = torch.cat([ai, bi], 1)
    order = torch.argsort(i, dim=1, stable=True)
    v, i = v.gather(1, order), i.gather(1, order)
    order = torch.argsort(v, dim=1, descending=True, stable=True)[:, : av.shape[1]]
    av.copy_(v.gather(1, order))
    ai.copy_(i.gather(1, order))
