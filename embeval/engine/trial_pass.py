"""The verification pass: every (query, gallery) pair is a trial, counted in one pass.

Genuine trials (same known label, after the protocol's exclusions) are gathered first, from
the whole gallery. One pass over the gallery in blocks then counts every other pair, an
impostor, in the slot its score falls in among the genuine values
(:class:`~embeval.engine.trials.VerifyStats`). Every score, genuine or impostor, is the float32
transform of the correctly rounded dot product (:mod:`embeval.engine.exact`: a float64 matrix
product, the rare ambiguous pair summed exactly), a function of the pair alone: the counts are
the same for any block size, shard split, thread count, device or gallery order (fp32).

Cost: one pass over the gallery (a float64 matrix product) plus, per impostor score, a table
lookup and two counter increments; memory: the block budget plus the genuine scores.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from embeval.data.store import EmbeddingSet
from embeval.engine import plan
from embeval.engine.exact import dot_bound, exact_dots, pair_dots, round_dots
from embeval.engine.plan import default_memory, parse_memory
from embeval.engine.rank import (
    SMALL_PASS,
    Progress,
    _check_inputs,
    block_aux,
    blocks_with_pairs,
    check_norms,
    positive_pairs,
)
from embeval.engine.similarity import (
    METRIC_CODES,
    aux,
    check_finite_scores,
    check_metric,
    matmul_dtype,
    precision_context,
    resolve_device,
    row_norms,
    transform,
)
from embeval.engine.stats import Protocol
from embeval.engine.trials import KEY_BINS, VerifyStats, ordered_keys, slot_of, slot_table
from embeval.errors import OptionError

__all__ = ["trial_stats"]

BYTES_PER_SCORE = 48  # dot, score, masks, slot (int64), key (int64)


def trial_stats(
    query: EmbeddingSet,
    gallery: EmbeddingSet,
    *,
    metric: str = "cosine",
    protocol: Protocol = Protocol(),
    device: str = "auto",
    precision: str = "fp32",
    memory: int | str | None = None,
    block_size: int | None = None,
    gallery_range: tuple[int, int] | None = None,
    query_range: tuple[int, int] | None = None,
    backend: str = "auto",
    progress: Progress | None = None,
) -> VerifyStats:
    """Count every trial of ``query`` × ``gallery``: the exact :class:`VerifyStats`.

    Genuine trials always come from the whole sets; impostors are counted only for queries
    ``query_range`` × gallery items ``gallery_range`` (a shard), so shards merge by addition.
    ``block_size`` / ``memory`` / ``backend`` / ``device`` / ``precision``: as for
    :func:`embeval.engine.rank_stats`.
    """
    check_metric(metric)
    _check_inputs(query, gallery, protocol, 0)
    dev = resolve_device(device)
    matmul_dtype(precision)
    a, b = gallery_range or (0, gallery.n)
    qa_, qb_ = query_range or (0, query.n)
    if not 0 <= a <= b <= gallery.n or not 0 <= qa_ <= qb_ <= query.n:
        raise OptionError(f"shard range outside the sets ({query.n} queries, {gallery.n} gallery items)")
    auto = backend == "auto"
    if auto:
        backend = plan.auto_backend(dev, precision, big=(qb_ - qa_) * (b - a) > SMALL_PASS)
    if backend == "triton" and precision != "fp32":
        backend = "torch"  # the fused kernel counts exact (fp32) scores only (README)
    if backend not in ("numba", "torch", "triton"):
        raise OptionError(f"backend: unknown backend {backend!r} (numba, torch, triton, auto)",
                          param="backend")
    budget = parse_memory(memory) or default_memory(dev)
    rows = block_size or max(1, budget // max(1, 8 * gallery.dim))

    qemb = query.embeddings
    qnorm = row_norms(qemb)
    qa = aux(qemb, metric, qnorm)
    ga = torch.empty(gallery.n, dtype=torch.float32)
    qid, gid = positive_pairs(query.labels, gallery.labels, query.cameras, gallery.cameras, protocol)
    genuine, gmax, g_row = _genuine_scores(qemb, qnorm, qa, gallery, ga, qid, gid, metric, rows,
                                           compiled=backend == "numba")
    check_norms(query, qnorm, gallery, gmax, g_row, metric=metric, precision=precision)
    bound = dot_bound(qnorm, gmax, query.dim)
    check_finite_scores(genuine, query.name, gallery.name, "genuine ")
    stats = VerifyStats.empty(genuine, metric, query.n, gallery.n)
    args = (stats, query, gallery, qemb, qa, ga, bound, protocol, (qa_, qb_), (a, b), rows)
    kw: dict[str, Any] = dict(device=dev, precision=precision, budget=budget, progress=progress)
    if backend == "triton":
        from embeval.engine.triton_trials import impostor_pass

        plan.fused_or_fallback(lambda: impostor_pass(*args, **kw), lambda: _torch_pass(*args, **kw),
                               auto=auto, what="verification")
    else:
        (_cpu_pass if backend == "numba" else _torch_pass)(*args, **kw)
    return stats


def _genuine_scores(qemb: torch.Tensor, qnorm: torch.Tensor, qa: torch.Tensor,
                    gallery: EmbeddingSet, ga: torch.Tensor, qid: torch.Tensor, gid: torch.Tensor,
                    metric: str, rows: int, *,
                    compiled: bool = False) -> tuple[torch.Tensor, float, int]:
    """[M] float32 scores of the genuine pairs (``qid``, ``gid``); the largest gallery row norm
    and its row. Streams the gallery once in blocks, filling ``ga`` ([G] gallery aux) on the
    way; ``compiled``: double-length sums in the numba kernel (the same roundings, faster)."""
    out = torch.empty(len(gid), dtype=torch.float32)
    longest = (0.0, 0)
    for a, block, sel in blocks_with_pairs(gallery, gid, max(rows, 4096)):
        longest = block_aux(block, a, ga, metric, longest)
        q, c = qid[sel], gid[sel] - a
        if compiled:
            dots = _round_compiled(qemb, block, q, c)
        else:
            bound = dot_bound(qnorm[q] * row_norms(block[c]), 1.0, qemb.shape[1])
            dots = pair_dots(qemb[q], block[c], bound)
        out[sel] = transform(dots, qa[q], ga[a + c], metric)
    return out, *longest


def _round_compiled(qemb: torch.Tensor, block: torch.Tensor, qi: torch.Tensor,
                    c: torch.Tensor) -> torch.Tensor:
    """[n] float32 correctly rounded ``qemb[qi] · block[c]``: the compiled double-length sums,
    the exact ties summed exactly."""
    from embeval.engine import kernels

    dots = np.empty(len(qi), np.float32)
    unsure = np.empty(len(qi), np.bool_)
    kernels.round_pairs(qemb.numpy(), block.numpy(), qi.contiguous().numpy(),
                        c.contiguous().numpy(), 0, dots, unsure)
    d = torch.from_numpy(dots)
    if unsure.any():
        idx = torch.from_numpy(np.flatnonzero(unsure))
        d[idx] = exact_dots(qemb[qi[idx]], block[c[idx]])
    return d


def _cpu_pass(stats: VerifyStats, query: EmbeddingSet, gallery: EmbeddingSet, qemb: torch.Tensor,
              qa: torch.Tensor, ga: torch.Tensor, bound: torch.Tensor, protocol: Protocol,
              q_range: tuple[int, int], g_range: tuple[int, int], rows: int, *,
              progress: Progress | None = None, **_: object) -> None:
    """The compiled pass: float64 score tiles of a fixed grid (as :mod:`embeval.engine.cpu`),
    counted by :func:`embeval.engine.kernels.verify_tile` on a thread pool, one set of counters
    per worker; the few ambiguous pairs are summed exactly here."""
    from embeval.engine import kernels
    from embeval.engine.cpu import _grid_tiles, label_groups, tile_shape, workers

    q0, q1 = q_range
    nq = q1 - q0
    if nq == 0:
        return
    tq, tg = tile_shape(nq, gallery.n)
    q = qemb[q0:q1].double().numpy()
    n_qt = -(-nq // tq)
    last = np.zeros((tq, gallery.dim), np.float64)
    last[: nq - (n_qt - 1) * tq] = q[(n_qt - 1) * tq:]
    q_tiles = [q[i * tq:(i + 1) * tq] if i < n_qt - 1 else last for i in range(n_qt)]
    lab_order, lab_lo, lab_hi = label_groups(query.labels, gallery.labels)
    u = stats.gen_values.numpy()
    table, base, scale = slot_table(u)
    shared = dict(
        qlab=query.labels.numpy(), qa=qa.numpy(), ga=ga.numpy(), mode=METRIC_CODES[stats.metric],
        exclude_self=protocol.exclude_self, lab_order=lab_order, lab_lo=lab_lo, lab_hi=lab_hi,
        bound=bound.numpy(), u=u, table=table, base=base, scale=scale,
    )
    n_workers = workers()
    counters: queue.SimpleQueue = queue.SimpleQueue()
    for _worker in range(n_workers):
        counters.put((np.zeros(len(stats.imp_slots), np.int64), np.zeros(KEY_BINS, np.int64),
                      np.empty((tq * tg, 2), np.int64)))
    a, b = g_range
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(n_workers) as pool:
        for start in range(a, b, max(1, rows)):
            stop = min(start + max(1, rows), b)
            block = gallery.rows(start, stop)
            tiles = _grid_tiles(block.double().numpy(), start, stop, tg)
            jobs = [(qt, tile) for qt in range(n_qt) for tile in tiles]

            def count(job: tuple[int, tuple], block: torch.Tensor = block, start: int = start) -> None:
                qt, (g_tile, c0, c1, g0) = job
                slots, keys, amb = counters.get()
                try:
                    out = np.empty((tq, tg), np.float64)
                    np.matmul(q_tiles[qt], g_tile.T, out=out)
                    n = kernels.verify_tile(out, nrows=min(tq, nq - qt * tq), c0=c0, c1=c1,
                                            q0=q0 + qt * tq, g0=g0, slots=slots, keys=keys,
                                            amb=amb, **shared)
                    if n:
                        pairs = torch.from_numpy(amb[:n].copy())
                        _count_exact(stats, qemb, block, qa, ga, pairs[:, 0], pairs[:, 1] - start,
                                     start, slots, keys)
                finally:
                    counters.put((slots, keys, amb))

            list(pool.map(count, jobs))
            if progress is not None:
                progress(stop - a, b - a)
    for _worker in range(n_workers):
        slots, keys, _amb = counters.get()
        stats.imp_slots += torch.from_numpy(slots)
        stats.imp_keys += torch.from_numpy(keys)


def _count_exact(stats: VerifyStats, qemb: torch.Tensor, block: torch.Tensor, qa: torch.Tensor,
                 ga: torch.Tensor, qi: torch.Tensor, c: torch.Tensor, start: int,
                 slots: np.ndarray, keys: np.ndarray) -> None:
    """Count impostor pairs (query ``qi``, gallery item ``start + c``) whose float64 dot product
    was ambiguous (:func:`_round_compiled`)."""
    x = transform(_round_compiled(qemb, block, qi, c), qa[qi], ga[start + c], stats.metric) + 0.0
    np.add.at(slots, slot_of(x, stats.gen_values).numpy(), 1)
    np.add.at(keys, (ordered_keys(x) >> 16).numpy(), 1)


def _torch_pass(stats: VerifyStats, query: EmbeddingSet, gallery: EmbeddingSet,
                qemb: torch.Tensor, qa: torch.Tensor, ga: torch.Tensor, bound: torch.Tensor,
                protocol: Protocol, q_range: tuple[int, int], g_range: tuple[int, int],
                rows: int, *, device: torch.device, precision: str, budget: int,
                progress: Progress | None = None) -> None:
    """The same counts in plain PyTorch ops (CUDA, reduced precisions, small CPU jobs): float64
    dot products for fp32 (exact scores), the precision's matmul otherwise (approximate)."""
    from embeval.engine.torch_pass import device_blocks

    q0, q1 = q_range
    exact = precision == "fp32"
    dtype = torch.float64 if exact else matmul_dtype(precision)
    q_all, qa_all, ga_all = qemb.to(device), qa.to(device), ga.to(device)
    q_mm = q_all.to(dtype)
    e_all = bound.to(device)
    qlab, glab = query.labels.to(device), gallery.labels.to(device)
    u = stats.gen_values.to(device)
    slots = torch.zeros_like(stats.imp_slots, device=device)
    keys = torch.zeros_like(stats.imp_keys, device=device)
    a, b = g_range
    if device.type == "cuda":
        rows = max(1, min(rows, budget // (16 * gallery.dim)))
    qb = max(1, min(max(1, q1 - q0), budget // (BYTES_PER_SCORE * max(1, min(rows, b - a)))))
    with torch.inference_mode(), precision_context(precision):
        for start, stop, g in device_blocks(gallery, a, b, rows, device):
            gi = torch.arange(start, stop, device=device)
            g_mm = g.to(dtype)
            for s0 in range(q0, q1, qb):
                s1 = min(s0 + qb, q1)
                own = (qlab[s0:s1, None] == glab[None, start:stop]) & (qlab[s0:s1, None] >= 0)
                if protocol.exclude_self:
                    own |= torch.arange(s0, s1, device=device)[:, None] == gi[None, :]
                r, c = (~own).nonzero(as_tuple=True)
                dot = (q_mm[s0:s1] @ g_mm.T)[r, c]
                qi = s0 + r
                if exact:
                    d, amb = round_dots(dot, e_all[qi])
                    idx = amb.nonzero().flatten()
                    if len(idx):
                        d[idx] = exact_dots(q_all[qi[idx]].cpu(), g[c[idx]].cpu()).to(device)
                else:
                    d = dot.float()
                x = transform(d, qa_all[qi], ga_all[start + c], stats.metric) + 0.0
                check_finite_scores(x, query.name, gallery.name)
                slots += torch.bincount(slot_of(x, u), minlength=len(slots))
                keys += torch.bincount(ordered_keys(x) >> 16, minlength=KEY_BINS)
            if progress is not None:
                progress(stop - a, b - a)
    stats.imp_slots += slots.cpu()
    stats.imp_keys += keys.cpu()
