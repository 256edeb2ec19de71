"""Compiled CPU kernels (numba) for the ranking pass: one score tile at a time.

Each kernel is single-threaded and releases the GIL (``nogil``), so the engine runs
several tiles at once from a thread pool.

Exact ties. A BLAS matmul does not give one pair the same float32 score in every
position of a tile (OpenBLAS's AVX2 sgemm sums in a position-dependent order), so
two identical gallery items can score a few ulps apart, and a collapsed model that
maps everything to one point would rank its positives "first". Every score that
decides something is therefore the *canonical* score (:func:`canon_score`: a dot
product in one fixed, vectorisable summation order, then the metric transform), a
function of the pair alone. The tile's BLAS scores only filter: a BLAS score differs
from the canonical one by at most ``eps[q]`` (a rounding-error bound, see
``ranking.tie_tolerance``), so wherever it is more than ``eps`` away from a decision
(a positive's score, the k-th best, the hardest negative) it decides correctly, and
within ``eps`` the canonical score is computed (rare: about 1% of scores above the
lowest positive at D = 512).

Per row of a tile, :func:`tile_pass`:

1. applies the metric transform to the BLAS dot products;
2. offers the query's own-label items (never negatives; the camera rule may drop
   them) to the running top-k, then masks them and the query itself (``--exclude-self``);
3. scans the row once, keeping only the columns whose score reaches min(the query's
   lowest positive, the k-th best so far, the hardest negative so far) - eps (a
   compare and a store per score, no branch);
4. ranks those few: top-k insertion (score desc, gallery index asc on ties), a count
   in the query's ascending positive scores, adding one to that bucket of its
   histogram (``P + 1`` bins), and the row's largest negative (when it can beat the
   hardest so far, it is one of them).

Most scores only pass step 3 (about 0.3 ns each); the negative count needs no
per-score work at all (the tile width less the masked columns).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "LANES", "tile_pass", "merge_topk", "pair_scores", "verify_tile"]

AVAILABLE = numba is not None

LANES = 16  # the canonical order of embeval.engine.similarity.canonical_dot (kept in step with it)


def _canon_dot(q, g):
    """q · g in one fixed order (16 lane sums, then a fixed tree), float32.

    The order is part of the definition, so the result depends on the two vectors only
    (never on blocks, tiles, threads or the BLAS); LLVM vectorises the lanes.
    """
    acc = np.zeros(LANES, dtype=np.float32)
    d = len(q)
    full = d - d % LANES
    for t in range(0, full, LANES):
        for lane in range(LANES):
            acc[lane] += q[t + lane] * g[t + lane]
    for t in range(full, d):
        acc[t - full] += q[t] * g[t]
    width = LANES
    while width > 1:
        width >>= 1
        for lane in range(width):
            acc[lane] += acc[lane + width]
    return acc[0]


def _transform(d, qa_i, ga_j, mode):
    """One score from a dot product: same float32 ops as :func:`embeval.engine.similarity.transform`."""
    if mode == 0:
        return d
    if mode == 1:
        return d * qa_i * ga_j
    d2 = (qa_i + ga_j) - np.float32(2.0) * d
    if d2 < np.float32(0.0):
        d2 = np.float32(0.0)
    return np.float32(-np.sqrt(d2)) if mode == 2 else -d2


def _canon_score(q, g, qa_i, ga_j, mode):
    """The canonical score of one pair (see the module docstring)."""
    return _transform(_canon_dot(q, g), qa_i, ga_j, mode)


def _pair_scores(q, g, qid, gid, g0, qa, ga, mode, out):
    """out[m] = canonical score of (query ``qid[m]``, gallery item ``gid[m]``); ``g`` holds
    gallery rows ``g0...``."""
    for m in range(len(qid)):
        out[m] = _canon_score(q[qid[m]], g[gid[m] - g0], qa[qid[m]], ga[gid[m]], mode)


def _tile_pass(S, G, Qe, nrows, c0, c1, q0, g0, qlab, glab, qcam, gcam, qa, ga, mode,
               exclude_self, exclude_cam, lab_order, lab_lo, lab_hi, eps,
               pos_off, pos, hist, max_neg, n_neg, topv, topi):
    """Update the statistics of tile rows ``[0, nrows)`` from tile columns ``[c0, c1)``.

    S: [TQ, TG] float32 BLAS dot products, overwritten (scratch); tile row r is query
    ``q0 + r``, tile column c is gallery item ``g0 + c``, whose embedding is ``G[c]``; ``Qe``
    [Q, D] holds the queries. ``lab_order`` [G]: gallery indices grouped by label
    (ascending within a label); query i's group is ``lab_order[lab_lo[i]:lab_hi[i]]``
    (empty for unknown labels). ``eps`` [Q]: the BLAS-vs-canonical score bound.
    ``pos_off`` [nrows + 1] and ``pos`` (canonical, ascending per row), ``hist`` (P_r + 1
    bins per row, row r starts at ``pos_off[r] + r``), ``max_neg``/``n_neg`` [nrows] and
    ``topv``/``topi`` [nrows, k] are views of this tile's rows, updated in place.
    """
    two = np.float32(2.0)
    zero = np.float32(0.0)
    ninf = np.float32(-np.inf)
    lowest = np.float32(-3.4028235e38)  # real scores are finite: -inf marks a masked column
    k = topv.shape[1]
    width = c1 - c0
    cand = np.empty(width, dtype=np.int64)  # this row's candidate columns
    gcol = ga[g0 + c0:g0 + c1]
    for r in range(nrows):
        qi = q0 + r
        ql = qlab[qi]
        qc = qcam[qi]
        qa_r = qa[qi]
        qrow = Qe[qi]
        e = eps[qi]
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
                if k > 0 and not (exclude_cam and gcam[j] == qc) and row[c] >= topv[r, k - 1] - e:
                    _topk_insert(topv, topi, r, _canon_score(qrow, G[c0 + c], qa_r, ga[j], mode), j)
                row[c] = ninf
                masked += 1
        if exclude_self and g0 + c0 <= qi < g0 + c1:
            row[qi - g0 - c0] = ninf
            masked += 1
        p0 = pos_off[r]
        p1 = pos_off[r + 1]
        n_p = p1 - p0
        seg = pos[p0:p1]
        thr = pos[p0] - e if n_p > 0 else np.float32(np.inf)
        cut = thr
        if k > 0 and topv[r, k - 1] - e < cut:
            cut = topv[r, k - 1] - e
        if max_neg[r] - e < cut:  # a column that may beat the hardest negative is a candidate
            cut = max_neg[r] - e
        if cut < lowest:
            cut = lowest
        n_cand = 0
        for c in range(width):  # branchless: the store always happens, the count moves
            cand[n_cand] = c
            n_cand += row[c] >= cut
        mx = ninf  # the row's largest negative: a candidate whenever it matters
        h0 = p0 + r
        for t in range(n_cand):
            c = cand[t]
            s = row[c]
            mx = s if s > mx else mx
            j = g0 + c0 + c
            sc = np.float32(np.nan)  # canonical score, computed at most once
            if k > 0 and s >= topv[r, k - 1] - e:
                sc = _canon_score(qrow, G[c0 + c], qa_r, gcol[c], mode)
                _topk_insert(topv, topi, r, sc, j)
            if s >= thr:
                b = _count_le(seg, s) if s >= seg[0] else 0
                if (b > 0 and s - seg[b - 1] <= e) or (b < n_p and seg[b] - s <= e):
                    if sc != sc:
                        sc = _canon_score(qrow, G[c0 + c], qa_r, gcol[c], mode)
                    b = _count_le(seg, sc) if sc >= seg[0] else 0
                if b > 0:
                    hist[h0 + b] += 1
        if mx + e >= max_neg[r] and mx > ninf:  # the hardest negative, canonically
            best = max_neg[r]
            floor = mx - two * e
            for c in range(width):
                if row[c] >= floor:
                    sc = _canon_score(qrow, G[c0 + c], qa_r, gcol[c], mode)
                    best = sc if sc > best else best
            max_neg[r] = best
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
    _jit = numba.njit(nogil=True, cache=True)
    _inline = numba.njit(nogil=True, cache=True, inline="always")
    _count_le = _inline(_count_le)
    _count_lt = _jit(_count_lt)
    _topk_insert = _inline(_topk_insert)
    _canon_dot = _jit(_canon_dot)
    _transform = _inline(_transform)
    _canon_score = _inline(_canon_score)
    pair_scores = _jit(_pair_scores)
    tile_pass = numba.njit(nogil=True, cache=True, boundscheck=False)(_tile_pass)
    merge_topk = _jit(_merge_topk)
else:  # pragma: no cover
    pair_scores = tile_pass = None  # type: ignore[assignment]
    merge_topk = _merge_topk  # type: ignore[assignment]


def _slot_rank(u, table, base, scale, x):
    """How many of the ascending distinct ``u`` are ≤ x: a table guess, then a short walk."""
    n = len(u)
    f = (np.float64(x) - base) * scale
    t = 0
    if f >= len(table):
        t = len(table) - 1
    elif f > 0.0:
        t = int(f)
    j = table[t]
    while j < n and u[j] <= x:
        j += 1
    while j > 0 and u[j - 1] > x:
        j -= 1
    return j


def _verify_tile(S, G, Qe, nrows, c0, c1, q0, g0, qlab, glab, qcam, gcam, qa, ga, mode,
                 exclude_self, lab_order, lab_lo, lab_hi, eps, u, table, base, scale,
                 slots, keys):
    """Count the impostor trials of tile rows ``[0, nrows)`` × columns ``[c0, c1)``.

    Arguments as :func:`_tile_pass`; ``u`` [U] float32: the distinct genuine scores ascending,
    ``table`` [T] int64: ``table[t]`` = how many of ``u`` are below ``base + t / scale`` (a
    guess that :func:`_slot_rank` corrects); ``slots`` [2U + 1] and ``keys`` [65536] int64:
    this worker's counts (``embeval.engine.trials.VerifyStats``), updated in place. A BLAS
    score within ``eps`` of a genuine value is replaced by its canonical score before counting.
    """
    two = np.float32(2.0)
    zero = np.float32(0.0)
    ninf = np.float32(-np.inf)
    n_u = len(u)
    width = c1 - c0
    gcol = ga[g0 + c0:g0 + c1]
    for r in range(nrows):
        qi = q0 + r
        ql = qlab[qi]
        qa_r = qa[qi]
        qrow = Qe[qi]
        e = eps[qi]
        row = S[r, c0:c1]
        if mode == 1:
            for c in range(width):
                row[c] = row[c] * qa_r * gcol[c]
        elif mode >= 2:
            for c in range(width):
                d2 = (qa_r + gcol[c]) - two * row[c]
                d2 = d2 if d2 > zero else zero
                row[c] = np.float32(-np.sqrt(d2)) if mode == 2 else -d2
        if ql >= 0:  # own-label items are genuine trials (or dropped): not impostors
            lo = lab_lo[qi]
            hi = lab_hi[qi]
            t = lo + _count_lt(lab_order[lo:hi], g0 + c0)
            while t < hi and lab_order[t] < g0 + c1:
                row[lab_order[t] - g0 - c0] = ninf
                t += 1
        if exclude_self and g0 + c0 <= qi < g0 + c1:
            row[qi - g0 - c0] = ninf
        for c in range(width):
            x = row[c]
            if x == ninf:
                continue
            x = x + zero  # -0.0 -> +0.0
            if n_u > 0:
                j = _slot_rank(u, table, base, scale, x)
                if (j > 0 and x - u[j - 1] <= e) or (j < n_u and u[j] - x <= e):
                    x = _canon_score(qrow, G[c0 + c], qa_r, gcol[c], mode) + zero
                    j = _slot_rank(u, table, base, scale, x)
                slots[2 * j - (1 if j > 0 and u[j - 1] == x else 0)] += 1
            else:
                slots[0] += 1
            row[c] = x
        bits = row.view(np.uint32)
        for c in range(width):
            if row[c] != ninf:
                b = bits[c]
                b = b ^ np.uint32(0xFFFFFFFF) if b >= np.uint32(0x80000000) else b | np.uint32(0x80000000)
                keys[b >> np.uint32(16)] += 1


if AVAILABLE:
    _slot_rank = _inline(_slot_rank)
    verify_tile = numba.njit(nogil=True, cache=True, boundscheck=False)(_verify_tile)
else:  # pragma: no cover
    verify_tile = None
