"""Which gallery item is each query's hardest negative (its best wrong match).

The ranking pass keeps each query's hardest negative *score* (``RankStats.max_neg``, a
canonical score, exact); which item scored it costs one more pass over the gallery, done only
when a per-query table asks for it. Matrix-product scores filter (an item can only be it if its
score is within the rounding bound ``ranking.tie_tolerance`` of ``max_neg``); the candidates'
canonical scores decide, and of several items at exactly that score the lowest gallery index
is the one named, as for the top-k.
"""

from __future__ import annotations

import torch

from embeval.data.relevance import Relevance
from embeval.data.store import EmbeddingSet
from embeval.engine.listed import listed_masks, with_protocol
from embeval.engine.rank import tie_tolerance
from embeval.engine.similarity import aux, canonical_dot, transform
from embeval.engine.stats import Protocol

__all__ = ["hardest_negatives"]

NONE = -1


def hardest_negatives(query: EmbeddingSet, gallery: EmbeddingSet, max_neg: torch.Tensor, *,
                      metric: str, protocol: Protocol = Protocol(), rows: int = 4096,
                      query_rows: int = 2048, relevance: Relevance | None = None) -> torch.Tensor:
    """[Q] int64: the gallery index of each query's hardest negative (``-1``: no negative).

    ``max_neg``: [Q] float32 hardest negative scores from an fp32 ranking pass
    (``RankStats.max_neg``, ``-inf`` where a query has none). A negative is a gallery item
    whose label is not the query's known label, other than the query's own index under
    ``protocol.exclude_self``; with ``relevance``, an item the query does not list (nor drops
    by the protocol: :func:`embeval.engine.listed.with_protocol`). Streams the gallery in blocks
    of ``rows`` items.
    """
    if relevance is not None:
        relevance = with_protocol(relevance, query, gallery, protocol)
    qemb = query.embeddings
    qa = aux(qemb, metric)
    best = torch.full((query.n,), NONE, dtype=torch.int64)
    todo = torch.isfinite(max_neg)
    for a in range(0, gallery.n, rows):
        if not todo.any():
            break
        g = gallery.rows(a, min(a + rows, gallery.n))
        ga = aux(g, metric)
        eps = tie_tolerance(qemb, metric, float(torch.linalg.vector_norm(g, dim=1).max()))
        glab = gallery.labels[a:a + len(g)]
        for q0 in range(0, query.n, query_rows):
            q1 = min(q0 + query_rows, query.n)
            rows_todo = todo[q0:q1].nonzero().flatten() + q0
            if not len(rows_todo):
                continue
            s = transform(qemb[rows_todo] @ g.T, qa[rows_todo, None], ga[None, :], metric)
            if relevance is not None:
                neg = ~listed_masks(relevance.offsets, relevance.gallery, relevance.positive,
                                    rows_todo, a, a + len(g))[0]
            else:
                qlab = query.labels[rows_todo, None]
                neg = ~((qlab >= 0) & (qlab == glab[None, :]))
            if protocol.exclude_self:
                neg &= rows_todo[:, None] != torch.arange(a, a + len(g))[None, :]
            near = neg & (s >= (max_neg[rows_todo] - eps[rows_todo])[:, None])
            r, c = near.nonzero(as_tuple=True)
            if not len(r):
                continue
            qi = rows_todo[r]
            exact = transform(canonical_dot(qemb[qi], g[c]), qa[qi], ga[c], metric)
            hit = exact == max_neg[qi]
            first = torch.full((query.n,), gallery.n, dtype=torch.int64)
            first.scatter_reduce_(0, qi[hit], c[hit] + a, reduce="amin")
            found = first < gallery.n
            best[found] = first[found]
            todo &= ~found
    return best
