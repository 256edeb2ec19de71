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
2. offers the query's own items (never negatives: its label group, or its listed items
   under a relevance list) to the running top-k unless junk or dropped by the camera rule,
   then masks them and the query itself (``--exclude-self``);
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

import os

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "LANES", "tile_pass", "merge_topk", "pair_scores", "verify_tile", "round_pairs"]

AVAILABLE = numba is not None

LANES = 16  # the canonical order of embeval.engine.similarity.canonical_dot (kept in step with it)


def _canon_dot(q, g):
    """q · g in one fixed order (16 lane sums, then a fixed tree), float32.

    The order is part of the definition, so the result depends on the two vectors only
    (never on blocks, tiles, threads or the BLAS). Lane l sums elements l, l + 16, ... in
    order (the last ``D mod 16`` elements go to lanes 0, 1, ...); then lane l + 8 is added into
    l, then l + 4, l + 2, l + 1. Sixteen scalar sums (no array): LLVM keeps them in registers.
    """
    z = np.float32(0.0)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = z
    a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = z
    d = len(q)
    full = d - d % LANES
    for t in range(0, full, LANES):
        a0 += q[t + 0] * g[t + 0]
        a1 += q[t + 1] * g[t + 1]
        a2 += q[t + 2] * g[t + 2]
        a3 += q[t + 3] * g[t + 3]
        a4 += q[t + 4] * g[t + 4]
        a5 += q[t + 5] * g[t + 5]
        a6 += q[t + 6] * g[t + 6]
        a7 += q[t + 7] * g[t + 7]
        a8 += q[t + 8] * g[t + 8]
        a9 += q[t + 9] * g[t + 9]
        a10 += q[t + 10] * g[t + 10]
        a11 += q[t + 11] * g[t + 11]
        a12 += q[t + 12] * g[t + 12]
        a13 += q[t + 13] * g[t + 13]
        a14 += q[t + 14] * g[t + 14]
        a15 += q[t + 15] * g[t + 15]
    rest = d - full
    if rest > 0:
        a0 += q[full + 0] * g[full + 0]
    if rest > 1:
        a1 += q[full + 1] * g[full + 1]
    if rest > 2:
        a2 += q[full + 2] * g[full + 2]
    if rest > 3:
        a3 += q[full + 3] * g[full + 3]
    if rest > 4:
        a4 += q[full + 4] * g[full + 4]
    if rest > 5:
        a5 += q[full + 5] * g[full + 5]
    if rest > 6:
        a6 += q[full + 6] * g[full + 6]
    if rest > 7:
        a7 += q[full + 7] * g[full + 7]
    if rest > 8:
        a8 += q[full + 8] * g[full + 8]
    if rest > 9:
        a9 += q[full + 9] * g[full + 9]
    if rest > 10:
        a10 += q[full + 10] * g[full + 10]
    if rest > 11:
        a11 += q[full + 11] * g[full + 11]
    if rest > 12:
        a12 += q[full + 12] * g[full + 12]
    if rest > 13:
        a13 += q[full + 13] * g[full + 13]
    if rest > 14:
        a14 += q[full + 14] * g[full + 14]
    a0 += a8
    a1 += a9
    a2 += a10
    a3 += a11
    a4 += a12
    a5 += a13
    a6 += a14
    a7 += a15
    a0 += a4
    a1 += a5
    a2 += a6
    a3 += a7
    a0 += a2
    a1 += a3
    a0 += a1
    return a0


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


