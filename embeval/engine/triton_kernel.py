"""The fused Triton kernels: the ranking pass's (:func:`rank_tiles`, imported only by
:mod:`embeval.engine.triton_pass`) and the verification pass's (:func:`trial_tiles`, imported only
by :mod:`embeval.engine.triton_trials`).

:func:`rank_tiles`:

One program owns a tile of ``BQ`` queries and walks its share of the launch's gallery tiles
(``BG`` items each) in order. Per gallery tile it computes the ``BQ × BG`` dot products with
``tl.dot`` (``input_precision`` :data:`embeval.engine.fused_bound.KERNEL_PRECISION`, ``BK``
dimensions at a time), the metric transform, the negative mask (label equality or the query's
listed items, the query itself under ``--exclude-self``), and then, with the scores kept in
registers:

- ``n_neg``: the negatives counted per row, kept in registers, written once per program;
- the histogram: a negative scoring at or above the query's lowest positive - eps ("a
  survivor") finds ``b`` = how many positives score ≤ it by a binary search in the query's
  ascending positive scores; when no positive lies within ``eps`` of it, bin ``b`` (b > 0)
  gets one (an integer atomic add: the order of adds cannot change the counts);
- the hardest negative: the row's running maximum and its column, kept in registers and written
  once per program; every other negative within ``2·eps`` of the running maximum goes to
  the buffer;
- the buffer: (query, column·2 + flag, kernel score) of the pairs the kernel cannot decide,
  appended at a slot reserved by one atomic add per tile (flag 1: a survivor within eps of a
  positive, not counted; flag 0: a hardest-negative candidate). Appends past ``cap`` are
  not written but still counted, so the caller sees the overflow and reruns the launch with
  a buffer of the size it reports: nothing is dropped.

A non-finite score is counted in ``bad`` (the caller refuses the input).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["rank_tiles", "trial_tiles", "interpreting"]


def interpreting() -> bool:
    """Whether Triton was imported under ``TRITON_INTERPRET=1`` (kernels run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(rank_tiles, InterpretedFunction)


@triton.jit
def rank_tiles(q_ptr, g_ptr, qa_ptr, ga_ptr, qlab_ptr, glab_ptr, own_off_ptr, own_ptr,
               pos_off_ptr, pos_ptr, eps_ptr, hist_ptr, nneg_ptr, pmax_ptr, parg_ptr,
               buf_q_ptr, buf_c_ptr, buf_s_ptr, cnt_ptr, bad_ptr,
               n_q, n_g, g_start, dim, tiles_per_split, pos_steps, own_steps, cap,
               MODE: tl.constexpr, EXCLUDE_SELF: tl.constexpr, LISTED: tl.constexpr,
               PRECISION: tl.constexpr, BQ: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr):
    """Queries ``[pid0·BQ, +BQ)`` × launch gallery tiles ``[pid1·tiles_per_split, +tiles_per_split)``.

    ``q`` [n_q, dim] f32, ``g`` [n_g, dim] f32 (gallery items ``g_start...``); ``qa``/``ga``:
    the metric's aux; ``qlab``/``glab`` int64 labels (-1 unknown); ``own_off``/``own``: the
    queries' listed gallery items (int64 CSR, ascending; ``LISTED``); ``pos_off``/``pos``:
    positives (int64 CSR of ascending f32 canonical scores); ``eps`` [n_q] f32 (the bound);
    ``hist`` int64 (query i's bins at ``pos_off[i] + i``); ``nneg``/``pmax``/``parg``
    [splits, n_q]: per program's negatives, kernel maximum (f32) and its column (int32, -1:
    none); ``buf_*`` [cap]; ``cnt`` [1] int64 appends requested; ``bad`` [1] int64.
    ``MODE``: 0 inner, 1 cosine, 2 euclid, 3 sq_euclid.
    """
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_q * BQ + tl.arange(0, BQ)
    rmask = rows < n_q
    rows64 = rows.to(tl.int64)
    qa = tl.load(qa_ptr + rows64, mask=rmask, other=0.0)
    eps = tl.load(eps_ptr + rows64, mask=rmask, other=0.0)
    qlab = tl.load(qlab_ptr + rows64, mask=rmask, other=-1)
    p0 = tl.load(pos_off_ptr + rows64, mask=rmask, other=0)
    npos = tl.load(pos_off_ptr + rows64 + 1, mask=rmask, other=0) - p0
    lowest = tl.load(pos_ptr + p0, mask=rmask & (npos > 0), other=float("inf"))
    thr = tl.where(npos > 0, lowest - eps, float("inf"))
    o0 = tl.zeros((BQ,), tl.int64)
    o1 = tl.zeros((BQ,), tl.int64)
    if LISTED:
        o0 = tl.load(own_off_ptr + rows64, mask=rmask, other=0)
        o1 = tl.load(own_off_ptr + rows64 + 1, mask=rmask, other=0)

    run_max = tl.full((BQ,), float("-inf"), tl.float32)
    run_arg = tl.full((BQ,), -1, tl.int32)
    nneg = tl.zeros((BQ,), tl.int64)
    n_bad = tl.zeros((BQ,), tl.int64)
    t_first = pid_s * tiles_per_split
    for t in range(t_first, t_first + tiles_per_split):
        cols = t * BG + tl.arange(0, BG)
        cmask = cols < n_g
        cols64 = cols.to(tl.int64)
        acc = _products(q_ptr, g_ptr, rows64, rmask, cols64, cmask, dim, BQ, BG, BK, PRECISION)
        ga = tl.load(ga_ptr + cols64, mask=cmask, other=0.0)
        s = _transform(acc, qa, ga, MODE)
        valid = rmask[:, None] & cmask[None, :]
        gidx = g_start + cols64
        if LISTED:  # the row's listed items in this tile: [lo, hi) of its ascending list
            lo = o0
            hi = o1
            for _ in range(own_steps):  # lo = first listed item >= this tile's first item
                act = lo < hi
                mid = (lo + hi) // 2
                v = tl.load(own_ptr + mid, mask=act, other=0)
                go = act & (v < g_start + t * BG)
                lo = tl.where(go, mid + 1, lo)
                hi = tl.where(act & (v >= g_start + t * BG), mid, hi)
            own = tl.zeros((BQ, BG), tl.int1)
            cur = lo
            more = cur < o1
            nxt = tl.load(own_ptr + cur, mask=more, other=0)
            more = more & (nxt < g_start + t * BG + BG)
            while tl.max(more.to(tl.int32), axis=0) > 0:
                own = own | ((nxt[:, None] == gidx[None, :]) & more[:, None])
                cur = tl.where(more, cur + 1, cur)
                more = more & (cur < o1)
                nxt = tl.load(own_ptr + cur, mask=more, other=0)
                more = more & (nxt < g_start + t * BG + BG)
        else:
            glab = tl.load(glab_ptr + cols64, mask=cmask, other=-1)
            own = (qlab[:, None] == glab[None, :]) & (qlab[:, None] >= 0)
        neg = valid & (own == 0)
        if EXCLUDE_SELF:
            neg = neg & (rows64[:, None] != gidx[None, :])
        nneg += tl.sum(neg.to(tl.int64), axis=1)
        finite = (s == s) & (s != float("inf")) & (s != float("-inf"))
        n_bad += tl.sum((valid & (finite == 0)).to(tl.int64), axis=1)
        sm = tl.where(neg & finite, s, float("-inf"))
        tmax = tl.max(sm, axis=1)
        targ = tl.argmax(sm, axis=1).to(tl.int32) + t * BG
        better = tmax > run_max
        new_max = tl.where(better, tmax, run_max)
        floor = new_max - 2.0 * eps
        # the old maximum stays a candidate when still within 2 eps: it joins the buffer
        old_keep = better & (run_max >= floor) & (run_arg >= 0)
        arg = tl.where(better, targ, run_arg)
        near = (sm >= floor[:, None]) & (sm > float("-inf")) & (cols[None, :] != arg[:, None])
        n_old = tl.sum(old_keep.to(tl.int64), axis=0)
        if n_old > 0:
            base = tl.atomic_add(cnt_ptr, n_old)
            slot = base + tl.cumsum(old_keep.to(tl.int64), axis=0) - 1
            ok = old_keep & (slot < cap)
            tl.store(buf_q_ptr + slot, rows, mask=ok)
            tl.store(buf_c_ptr + slot, 2 * run_arg, mask=ok)
            tl.store(buf_s_ptr + slot, run_max, mask=ok)
        run_max = new_max
        run_arg = arg
        # the histogram: survivors only (at or above the lowest positive - eps)
        surv = (sm >= thr[:, None]) & (sm > float("-inf"))
        amb = tl.zeros((BQ, BG), tl.int1)
        if tl.max(surv.to(tl.int32), axis=None) > 0:
            blo = tl.zeros((BQ, BG), tl.int64)
            bhi = tl.zeros((BQ, BG), tl.int64) + npos[:, None]
            for _ in range(pos_steps):  # blo = how many positives are <= s
                act = surv & (blo < bhi)
                mid = (blo + bhi) // 2
                v = tl.load(pos_ptr + p0[:, None] + mid, mask=act, other=0.0)
                go = act & (v <= sm)
                blo = tl.where(go, mid + 1, blo)
                bhi = tl.where(act & (v > sm), mid, bhi)
            below = tl.load(pos_ptr + p0[:, None] + blo - 1, mask=surv & (blo > 0),
                            other=float("-inf"))
            above = tl.load(pos_ptr + p0[:, None] + blo, mask=surv & (blo < npos[:, None]),
                            other=float("inf"))
            sv = tl.where(surv, sm, 0.0)  # no inf - inf below
            amb = surv & (((sv - below) <= eps[:, None]) | ((above - sv) <= eps[:, None]))
            count = surv & (amb == 0) & (blo > 0)
            tl.atomic_add(hist_ptr + (p0 + rows64)[:, None] + blo, tl.full((BQ, BG), 1, tl.int64),
                          mask=count)
        app = amb | near
        if tl.sum(app.to(tl.int64), axis=None) > 0:
            at, ok = _reserve(app, cnt_ptr, cap, BQ, BG)
            tl.store(buf_q_ptr + at, _flat(rows[:, None] + 0 * cols[None, :], BQ, BG), mask=ok)
            tl.store(buf_c_ptr + at, _flat(2 * cols[None, :] + amb.to(tl.int32) + 0 * rows[:, None],
                                           BQ, BG), mask=ok)
            tl.store(buf_s_ptr + at, _flat(sm, BQ, BG), mask=ok)
    out = pid_s.to(tl.int64) * n_q + rows64
    tl.store(nneg_ptr + out, nneg, mask=rmask)
    tl.store(pmax_ptr + out, run_max, mask=rmask)
    tl.store(parg_ptr + out, run_arg, mask=rmask)
    tl.atomic_add(bad_ptr, tl.sum(n_bad, axis=0))


@triton.jit
def trial_tiles(q_ptr, g_ptr, qa_ptr, ga_ptr, qlab_ptr, glab_ptr, bound_ptr, u_ptr, table_ptr,
                span_ptr, slots_ptr, keys_ptr, buf_q_ptr, buf_c_ptr, cnt_ptr, bad_ptr,
                n_q, n_g, q_start, g_start, dim, n_table, tiles_per_split, bin_steps, cap,
                MODE: tl.constexpr, EXCLUDE_SELF: tl.constexpr, BQ: tl.constexpr,
                BG: tl.constexpr, BK: tl.constexpr):
    """Impostor counts of queries ``[pid0·BQ, +BQ)`` × launch gallery tiles
    ``[pid1·tiles_per_split, +tiles_per_split)``.

    ``q`` [n_q, dim] f32 (queries ``q_start...``), ``g`` [n_g, dim] f32 (gallery items
    ``g_start...``); ``qa``/``ga``: the metric's aux; ``qlab``/``glab`` int64 labels (-1
    unknown); ``bound`` [n_q] f64 (:func:`embeval.engine.exact.dot_bound`); ``u`` f32: the
    distinct genuine scores, ascending; ``table`` [n_table + 1] int64 and ``span`` [2] f64
    (base, scale): :func:`embeval.engine.trials.slot_table` (bin t of n_table holds
    ``u[table[t]:table[t + 1]]``; ``bin_steps`` binary-search steps settle any bin; in memory
    because a Python float argument reaches a compiled kernel as float32); ``slots`` [2U + 1]
    and ``keys`` [65536] int64: the counts (:class:`embeval.engine.trials.VerifyStats`);
    ``buf_q``/``buf_c`` [cap] int32: (row, column) of the pairs not counted here; ``cnt`` [1]
    int64: appends requested; ``bad`` [1] int64: non-finite scores. ``MODE``: 0 inner,
    1 cosine, 2 euclid, 3 sq_euclid.

    Every product is float64 (``tl.dot`` of float64 tiles: DMMA tensor cores on sm_80+), within
    ``bound`` of the exact dot product in any summation order; rounded to float32 where that
    interval rounds to one float32 (else the pair is *ambiguous* and goes to the buffer), then
    transformed in float32 with the operations of :func:`embeval.engine.similarity.transform`:
    the score is the one every other pass computes for the pair, so it is counted here, in its
    slot among ``u`` (a table guess, then a binary search inside the bin, checked) and in its
    key bin. A pair whose slot check fails (never expected) is buffered too.
    """
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_q * BQ + tl.arange(0, BQ)
    rmask = rows < n_q
    rows64 = rows.to(tl.int64)
    qa = tl.load(qa_ptr + rows64, mask=rmask, other=0.0)
    qlab = tl.load(qlab_ptr + rows64, mask=rmask, other=-1)
    e = tl.load(bound_ptr + rows64, mask=rmask, other=0.0)
    n_u = tl.load(table_ptr + n_table)
    base = tl.load(span_ptr)
    scale = tl.load(span_ptr + 1)
    n_bad = tl.zeros((BQ,), tl.int64)
    t_first = pid_s * tiles_per_split
    for t in range(t_first, t_first + tiles_per_split):
        cols = t * BG + tl.arange(0, BG)
        cmask = cols < n_g
        cols64 = cols.to(tl.int64)
        acc = _products(q_ptr, g_ptr, rows64, rmask, cols64, cmask, dim, BQ, BG, BK, "fp64")
        amb = (acc - e[:, None]).to(tl.float32) != (acc + e[:, None]).to(tl.float32)
        ga = tl.load(ga_ptr + cols64, mask=cmask, other=0.0)
        s = _transform(acc.to(tl.float32), qa, ga, MODE)
        s = tl.where(s == 0.0, 0.0, s)  # -0.0 -> +0.0
        glab = tl.load(glab_ptr + cols64, mask=cmask, other=-1)
        imp = (rmask[:, None] & cmask[None, :]) & ((qlab[:, None] != glab[None, :]) | (qlab[:, None] < 0))
        if EXCLUDE_SELF:
            imp = imp & ((q_start + rows64)[:, None] != (g_start + cols64)[None, :])
        finite = (acc == acc) & (acc != float("inf")) & (acc != float("-inf")) \
            & (s == s) & (s != float("inf")) & (s != float("-inf"))
        n_bad += tl.sum((imp & (finite == 0)).to(tl.int64), axis=1)
        live = imp & finite
        amb = live & amb
        sure = live & (amb == 0)
        sv = tl.where(sure, s, 0.0)
        # the slot: how many genuine values are <= s, found inside the table's bin of s
        f = (sv.to(tl.float64) - base) * scale
        tb = tl.where(f >= n_table - 1, n_table - 1, tl.where(f > 0.0, f, 0.0)).to(tl.int64)
        lo = tl.load(table_ptr + tb, mask=sure, other=0)
        hi = tl.load(table_ptr + tb + 1, mask=sure, other=0)
        for _ in range(bin_steps):
            act = lo < hi
            mid = (lo + hi) // 2
            v = tl.load(u_ptr + mid, mask=sure & act, other=0.0)
            go = act & (v <= sv)
            lo = tl.where(go, mid + 1, lo)
            hi = tl.where(act & (v > sv), mid, hi)
        below = tl.load(u_ptr + lo - 1, mask=sure & (lo > 0), other=float("-inf"))
        above = tl.load(u_ptr + lo, mask=sure & (lo < n_u), other=float("inf"))
        checked = (below <= sv) & (above > sv)
        count = sure & checked
        slot = 2 * lo - (below == sv).to(tl.int64)
        tl.atomic_add(slots_ptr + slot, tl.full((BQ, BG), 1, tl.int64), mask=count)
        bits = sv.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, (bits ^ -1) >> 16, (bits >> 16) + 32768).to(tl.int64)
        tl.atomic_add(keys_ptr + key, tl.full((BQ, BG), 1, tl.int64), mask=count)
        app = amb | (sure & (checked == 0))
        if tl.sum(app.to(tl.int64), axis=None) > 0:
            at, ok = _reserve(app, cnt_ptr, cap, BQ, BG)
            tl.store(buf_q_ptr + at, _flat(rows[:, None] + 0 * cols[None, :], BQ, BG), mask=ok)
            tl.store(buf_c_ptr + at, _flat(cols[None, :] + 0 * rows[:, None], BQ, BG), mask=ok)
    tl.atomic_add(bad_ptr, tl.sum(n_bad, axis=0))


