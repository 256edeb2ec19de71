"""The sparse k-reciprocal encoding V of :mod:`embeval.rerank.kreciprocal`, in numpy CSR (no
scipy), and the query × gallery pairs whose encodings meet, one query chunk at a time.

Every sum here runs in a fixed order (the order of the items' indices), so the values are a
function of the inputs alone, never of a chunk size or a memory budget:

- :func:`reciprocal_v`: V_i over R*(i), exp(−e/M_i) normalised to sum 1;
- :func:`local_expansion`: V_qe[i] = Σ_r (1/k)·V[nb_r] over i's k nearest, summed in
  neighbour index order (as a sparse product does);
- :func:`overlaps`: m(i, j) = Σ_x min(V_i[x], V_j[x]) for the queries of one chunk, summed in
  x ascending, from the gallery's column lists (:func:`gallery_columns`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from embeval.rerank.neighbours import Graph, pair_scores

__all__ = ["Csr", "reciprocal_v", "local_expansion", "gallery_columns", "overlaps",
           "overlap_work", "chunks", "distance_sq", "normalised", "release_freed"]


@dataclass
class Csr:
    """Rows of a sparse float64 matrix: row i's columns ``indices[indptr[i]:indptr[i + 1]]``
    (ascending) and values ``values[...]``; ``indptr`` [rows + 1] int64."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        """[rows] int64 entries per row."""
        return np.diff(self.indptr)

    @classmethod
    def from_sorted(cls, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                    n_rows: int) -> Csr:
        """From entries sorted by (row, column)."""
        indptr = np.zeros(n_rows + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        return cls(indptr, cols.astype(np.int64, copy=False), values)


def distance_sq(s: torch.Tensor, metric: str) -> torch.Tensor:
    """The reference's squared distance e = D² of float32 scores ``s``: float64, same shape."""
    s64 = s.double()
    d = (1.0 - s64) if metric == "cosine" else -s64
    d = d.clamp_min(0.0)
    return d * d


def normalised(e: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """e / M elementwise, 0 where M = 0."""
    return torch.where(m > 0, e / torch.where(m > 0, m, 1.0), torch.zeros((), dtype=e.dtype))


@cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS, Windows)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