def _tile_pass(S, G, Qe, nrows, c0, c1, q0, g0, qcam, gcam, qa, ga, mode,
               exclude_self, exclude_cam, lab_order, lab_lo, lab_hi, own_junk, eps,
               pos_off, pos, hist, max_neg, n_neg, topv, topi):
    """Update the statistics of tile rows ``[0, nrows)`` from tile columns ``[c0, c1)``.

    S: [TQ, TG] float32 BLAS dot products, overwritten (scratch); tile row r is query
    ``q0 + r``, tile column c is gallery item ``g0 + c``, whose embedding is ``G[c]``; ``Qe``
    [Q, D] holds the queries. Query i's *own* items (never negatives) are
    ``lab_order[lab_lo[i]:lab_hi[i]]``, ascending: its label group (``lab_order`` [G]: gallery
    indices grouped by label; empty for unknown labels), or its listed items (a relevance CSR).
    ``own_junk`` (aligned with ``lab_order``): True for a junk entry, never offered to the top-k
    (all False for label groups, where the camera rule ``exclude_cam`` drops items instead).
    ``eps`` [Q]: the BLAS-vs-canonical score bound.
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
        lo = lab_lo[qi]  # own items: top-k only (unless junk or dropped by the camera rule)
        hi = lab_hi[qi]
        t = lo + _count_lt(lab_order[lo:hi], g0 + c0) if lo < hi else hi
        while t < hi and lab_order[t] < g0 + c1:
            j = lab_order[t]
            c = j - g0 - c0
            junk = own_junk[t]
            t += 1
            if exclude_self and j == qi:
                continue  # masked below
            if (k > 0 and not junk and not (exclude_cam and gcam[j] == qc)
                    and row[c] >= topv[r, k - 1] - e):
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


def pending() -> bool:
    """True when the next compiled pass will compile its kernels first (seconds, once): the tile
    kernel is neither compiled in this process nor in numba's on-disk cache. False when unsure."""
    if not AVAILABLE or tile_pass.signatures:
        return False
    # numba's cache index (internal: were it to move, no one is told and nothing breaks)
    index = getattr(getattr(getattr(tile_pass, "_cache", None), "_cache_file", None), "_index_path", None)
    return isinstance(index, str) and not os.path.exists(index)


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
    """How many of the ascending distinct ``u`` are ≤ x: the table's bin of x bounds the answer
    (``table[t]`` = how many of u lie below the bin's low edge), a count inside it; a walk
    corrects a bin misjudged by rounding (never in practice)."""
    n = len(u)
    f = (np.float64(x) - base) * scale
    last = len(table) - 2
    t = 0
    if f >= last:
        t = last
    elif f > 0.0:
        t = int(f)
    lo = table[t]
    hi = table[t + 1]
    if lo < hi and u[lo] <= x:  # how many of u[lo:hi] are <= x (branch-free for long bins)
        lo += _count_le(u[lo:hi], x)
    j = lo
    while j < n and u[j] <= x:
        j += 1
    while j > 0 and u[j - 1] > x:
        j -= 1
    return j