@triton.jit
def _products(q_ptr, g_ptr, rows64, rmask, cols64, cmask, dim, BQ: tl.constexpr, BG: tl.constexpr,
              BK: tl.constexpr, PRECISION: tl.constexpr):
    """[BQ, BG] dot products of query rows ``rows64`` and gallery rows ``cols64`` (masked rows
    give 0), ``BK`` dimensions per ``tl.dot``. ``PRECISION`` "fp64": float64 tiles, one float64
    sum (float32 products are exact in it); else float32 with that ``input_precision``, each
    chunk summed from zero and added to the running sum (short chains:
    :mod:`embeval.engine.fused_bound`)."""
    acc = tl.zeros((BQ, BG), tl.float64 if PRECISION == "fp64" else tl.float32)
    for k0 in range(0, dim, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < dim
        a = tl.load(q_ptr + rows64[:, None] * dim + ks[None, :],
                    mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(g_ptr + cols64[None, :] * dim + ks[:, None],
                    mask=kmask[:, None] & cmask[None, :], other=0.0)
        if PRECISION == "fp64":
            acc = tl.dot(a.to(tl.float64), b.to(tl.float64), acc)
        else:
            acc += tl.dot(a, b, input_precision=PRECISION)
    return acc


@triton.jit
def _transform(d, qa, ga, MODE: tl.constexpr):
    """Scores [BQ, BG] f32 from dot products ``d`` and the aux ``qa`` [BQ] / ``ga`` [BG], with
    the float32 operations of :func:`embeval.engine.similarity.transform` (clamp_min(0) keeps a
    NaN). ``MODE``: 0 inner, 1 cosine, 2 euclid, 3 sq_euclid."""
    if MODE == 0:
        s = d
    elif MODE == 1:
        s = d * qa[:, None] * ga[None, :]
    else:
        d2 = (qa[:, None] + ga[None, :]) - 2.0 * d
        d2 = tl.where(d2 < 0.0, 0.0, d2)
        if MODE == 2:
            s = -tl.sqrt_rn(d2)
        else:
            s = -d2
    return s


@triton.jit
def _reserve(app, cnt_ptr, cap, BQ: tl.constexpr, BG: tl.constexpr):
    """Buffer slots of the [BQ, BG] pairs ``app``, row-major, reserved by one atomic add on the
    launch's count (requests past ``cap`` are counted, not written): ([BQ·BG] slot, writable)."""
    flat = tl.reshape(app, (BQ * BG,)).to(tl.int64)
    base = tl.atomic_add(cnt_ptr, tl.sum(flat, axis=0))
    at = base + tl.cumsum(flat, axis=0) - 1
    return at, (flat > 0) & (at < cap)


@triton.jit
def _flat(x, BQ: tl.constexpr, BG: tl.constexpr):
    """A [BQ, BG] tile as [BQ·BG], row-major (the order of :func:`_reserve`'s slots)."""
    return tl.reshape(x, (BQ * BG,))
