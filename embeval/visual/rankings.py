"""Which queries to look at, and what each one ranked first: the data behind ``embeval show``.

>>> import torch, embeval
>>> from embeval.visual.rankings import query_rankings
>>> q = embeval.EmbeddingSet(torch.tensor([[1., 0.]]), [0])
>>> g = embeval.EmbeddingSet(torch.tensor([[1., .1], [1., .3], [0., 1.]]), [1, 0, 0])
>>> [(r.index, r.kind, r.rank) for r in query_rankings(q, g, [0], top=2, device="cpu")[0].items]
[(0, 'negative', 1), (1, 'positive', 2)]

No query × gallery matrix: one pass of the engine with a top-k over the chosen query rows only
(:func:`embeval.engine.rank_stats` with ``topk``), without the protocol's exclusions, so that
an excluded item that would have ranked among the first is shown too, marked ``excluded``
(rank None); the others are ranked among the items the protocol keeps (``rank`` 1, 2, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from embeval.data.store import EmbeddingSet
from embeval.engine import NO_INDEX, Protocol, rank_stats
from embeval.errors import OptionError
from embeval.options import EvalOptions

__all__ = ["RankedItem", "QueryRanking", "query_rankings", "choose_queries", "KINDS"]

KINDS = ("positive", "negative", "excluded")


@dataclass(frozen=True)
class RankedItem:
    """One gallery item in a query's ranking: ``rank`` among the kept items (None: excluded)."""

    index: int
    rank: int | None
    score: float
    kind: str  # one of KINDS
    label: int


@dataclass
class QueryRanking:
    """Query ``index`` (its ``label``), its ``ap`` (nan: no positive) and ranked ``items``."""

    index: int
    label: int
    items: list[RankedItem] = field(default_factory=list)
    ap: float = math.nan
    first_rank: float = math.inf


def choose_queries(ap: torch.Tensor, *, worst: int | None = None, best: int | None = None,
                   queries: Sequence[int] | None = None) -> list[int]:
    """Query indices to show: the ``worst`` / ``best`` ones by AP (``ap`` [Q] float, nan = no
    positive, never chosen; ties: lower index first), or ``queries`` as given (checked)."""
    given = [x for x in (worst, best, queries) if x is not None]
    if len(given) != 1:
        raise OptionError("choose one of worst, best or queries", param=("worst", "best", "queries"))
    n = len(ap)
    if queries is not None:
        bad = [i for i in queries if not 0 <= i < n]
        if bad or not queries:
            raise OptionError(f"queries: {bad or 'none'}: query indices must lie in [0, {n})",
                              param="queries")
        return list(dict.fromkeys(int(i) for i in queries))
    count = worst if worst is not None else best
    if count is None or count < 1:
        raise OptionError(f"{'worst' if worst is not None else 'best'}: must be at least 1",
                          param="worst" if worst is not None else "best")
    valid = torch.nonzero(~torch.isnan(ap)).flatten()
    values = ap[valid].double()
    order = torch.argsort(values if worst is not None else -values, stable=True)
    return valid[order[:count]].tolist()


def query_rankings(query: EmbeddingSet, gallery: EmbeddingSet, chosen: Sequence[int], *,
                   top: int = 10, options: EvalOptions | None = None,
                   **overrides: object) -> list[QueryRanking]:
    """The first ``top`` kept gallery items of each query in ``chosen`` (and the excluded items
    ranked among them), best first. ``options``/``overrides``: metric, device, precision,
    memory and the protocol (``exclude_same_camera``, ``exclude_self``) of
    :class:`~embeval.options.EvalOptions`."""
    o = EvalOptions.build(options, **overrides)
    if o.aggregate != "none":
        raise OptionError("aggregate: the ranked items must be gallery items", param="aggregate")
    if top < 1:
        raise OptionError(f"top {top}: must be at least 1", param="top")
    idx = torch.as_tensor(list(chosen), dtype=torch.int64)
    if len(idx) == 0:
        return []
    excluded = _excluded(query, gallery, idx, o)
    extra = int(excluded.sum(dim=1).max()) if excluded.numel() else 0
    k = min(gallery.n, top + extra)
    sub = EmbeddingSet(query.take(idx), query.labels[idx],
                       None if query.cameras is None else query.cameras[idx], name=query.name)
    stats = rank_stats(sub, gallery, metric=o.metric, protocol=Protocol(), topk=k, device=o.device,
                       precision=o.precision, memory=o.memory, block_size=o.block_size)
    labels = gallery.labels
    out = []
    for row, qi in enumerate(idx.tolist()):
        qlabel = int(query.labels[qi])
        ranking = QueryRanking(qi, qlabel)
        kept = 0
        for score, gi in zip(stats.topk_scores[row].tolist(), stats.topk_indices[row].tolist()):  # type: ignore[index]
            if gi == NO_INDEX or kept == top:
                break
            glabel = int(labels[gi])
            if bool(excluded[row, gi]):
                ranking.items.append(RankedItem(gi, None, score, "excluded", glabel))
                continue
            kept += 1
            kind = "positive" if qlabel >= 0 and glabel == qlabel else "negative"
            ranking.items.append(RankedItem(gi, kept, score, kind, glabel))
        out.append(ranking)
    return out


def _excluded(query: EmbeddingSet, gallery: EmbeddingSet, idx: torch.Tensor,
              o: EvalOptions) -> torch.Tensor:
    """[len(idx), G] bool: the gallery items the protocol hides from each chosen query."""
    mask = torch.zeros(len(idx), gallery.n, dtype=torch.bool)
    if o.exclude_same_camera:
        if query.cameras is None or gallery.cameras is None:
            raise OptionError("exclude_same_camera needs 'cameras' in the query and gallery files",
                              param="exclude_same_camera")
        mask |= ((query.labels[idx, None] == gallery.labels[None, :])
                 & (query.cameras[idx, None] == gallery.cameras[None, :]))
    if o.exclude_self:
        inside = idx < gallery.n
        mask[torch.nonzero(inside).flatten(), idx[inside]] = True
    return mask
