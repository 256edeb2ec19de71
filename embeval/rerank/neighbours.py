"""The exact k-nearest-neighbour graph of one set of items, and each item's farthest item.

Streams row blocks of the set against the whole set (one matmul per block; never the N × N
matrix): memory O(N·k) plus one [rows, N] float32 score block sized to the budget. As in the
engine (:mod:`embeval.engine.rank`), the matmul scores only filter: every score within the
rounding bound (:func:`embeval.engine.rank.tie_tolerance`) of a row's k-th best or of its lowest
score is recomputed as its canonical score (:func:`pair_scores`), so the graph is a function of
the items alone (never of the block size): neighbours by canonical score descending, the lower
index first on ties. The item itself is one of its neighbours (the reference implementations
include it at rank 0).

``euclid`` filters on squared distances: its canonical score −fl(√d²) is a non-decreasing
function of the canonical ``sq_euclid`` score −d², whose rounding bound is absolute (~2.5e-4
for unit rows at D = 512), where √ of it bounds ‖q − g‖ only loosely (~0.02): ~100× fewer
pairs to recompute. Two d² that round to one √ differ by at most 2^-22·d², so the window
around the k-th best widens by 2^-20 of it.

Canonical pair scores run in the compiled kernel (:func:`embeval.engine.kernels.pair_scores`,
on every core) when numba is installed and the pairs are many, else in torch
(:func:`embeval.engine.similarity.canonical_dot`): the same bits either way.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from embeval.engine.rank import tie_tolerance
from embeval.engine.similarity import METRIC_CODES, aux, canonical_dot, row_norms, transform

__all__ = ["Graph", "neighbour_graph", "pair_scores"]

SQRT_TIE = 2.0 ** -20  # euclid: the relative widening of the squared-distance window


@dataclass
class Graph:
    """``index`` [N, k] int64 and ``score`` [N, k] float32: each item's k best items (itself
    included), best first; ``lowest`` [N] float32: each item's lowest score over all N items."""

    index: torch.Tensor
    score: torch.Tensor
    lowest: torch.Tensor


def pair_scores(x: torch.Tensor, xa: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                metric: str, chunk: int = 1 << 15, *, compiled: bool = False) -> torch.Tensor:
    """Canonical scores of the pairs ``(x[i[m]], x[j[m]])``: [M] float32 (``xa``: aux of x).

    ``compiled``: in the numba kernel, the pairs split over the engine's worker threads
    (no gathered copies of the rows); else ``chunk`` pairs at a time in torch.
    """
    out = torch.empty(len(i), dtype=torch.float32)
    if compiled and len(i):
        _compiled_pair_scores(x, xa, i, j, metric, out)
        return out
    for c in range(0, len(i), chunk):
        a, b = i[c:c + chunk], j[c:c + chunk]
        out[c:c + chunk] = transform(canonical_dot(x[a], x[b]), xa[a], xa[b], metric)
    return out


def _compiled_pair_scores(x: torch.Tensor, xa: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                          metric: str, out: torch.Tensor) -> None:
    from embeval.engine import kernels
    from embeval.engine.cpu import workers

    xn, xan, on = x.contiguous().numpy(), xa.contiguous().numpy(), out.numpy()
    i_n, j_n = i.contiguous().numpy(), j.contiguous().numpy()
    mode, n = METRIC_CODES[metric], len(i_n)
    parts = max(1, min(workers(), n // 4096))
    step = -(-n // parts)

    def run(c: int) -> None:
        kernels.pair_scores(xn, xn, i_n[c:c + step], j_n[c:c + step], 0, xan, xan, mode,
                            on[c:c + step])

    if parts == 1:
        run(0)
        return
    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(run, range(0, n, step)))


def _filter_scores(x: torch.Tensor, xa: torch.Tensor, r0: int, r1: int,
                   metric: str) -> torch.Tensor:
    """[r1 − r0, N] float32 scores (``cosine`` or ``sq_euclid``) of rows [r0, r1) against all
    rows: the matmul, then the transform in place (no [rows, N] temporaries). ``sq_euclid``
    adds −2·dot to ‖g‖², then ‖q‖²: two roundings, as the transform's (‖q‖² + ‖g‖²) − 2·dot,
    so within the same tie tolerance of the canonical score."""
    s = x[r0:r1] @ x.T
    if metric == "cosine":  # (dot · 1/‖q‖) · 1/‖g‖: the transform's own order
        return s.mul_(xa[r0:r1, None]).mul_(xa[None, :])
    s.mul_(-2.0).add_(xa[None, :]).add_(xa[r0:r1, None]).clamp_min_(0.0)
    return s.neg_()


def _below(t: torch.Tensor) -> torch.Tensor:
    """float64 ``t`` rounded down to float32 (so ``s >= result`` whenever ``s >= t``)."""
    t32 = t.float()
    up = t32.double() > t
    t32[up] = torch.nextafter(t32[up], torch.tensor(float("-inf")))
    return t32


def _above(t: torch.Tensor) -> torch.Tensor:
    """float64 ``t`` rounded up to float32."""
    t32 = t.float()
    down = t32.double() < t
    t32[down] = torch.nextafter(t32[down], torch.tensor(float("inf")))
    return t32


def neighbour_graph(x: torch.Tensor, metric: str, k: int, *, memory: int,
                    progress=None, compiled: bool = False) -> Graph:
    """The exact ``k`` nearest items of every row of ``x`` [N, D] float32 among all rows.

    ``memory``: bytes for one score block ([rows, N] float32 and its masks); ``compiled``:
    rescore in the numba kernel (:func:`pair_scores`).
    """
    n = x.shape[0]
    k = min(k, n)
    norms = row_norms(x)
    xa = aux(x, metric, norms)  # (euclid and sq_euclid share it)
    fm = "sq_euclid" if metric == "euclid" else metric  # the filter's metric
    eps = tie_tolerance(x, fm, float(norms.max()) if n else 0.0).double()
    slack = SQRT_TIE if metric == "euclid" else 0.0
    rows = max(1, min(n, memory // max(1, 24 * n)))
    index = torch.empty(n, k, dtype=torch.int64)
    score = torch.empty(n, k, dtype=torch.float32)
    lowest = torch.empty(n, dtype=torch.float32)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        s = _filter_scores(x, xa, r0, r1, fm)
        e = eps[r0:r1, None]
        # the k best canonically score >= kth - e; any of them scores >= kth - 2e here
        kth = torch.topk(s, k, dim=1).values[:, -1:].double()
        low = s.amin(1, keepdim=True).double()
        top_mask = s >= _below(kth - 2 * e - slack * (kth - e).abs())
        low_mask = s <= _above(low + 2 * e)
        del s
        r, c = (top_mask | low_mask).nonzero(as_tuple=True)  # row-major: c ascending per row
        is_top, is_low = top_mask[r, c], low_mask[r, c]
        del top_mask, low_mask
        exact = pair_scores(x, xa, r + r0, c, metric, compiled=compiled)
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
