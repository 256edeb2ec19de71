"""Compiled CPU kernels (numba) for the ranking pass: one score tile at a time.

Each kernel is single-threaded and releases the GIL (``nogil``), so the engine
runs several tiles at once from a thread pool; every tile is a full fixed-shape
matmul, which keeps each score's arithmetic independent of blocks, shards and
thread counts. Per row of a tile, the kernel:

1. applies the metric transform to the raw dot products (same float32 ops as
   :func:`embeval.similarity.transform`);
2. puts the query's own-label items (never negatives; the camera rule may drop
   them) into the running top-k and masks them and the query itself (``--exclude-self``);
3. scans the row once for the hardest negative, keeping only the columns whose
   score reaches min(the query's lowest positive score, the k-th best so far);
4. ranks those few: top-k insertion (score desc, gallery index asc on ties), and
   for scores ≥ the lowest positive a count in the query's sorted positive scores,
   adding one to that bucket of its histogram (``P + 1`` bins).

Most scores only pass step 3 (about 1 ns each); the negative count needs no
per-score work at all (the tile width less the masked columns).
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
               exclude_self, exclude_cam, lab_order, lab_lo, lab_hi,
               pos_off, pos, hist, max_neg, n_neg, topv, topi):
    """Update the statistics of tile rows ``[0, nrows)`` from tile columns ``[c0, c1)``.

    S: [TQ, TG] float32 raw dot products, overwritten (scratch); tile row r is query
    ``q0 + r``, tile column c is gallery item ``g0 + c``. ``lab_order`` [G]: gallery indices
    grouped by label (ascending within a label); query i's label group is
    ``lab_order[lab_lo[i]:lab_hi[i]]`` (empty for unknown labels). ``pos_off`` [nrows + 1]
    and ``pos`` (ascending per row), ``hist`` (P_r + 1 bins per row, row r starts at
    ``pos_off[r] + r``), ``max_neg``/``n_neg`` [nrows] and ``topv``/``topi`` [nrows, k] are
    views of this tile's rows, updated in place.

    Per row: (1) the transform, one vectorised loop; (2) the query's own-label items and
    itself (never negatives) enter the top-k, then their scores become -inf; (3) one
    branch-light scan takes the hardest negative and picks the few scores that can matter,
    those ≥ min(lowest positive, k-th best so far); (4) only those are ranked.
    """
    two = np.float32(2.0)
    zero = np.float32(0.0)
    ninf = np.float32(-np.inf)
    lowest = np.float32(-3.4028235e38)  # real scores are finite: -inf marks a masked column
    k = topv.shape[1]
    width = c1 - c0
    cand = np.empty(width, dtype=np.int64)  # this row's candidate columns
    buf = np.empty(width, dtype=np.float32)  # this row's survivors
    gcol = ga[g0 + c0:g0 + c1]
    for r in range(nrows):
        qi = q0 + r
        ql = qlab[qi]
        qc = qcam[qi]
        qa_r = qa[qi]
        row = S[r, c0:c1]
        if mode == 1:
            for c in range(width):
                row[c] = row[c] * qa_r * gcol[c]
        elif mode >= 2:
            for c in range(width):
                d2 = (qa_r + gcol[c]) - two * row[c]
                d2 = d2 if d2 > zero else zero
                row[c] = np.float32(-np.sqrt(d2)) if mode == 2 else -d2
        masked = 0
        if ql >= 0:  # own-label items: top-k only (unless dropped by the camera rule)
            lo = lab_lo[qi]
            hi = lab_hi[qi]
            t = lo + _count_lt(lab_order[lo:hi], g0 + c0)
            while t < hi and lab_order[t] < g0 + c1:
                j = lab_order[t]
                c = j - g0 - c0
                t += 1
                if exclude_self and j == qi:
                    continue  # masked below
                if k > 0 and not (exclude_cam and gcam[j] == qc):
                    _topk_insert(topv, topi, r, row[c], j)
                row[c] = ninf
                masked += 1
        if exclude_self and g0 + c0 <= qi < g0 + c1:
            row[qi - g0 - c0] = ninf
            masked += 1
        p0 = pos_off[r]
        p1 = pos_off[r + 1]
        thr = pos[p0] if p1 > p0 else np.float32(np.inf)
        cut = thr
        if k > 0 and topv[r, k - 1] < cut:
            cut = topv[r, k - 1]
        if cut < lowest:
            cut = lowest
        mx = max_neg[r]
        n_cand = 0
        for c in range(width):
            s = row[c]
            mx = s if s > mx else mx
            if s >= cut:
                cand[n_cand] = c
                n_cand += 1
        n_surv = 0
        for t in range(n_cand):
            c = cand[t]
            s = row[c]
            if k > 0:
                _topk_insert(topv, topi, r, s, g0 + c0 + c)
            if s >= thr:
                buf[n_surv] = s
                n_surv += 1
        seg = pos[p0:p1]
        h0 = p0 + r
        for t in range(n_surv):  # a separate tight loop: the count vectorises here
            hist[h0 + _count_le(seg, buf[t])] += 1
        max_neg[r] = mx
        n_neg[r] += width - masked


def _topk_insert(topv, topi, r, s, j):
    """Insert (s, j) into row r's top-k if it belongs there (score desc, index asc)."""
    last = topv.shape[1] - 1
    if s > topv[r, last] or (s == topv[r, last] and j < topi[r, last]):
        p = last
        while p > 0 and (s > topv[r, p - 1] or (s == topv[r, p - 1] and j < topi[r, p - 1])):
            topv[r, p] = topv[r, p - 1]
            topi[r, p] = topi[r, p - 1]
            p -= 1
        topv[r, p] = s
        topi[r, p] = j


def _count_lt(seg, x):
    """How many of the ascending ``seg`` are < x (binary search)."""
    lo = 0
    hi = len(seg)
    while lo < hi:
        mid = (lo + hi) >> 1
        if seg[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


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
    _count_lt = numba.njit(nogil=True, cache=True)(_count_lt)
    _topk_insert = numba.njit(nogil=True, cache=True, inline="always")(_topk_insert)
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
