"""Per-query relevance in the engine: positives and junk from a :class:`Relevance`, not labels.

With a relevance list, query i's *own* items (never its negatives) are the gallery items listed
for it: positives (ranked, offered to its top-k) and junk (invisible: not a positive, not a
negative, never in its top-k). The protocol's exclusions apply on top, as junk
(:func:`with_protocol`): ``exclude_self`` drops item i for query i, ``exclude_same_camera`` drops
every item with the query's label AND camera, listed or not (as without a relevance list).
Memory: O(listed pairs + same-label pairs with the camera rule).
"""

from __future__ import annotations

import torch

from embeval.data.relevance import Relevance
from embeval.data.store import EmbeddingSet
from embeval.engine.stats import Protocol

__all__ = ["with_protocol", "positive_pairs_listed", "listed_masks"]


def with_protocol(relevance: Relevance, query: EmbeddingSet, gallery: EmbeddingSet,
                  protocol: Protocol) -> Relevance:
    """``relevance`` with the protocol folded in: the pair (i, i) removed under
    ``exclude_self`` (the pass masks it), the items with the query's label and camera made
    junk under ``exclude_same_camera``."""
    qid, gid, pos = relevance.query_ids(), relevance.gallery, relevance.positive
    if protocol.exclude_self:
        keep = gid != qid
        qid, gid, pos = qid[keep], gid[keep], pos[keep]
    if not protocol.exclude_same_camera:
        if len(qid) == len(relevance.gallery):
            return relevance
        return _csr(qid, gid, pos, relevance)
    from embeval.engine.rank import positive_pairs  # label groups, no exclusions

    cq, cg = positive_pairs(query.labels, gallery.labels)
    same = gallery.cameras[cg] == query.cameras[cq]  # type: ignore[index]
    if protocol.exclude_self:
        same &= cg != cq
    qid = torch.cat([qid, cq[same]])
    gid = torch.cat([gid, cg[same]])
    pos = torch.cat([pos, torch.zeros(int(same.sum()), dtype=torch.bool)])
    # sort by (query, gallery), junk before positive, and keep the first of each pair
    key = (qid * max(relevance.n_gallery, 1) + gid) * 2 + pos.long()
    key, order = torch.sort(key)
    first = torch.ones(len(key), dtype=torch.bool)
    first[1:] = key[1:] // 2 != key[:-1] // 2
    order = order[first]
    return _csr(qid[order], gid[order], pos[order], relevance)


def _csr(qid: torch.Tensor, gid: torch.Tensor, pos: torch.Tensor, like: Relevance) -> Relevance:
    offsets = torch.zeros(like.n_query + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(qid, minlength=like.n_query), 0, out=offsets[1:])
    return Relevance(offsets, gid.contiguous(), pos.contiguous(), like.n_gallery, like.source)


def positive_pairs_listed(relevance: Relevance) -> tuple[torch.Tensor, torch.Tensor]:
    """``(qid, gid)`` [M] int64 of the listed positives, grouped by query (queries ascending),
    as :func:`embeval.engine.rank.positive_pairs` returns those of label equality."""
    keep = relevance.positive
    return relevance.query_ids()[keep], relevance.gallery[keep]


def listed_masks(offsets: torch.Tensor, gallery: torch.Tensor, positive: torch.Tensor,
                 rows: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(listed, junk)``: [len(rows), stop - start] bool masks of the items each query of
    ``rows`` ([n] int64 query indices) lists among gallery items ``[start, stop)``, and of those
    that are junk. ``offsets``/``gallery``/``positive``: a relevance CSR (on the masks' device).
    Cost: O(entries of ``rows``)."""
    lo = offsets[rows]
    counts = offsets[rows + 1] - lo
    n = len(rows)
    listed = torch.zeros(n, stop - start, dtype=torch.bool, device=rows.device)
    junk = torch.zeros_like(listed)
    total = int(counts.sum())
    if total == 0:
        return listed, junk
    r = torch.repeat_interleave(torch.arange(n, device=rows.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    idx = torch.arange(total, device=rows.device) + torch.repeat_interleave(
        lo - first, counts, output_size=total)
    g = gallery[idx]
    inside = (g >= start) & (g < stop)
    r, c, idx = r[inside], g[inside] - start, idx[inside]
    listed[r, c] = True
    junk[r, c] = ~positive[idx]
    return listed, junk
