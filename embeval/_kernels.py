"""Compiled CPU kernels (numba) for the ranking pass: one score tile at a time.

Each kernel is single-threaded and releases the GIL (``nogil``), so the engine
runs several tiles at once from a thread pool; every tile is a full fixed-shape
matmul, which keeps each score's arithmetic independent of blocks, shards and
thread counts. The kernel fuses, per score:

1. the metric transform of the raw dot product (same float32 ops as
   :func:`embeval.similarity.transform`),
2. the negative filter (same known label → not a negative; self → dropped),
3. the running hardest negative and the negative count,
4. the filter "score ≥ the query's lowest positive score" and, for survivors
   only, a binary search in the query's ascending positive scores, adding one
   to that bucket of the query's histogram (``P + 1`` bins),
5. optionally the running top-k (score desc, gallery index asc on ties).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

__all__ = ["AVAILABLE", "tile_pass", "merge_topk", "pair_dots"]

AVAILABLE = numba is not None


def _tile_pass(S, nrows, c0, c1, q0, g0, qlab, glab, qcam, gcam, qa, ga, mode,
               exclude_self, exclude_cam, pos_off, pos, hist, max_neg, n_neg, topv, topi):
    """Update the statistics of tile rows ``[0, nrows)`` from tile columns ``[c0, c1)``.

    S: [TQ, TG] float32 raw dot products; tile row r is query ``q0 + r``, tile
    column c is gallery item ``g0 + c``. ``pos_off`` [nrows + 1] and ``pos``
    (ascending per row), ``hist`` (P_r + 1 bins per row, row r starts at
    ``pos_off[r] + r``), ``max_neg``/``n_neg`` [nrows] and ``topv``/``topi``
    [nrows, k] are views of this tile's rows, updated in place.
    """
    two = np.float32(2.0)
    zero = np.float32(0.0)
    k = topv.shape[1]
    buf = np.empty(c1 - c0, dtype=np.float32)  # this row's survivors
    for r in range(nrows):
        qi = q0 + r
        ql = qlab[qi]
        qc = qcam[qi]
        qa_r = qa[qi]
        p0 = pos_off[r]
        p1 = pos_off[r + 1]
        h0 = p0 + r
        thr = pos[p0] if p1 > p0 else np.float32(np.inf)
        mx = max_neg[r]
        cnt = 0
        n_surv = 0
        for c in range(c0, c1):
            j = g0 + c
            if exclude_self and j == qi:
                continue
            d = S[r, c]
            if mode == 0:
                s = d
            elif mode == 1:
                s = d * qa_r * ga[j]
            else:
                d2 = (qa_r + ga[j]) - two * d
                if d2 < zero:
                    d2 = zero
                s = np.float32(-np.sqrt(d2)) if mode == 2 else -d2
            same = ql >= 0 and glab[j] == ql
            if k > 0 and not (same and exclude_cam and gcam[j] == qc):
                last = k - 1
                if s > topv[r, last] or (s == topv[r, last] and j < topi[r, last]):
                    p = last
                    while p > 0 and (s > topv[r, p - 1]
                                     or (s == topv[r, p - 1] and j < topi[r, p - 1])):
                        topv[r, p] = topv[r, p - 1]
                        topi[r, p] = topi[r, p - 1]
                        p -= 1
                    topv[r, p] = s
                    topi[r, p] = j
            if same:
                continue
            cnt += 1
            if s > mx:
                mx = s
            if s >= thr:
                buf[n_surv] = s
                n_surv += 1
        seg = pos[p0:p1]
        for t in range(n_surv):  # a separate tight loop: the count vectorises here
            hist[h0 + _count_le(seg, buf[t])] += 1
        max_neg[r] = mx
        n_neg[r] += cnt


def _count_le(seg, s):
    """How many of the ascending ``seg`` are ≤ s, given ``seg[0] <= s``.

    A plain count for short lists (LLVM vectorises it over a slice, not over
    ``range(p0, p1)`` where numba's negative-index check blocks it): 4 ns at P = 50,
    29 ns at P = 512; a branchless binary search for longer ones.
    """
    n = len(seg)
    if n <= 512:
        c = 0
        for t in range(n):
            if seg[t] <= s:
                c += 1
        return c
    base = 0
    while n > 1:
        half = n >> 1
        base += half * (seg[base + half] <= s)
        n -= half
    return base + 1


def _merge_topk(av, ai, bv, bi):
    """Merge two top-k lists per row into ``av``/``ai`` (score desc, index asc on ties)."""
    nrows, k = av.shape
    ov = np.empty(k, dtype=av.dtype)
    oi = np.empty(k, dtype=ai.dtype)
    for r in range(nrows):
        x = 0
        y = 0
        for t in range(k):
            if y == k:
                take_a = True
            elif x == k:
                take_a = False
            else:
                take_a = av[r, x] > bv[r, y] or (av[r, x] == bv[r, y] and ai[r, x] <= bi[r, y])
            if take_a:
                ov[t] = av[r, x]
                oi[t] = ai[r, x]
                x += 1
            else:
                ov[t] = bv[r, y]
                oi[t] = bi[r, y]
                y += 1
        av[r, :] = ov
        ai[r, :] = oi


if AVAILABLE:
    _count_le = numba.njit(nogil=True, cache=True, inline="always")(_count_le)
    tile_pass = numba.njit(nogil=True, cache=True, boundscheck=False)(_tile_pass)
    merge_topk = numba.njit(nogil=True, cache=True)(_merge_topk)
else:  # pragma: no cover
    tile_pass = None
    merge_topk = _merge_topk


def _pair_dots(q, g, qid, gid, g0, out):
    """out[m] = q[qid[m]] · g[gid[m] - g0], summed in index order (deterministic)."""
    d = q.shape[1]
    for m in range(len(qid)):
        a = qid[m]
        b = gid[m] - g0
        acc = np.float32(0.0)
        for t in range(d):
            acc += q[a, t] * g[b, t]
        out[m] = acc


pair_dots = numba.njit(nogil=True, cache=True)(_pair_dots) if AVAILABLE else None