def _verify_tile(S, nrows, c0, c1, q0, g0, qlab, qa, ga, mode, exclude_self, lab_order,
                 lab_lo, lab_hi, bound, u, table, base, scale, slots, keys, amb):
    """Count the impostor trials of tile rows ``[0, nrows)`` × columns ``[c0, c1)``; return how
    many pairs were ambiguous (listed in ``amb`` [n, 2] as (query, gallery item), not counted).

    ``S``: [TQ, TG] float64 dot products (tile row r is query ``q0 + r``, column c gallery item
    ``g0 + c``), overwritten; ``bound`` [Q] float64: their error bound
    (``embeval.engine.exact``): a dot product is rounded to float32 where ``S ± bound`` rounds to
    one float32, else listed. ``u`` [U] float32: the distinct genuine scores ascending;
    ``table`` [T] int64: ``table[t]`` = how many of ``u`` are below ``base + t / scale`` (a guess
    :func:`_slot_rank` corrects); ``slots`` [2U + 1] and ``keys`` [65536] int64: this worker's
    counts (``embeval.engine.trials.VerifyStats``), updated in place. Labels, ``lab_*``: as
    :func:`_tile_pass`.
    """
    zero = np.float32(0.0)
    n_u = len(u)
    width = c1 - c0
    gcol = ga[g0 + c0:g0 + c1]
    own = np.zeros(width, dtype=np.bool_)
    vals = np.empty(width, dtype=np.float32)
    bits = vals.view(np.uint32)
    n_amb = 0
    for r in range(nrows):
        qi = q0 + r
        ql = qlab[qi]
        qa_r = qa[qi]
        e = bound[qi]
        row = S[r, c0:c1]
        own[:] = False
        if ql >= 0:  # own-label items are genuine trials (or dropped): not impostors
            lo = lab_lo[qi]
            hi = lab_hi[qi]
            t = lo + _count_lt(lab_order[lo:hi], g0 + c0)
            while t < hi and lab_order[t] < g0 + c1:
                own[lab_order[t] - g0 - c0] = True
                t += 1
        if exclude_self and g0 + c0 <= qi < g0 + c1:
            own[qi - g0 - c0] = True
        for c in range(width):
            if own[c]:
                continue
            own[c] = True  # from here: "not counted below" (own, ambiguous or counted)
            x = row[c]
            d = np.float32(x)
            if np.float32(x - e) != np.float32(x + e):
                amb[n_amb, 0] = qi
                amb[n_amb, 1] = g0 + c0 + c
                n_amb += 1
                continue
            own[c] = False
            s = _transform(d, qa_r, gcol[c], mode) + zero  # -0.0 -> +0.0
            if n_u > 0:
                j = _slot_rank(u, table, base, scale, s)
                slots[2 * j - (1 if j > 0 and u[j - 1] == s else 0)] += 1
            else:
                slots[0] += 1
            vals[c] = s
        for c in range(width):
            if not own[c]:
                b = bits[c]
                b = b ^ np.uint32(0xFFFFFFFF) if b >= np.uint32(0x80000000) else b | np.uint32(0x80000000)
                keys[b >> np.uint32(16)] += 1
    return n_amb


def _round_pairs(Q, G, qi, gi, g0, out, unsure):
    """``out[m]`` = the float32 nearest to the exact ``Q[qi[m]] · G[gi[m] - g0]`` (float32 rows),
    or ``unsure[m] = True`` where even a double-length sum cannot tell (an exact tie between two
    float32 values: the caller sums those exactly).

    The products are exact in float64; they are summed with error-free transformations (Ogita,
    Rump and Oishi's Sum2), whose error is at most γ_n² · Σ|p| plus the last rounding.
    """
    n = Q.shape[1]
    u = 2.0 ** -53
    gamma = n * u / (1.0 - n * u)
    for m in range(len(qi)):
        a = Q[qi[m]]
        b = G[gi[m] - g0]
        s = 0.0
        c = 0.0
        mag = 0.0
        for t in range(n):
            p = np.float64(a[t]) * np.float64(b[t])
            x = s + p  # TwoSum(s, p): x + e == s + p exactly
            z = x - s
            e = (s - (x - z)) + (p - z)
            s = x
            c += e
            mag += abs(p)
        hi = s + c
        lo = c - (hi - s)
        err = 4.0 * gamma * gamma * mag + 4.0 * u * abs(lo) + 1e-300
        f = np.float32(hi)
        below = (np.float64(f) + np.float64(np.nextafter(f, np.float32(-np.inf)))) / 2.0
        above = (np.float64(f) + np.float64(np.nextafter(f, np.float32(np.inf)))) / 2.0
        d_lo = (hi - below) + lo
        d_hi = (above - hi) - lo
        tol = err + 4.0 * u * (abs(hi - below) + abs(above - hi))
        if d_lo > tol and d_hi > tol:
            out[m] = f
            unsure[m] = False
        else:
            unsure[m] = True


if AVAILABLE:
    _slot_rank = _inline(_slot_rank)
    verify_tile = numba.njit(nogil=True, cache=True, boundscheck=False)(_verify_tile)
    round_pairs = _jit(_round_pairs)
else:  # pragma: no cover
    verify_tile = round_pairs = None  # type: ignore[assignment]