def release_freed() -> None:
    """Give the pages of freed heap memory back to the system (glibc's ``malloc_trim(0)``).

    A chunk's temporaries (a few MB to tens of MB each, below glibc's dynamic mmap threshold)
    live in the heap; a small result kept between two chunks pins the space around it, so
    without this the resident size grew by about a chunk's temporaries per chunk (700 items,
    k1 = k2 = 699, ``--memory 256MB``: 1.7 GB) although the live data stays within the budget.
    Called between chunks; the values computed do not depend on it.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _within(counts: np.ndarray) -> np.ndarray:
    """[Σ counts] int64: 0..c−1 for each count c in turn."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def chunks(weight: np.ndarray, limit: float, max_rows: int,
           align: int = 1) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges [a, b) of Σ ``weight`` ≤ ``limit`` and ≤ ``max_rows`` rows (at
    least one row each); a range of at least ``align`` rows (but the last) holds a multiple of
    ``align`` rows (the CPU pass's query tile: no half-empty tile)."""
    n = len(weight)
    csum = np.cumsum(weight, dtype=np.float64)
    a = 0
    while a < n:
        base = csum[a - 1] if a else 0.0
        b = int(np.searchsorted(csum, base + limit, side="right"))
        b = min(max(b, a + 1), a + max(1, max_rows), n)
        if b < n and b - a >= align:
            b = a + (b - a) // align * align
        yield a, b
        a = b


def _reciprocal(nb: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges (i, j): j among i's ``width`` nearest and i among j's; grouped by i ascending."""
    n = nb.shape[0]
    src = torch.arange(n).repeat_interleave(width)
    dst = nb[:, :width].reshape(-1)
    fwd = torch.sort(src * n + dst).values
    keep = torch.isin(dst * n + src, fwd, assume_unique=True)
    return src[keep], dst[keep]


def reciprocal_v(graph: Graph, x: torch.Tensor, xa: torch.Tensor, metric: str, k1: int,
                 m: torch.Tensor, *, compiled: bool = False, limit: float = float(1 << 22)) -> Csr:
    """The sparse [N, N] V of the k-reciprocal encoding (before local expansion).

    ``graph``: at least min(k1 + 1, N) neighbours per item; ``m`` [N] float64: M_i;
    ``compiled``: as :func:`~embeval.rerank.neighbours.pair_scores`; ``limit``: the candidate
    triples (~64 bytes each) examined at once (the result does not depend on it).
    """
    nb = graph.index
    n = nb.shape[0]
    ri, rj = _reciprocal(nb, min(k1 + 1, n))
    hi, hj = _reciprocal(nb, min(int(np.around(k1 / 2.0)) + 1, n))
    r_codes = ri * n + rj
    r_sorted = torch.sort(r_codes).values
    h_count = torch.bincount(hi, minlength=n)
    h_start = torch.cumsum(h_count, 0) - h_count
    # every candidate c ∈ R(i) with its half set R½(c): triples (edge, x ∈ R½(c)), Σ up to
    # N·(k1 + 1)·(k1/2 + 1): built for items i in chunks of at most ``limit`` triples
    per_edge = h_count[rj]
    per_item = np.bincount(ri.numpy(), weights=per_edge.numpy(), minlength=n)
    edge_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(ri.numpy(), minlength=n), out=edge_ptr[1:])
    found_codes = [r_codes]
    for a, b in chunks(per_item, limit, n):
        e0, e1 = int(edge_ptr[a]), int(edge_ptr[b])
        pe = per_edge[e0:e1]
        edge = torch.arange(e0, e1).repeat_interleave(pe)
        within = torch.arange(len(edge)) - (torch.cumsum(pe, 0) - pe)[edge - e0]
        xs = hj[h_start[rj[edge]] + within]
        want = ri[edge] * n + xs  # in R(i)? (r_sorted is sorted once, not per chunk)
        inside = r_sorted[torch.searchsorted(r_sorted, want).clamp_max(len(r_sorted) - 1)] == want
        common = torch.bincount(edge - e0, weights=inside.double(), minlength=e1 - e0)
        accept = common > (2.0 / 3) * pe.double()  # the reference's float comparison
        take = accept[edge - e0]
        found_codes.append(torch.unique(ri[edge[take]] * n + xs[take]))
        del edge, within, xs, inside, take
        release_freed()
    codes = torch.unique(torch.cat(found_codes))  # sorted
    vi, vx = codes // n, codes % n
    # scores of (i, x): from the graph where x is one of i's neighbours, else computed
    g_codes = (torch.arange(n)[:, None] * n + nb).reshape(-1)
    g_order = torch.argsort(g_codes)
    g_sorted = g_codes[g_order]
    at = torch.searchsorted(g_sorted, codes).clamp_max(len(g_sorted) - 1)
    found = g_sorted[at] == codes
    s = torch.empty(len(codes), dtype=torch.float32)
    s[found] = graph.score.reshape(-1)[g_order[at[found]]]
    miss = ~found
    s[miss] = pair_scores(x, xa, vi[miss], vx[miss], metric, compiled=compiled)
    # numpy's exp: torch's CPU exp gives some elements other bits from run to run (its
    # vector and scalar paths differ, and which elements take which depends on threads)
    w = torch.from_numpy(np.exp(-normalised(distance_sq(s, metric), m[vi]).numpy()))
    # numpy's bincount sums in entry order (torch's CPU index_add_ splits the work over
    # threads: its float64 sums changed from run to run)
    total = torch.from_numpy(np.bincount(vi.numpy(), weights=w.numpy(), minlength=n))
    return Csr.from_sorted(vi.numpy(), vx.numpy(), (w / total[vi]).numpy(), n)


def local_expansion(v: Csr, nb: np.ndarray, k2: int, limit: int) -> Csr:
    """V_qe[i] = Σ_r (1/k)·V[nb[i, r]] over i's k = min(k2, N) nearest (the reference's mean),
    summed in neighbour index order; ``limit``: entries gathered at once (rows of i at a time).
    """
    n = v.n_rows
    k = min(k2, n)
    near = np.sort(nb[:, :k], axis=1)  # the sum's order: neighbour index ascending
    lens = v.lengths()
    per_item = lens[near].sum(1)
    ptr, idx, val = [np.zeros(1, np.int64)], [], []
    w = 1.0 / k
    for a, b in chunks(per_item, limit, n):
        src_rows = near[a:b].reshape(-1)
        cnt = lens[src_rows]
        src = np.repeat(v.indptr[src_rows], cnt) + _within(cnt)
        owner = np.repeat(np.arange(b - a).repeat(k), cnt)
        key = owner * n + v.indices[src]
        uniq, inv = np.unique(key, return_inverse=True)
        sums = np.bincount(inv.reshape(-1), weights=w * v.values[src], minlength=len(uniq))
        sums = sums.astype(np.float64, copy=False)
        rows = uniq // n
        ptr.append(ptr[-1][-1] + np.cumsum(np.bincount(rows, minlength=b - a)))
        idx.append(uniq % n)
        val.append(sums)
        del src_rows, cnt, src, owner, key, uniq, inv, sums, rows
        release_freed()
    return Csr(np.concatenate(ptr), np.concatenate(idx) if idx else np.zeros(0, np.int64),
               np.concatenate(val) if val else np.zeros(0))


def gallery_columns(v: Csr, n_query: int) -> Csr:
    """The columns of V's gallery rows: for each item x, the gallery items j (ascending, as
    gallery indices) with V_j[x] > 0 and those values."""
    lo = v.indptr[n_query]
    x = v.indices[lo:]
    j = np.repeat(np.arange(v.n_rows - n_query), v.lengths()[n_query:])
    order = np.argsort(x, kind="stable")
    indptr = np.zeros(v.n_rows + 1, np.int64)
    np.cumsum(np.bincount(x, minlength=v.n_rows), out=indptr[1:])
    return Csr(indptr, j[order], v.values[lo:][order])


def overlap_work(v: Csr, cols: Csr, n_query: int) -> np.ndarray:
    """[Q] float64: the (query entry, gallery entry) products :func:`overlaps` visits per query."""
    hi = v.indptr[n_query]
    rows = np.repeat(np.arange(n_query), v.lengths()[:n_query])
    return np.bincount(rows, weights=cols.lengths()[v.indices[:hi]], minlength=n_query)


def overlaps(v: Csr, cols: Csr, a: int, b: int,
             n_gallery: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs of queries [a, b) × gallery whose V supports meet: ``(qid, gid, m)``,
    m = Σ_x min(V_q[x], V_g[x]) [M] float64 (> 0), sorted by (qid, gid).

    Memory: one [b − a, G] float64 accumulator and the visited products.
    """
    lo, hi = v.indptr[a], v.indptr[b]
    x, vq = v.indices[lo:hi], v.values[lo:hi]
    row = np.repeat(np.arange(b - a), v.lengths()[a:b])
    cnt = cols.lengths()[x]
    src = np.repeat(cols.indptr[x], cnt) + _within(cnt)
    flat = np.repeat(row, cnt) * n_gallery + cols.indices[src]
    mins = np.minimum(np.repeat(vq, cnt), cols.values[src])
    del src, cnt
    acc = np.bincount(flat, weights=mins, minlength=(b - a) * n_gallery)
    acc = acc.astype(np.float64, copy=False)  # (int64 when nothing was visited)
    del flat, mins
    nz = np.flatnonzero(acc)
    return (torch.from_numpy(a + nz // n_gallery), torch.from_numpy(nz % n_gallery),
            torch.from_numpy(acc[nz]))
