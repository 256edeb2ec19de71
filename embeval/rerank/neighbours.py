"""The exact k-nearest-neighbour graph of one set of items, and each item's farthest item.

Streams row blocks of the set against the whole set (one matmul per block; never the N × N
matrix): memory O(N·k) plus one [rows, N] float32 score block sized to the budget. As in the
engine (:mod:`embeval.engine.rank`), the matmul scores only filter: every score within the
rounding bound (:func:`embeval.engine.rank.tie_tolerance`) of a row's k-th best or of its lowest
score is recomputed as its canonical score (:func:`embeval.engine.similarity.canonical_dot`),
so the graph is a function of the items alone (never of the block size): neighbours by
canonical score descending, the lower index first on ties. The item itself is one of its
neighbours (the reference implementations include it at rank 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from embeval.engine.rank import tie_tolerance
from embeval.engine.similarity import aux, canonical_dot, row_norms, transform

__all__ = ["Graph", "neighbour_graph", "pair_scores"]


@dataclass
class Graph:
    """``index`` [N, k] int64 and ``score`` [N, k] float32: each item's k best items (itself
    included), best first; ``lowest`` [N] float32: each item's lowest score over all N items."""

    index: torch.Tensor
    score: torch.Tensor
    lowest: torch.Tensor


def pair_scores(x: torch.Tensor, xa: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                metric: str, chunk: int = 1 << 15) -> torch.Tensor:
    """Canonical scores of the pairs ``(x[i[m]], x[j[m]])``: [M] float32 (``xa``: aux of x)."""
    out = torch.empty(len(i), dtype=torch.float32)
    for c in range(0, len(i), chunk):
        a, b = i[c:c + chunk], j[c:c + chunk]
        out[c:c + chunk] = transform(canonical_dot(x[a], x[b]), xa[a], xa[b], metric)
    return out


def neighbour_graph(x: torch.Tensor, metric: str, k: int, *, memory: int,
                    progress=None) -> Graph:
    """The exact ``k`` nearest items of every row of ``x`` [N, D] float32 among all rows.

    ``memory``: bytes for one score block ([rows, N] float32 and its masks).
    """
    n = x.shape[0]
    k = min(k, n)
    norms = row_norms(x)
    xa = aux(x, metric, norms)
    eps = tie_tolerance(x, metric, float(norms.max()) if n else 0.0)
    rows = max(1, min(n, memory // max(1, 24 * n)))
    index = torch.empty(n, k, dtype=torch.int64)
    score = torch.empty(n, k, dtype=torch.float32)
    lowest = torch.empty(n, dtype=torch.float32)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        s = transform(x[r0:r1] @ x.T, xa[r0:r1, None], xa[None, :], metric)
        e = 2 * eps[r0:r1, None]
        kth = torch.topk(s, k, dim=1).values[:, -1:]
        low = s.amin(1, keepdim=True)
        top_mask = s >= kth - e
        low_mask = s <= low + e
        del s
        r, c = (top_mask | low_mask).nonzero(as_tuple=True)  # row-major: c ascending per row
        is_top, is_low = top_mask[r, c], low_mask[r, c]
        del top_mask, low_mask
        exact = pair_scores(x, xa, r + r0, c, metric)
        lowest[r0:r1] = torch.full((r1 - r0,), float("inf")).scatter_reduce(
            0, r[is_low], exact[is_low], "amin")
        r, c, exact = r[is_top], c[is_top], exact[is_top]
        order = torch.argsort(-exact, stable=True)  # ties keep the lower index first
        order = order[torch.argsort(r[order], stable=True)]
        r, c, exact = r[order], c[order], exact[order]
        counts = torch.bincount(r, minlength=r1 - r0)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(r)) - starts[r]
        keep = rank < k
        index[r0:r1] = c[keep].view(r1 - r0, k)
        score[r0:r1] = exact[keep].view(r1 - r0, k)
        if progress is not None:
            progress(r1, n)
    return Graph(index, score, lowest)
