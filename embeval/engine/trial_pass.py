"""The verification pass: every (query, gallery) pair is a trial, counted in one pass.

Genuine trials (same known label, after the protocol's exclusions) are gathered first, from
the whole gallery, exactly as the ranking pass gathers positives (canonical scores). One
pass over the gallery in blocks then counts every other pair, an impostor, in the slot its
score falls in among the genuine values (:class:`~embeval.engine.trials.VerifyStats`). Matrix
product scores only filter: one within the rounding bound (``rank.tie_tolerance``) of a
genuine value is replaced by its canonical score, so every count is that of the canonical
scores, the same for any block size, shard split, thread count or device (fp32).

Cost: one pass over the gallery (the matrix product) plus, per impostor score, a table
lookup and two counter increments; memory: the block budget plus the genuine scores.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from embeval.data.store import EmbeddingSet
from embeval.engine import plan
from embeval.engine.plan import default_memory, parse_memory
from embeval.engine.rank import (
    SMALL_PASS,
    Progress,
    _check_inputs,
    _positive_scores,
    check_norms,
    positive_pairs,
    tie_tolerance,
)
from embeval.engine.similarity import (
    METRIC_CODES,
    aux,
    canonical_dot,
    check_finite_scores,
    check_metric,
    matmul_dtype,
    precision_context,
    resolve_device,
    row_norms,
    transform,
)
from embeval.engine.stats import Protocol
from embeval.engine.trials import KEY_BINS, VerifyStats, ordered_keys, slot_of
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
    if backend == "auto":
        compiled = (dev.type == "cpu" and precision == "fp32" and plan.compiled_available()
                    and (qb_ - qa_) * (b - a) > SMALL_PASS)
        backend = "numba" if compiled else "torch"
    if backend not in ("numba", "torch"):
        raise OptionError(f"backend: unknown backend {backend!r} (numba, torch, auto)",
                          param="backend")
    budget = parse_memory(memory) or default_memory(dev)
    rows = block_size or max(1, budget // max(1, 8 * gallery.dim))

    qemb = query.embeddings
    qnorm = row_norms(qemb)
    qa = aux(qemb, metric, qnorm)
    ga = torch.empty(gallery.n, dtype=torch.float32)
    qid, gid = positive_pairs(query.labels, gallery.labels, query.cameras, gallery.cameras, protocol)
    genuine, gmax, g_row = _positive_scores(qemb, qa, gallery, ga, qid, gid, metric, rows,
                                            compiled=backend == "numba")
    check_norms(query, qnorm, gallery, gmax, g_row, metric=metric, precision=precision)
    check_finite_scores(genuine, query.name, gallery.name, "genuine ")
    stats = VerifyStats.empty(genuine, metric)
    eps = tie_tolerance(qemb, metric, gmax)
    run = _cpu_pass if backend == "numba" else _torch_pass
    run(stats, query, gallery, qemb, qa, ga, eps, protocol, (qa_, qb_), (a, b), rows,
        device=dev, precision=precision, budget=budget, progress=progress)
    return stats


def _cpu_pass(stats: VerifyStats, query: EmbeddingSet, gallery: EmbeddingSet, qemb: torch.Tensor,
              qa: torch.Tensor, ga: torch.Tensor, eps: torch.Tensor, protocol: Protocol,
              q_range: tuple[int, int], g_range: tuple[int, int], rows: int, *,
              progress: Progress | None = None, **_: object) -> None:
    """The compiled pass: fixed score tiles (as :mod:`embeval.engine.cpu`), counted by
    :func:`embeval.engine.kernels.verify_tile` on a thread pool, one set of counters per worker."""
    from embeval.engine import kernels
    from embeval.engine.cpu import _grid_tiles, label_groups, tile_shape, workers

    q0, q1 = q_range
    nq = q1 - q0
    if nq == 0:
        return
    tq, tg = tile_shape(nq, gallery.n)
    q = qemb[q0:q1].contiguous().numpy()
    n_qt = -(-nq // tq)
    last = np.zeros((tq, gallery.dim), np.float32)
    last[: nq - (n_qt - 1) * tq] = q[(n_qt - 1) * tq:]
    q_tiles = [q[i * tq:(i + 1) * tq] if i < n_qt - 1 else last for i in range(n_qt)]
    lab_order, lab_lo, lab_hi = label_groups(query.labels, gallery.labels)
    u = stats.gen_values.numpy()
    table, base, scale = _slot_table(u)
    shared = dict(
        Qe=qemb.numpy(), qlab=query.labels.numpy(), glab=gallery.labels.numpy(),
        qcam=np.zeros(1, np.int64), gcam=np.zeros(1, np.int64),
        qa=qa.numpy(), ga=ga.numpy(), mode=METRIC_CODES[stats.metric],
        exclude_self=protocol.exclude_self, lab_order=lab_order, lab_lo=lab_lo, lab_hi=lab_hi,
        eps=eps.numpy(), u=u, table=table, base=base, scale=scale,
    )
    n_workers = workers()
    counters: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(n_workers):
        counters.put((np.zeros(len(stats.imp_slots), np.int64), np.zeros(KEY_BINS, np.int64)))
    a, b = g_range
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(n_workers) as pool:
        for start in range(a, b, max(1, rows)):
            stop = min(start + max(1, rows), b)
            tiles = _grid_tiles(gallery.rows(start, stop).numpy(), start, stop, tg)
            jobs = [(qt, tile) for qt in range(n_qt) for tile in tiles]

            def count(job: tuple[int, tuple]) -> None:
                qt, (g_tile, c0, c1, g0) = job
                slots, keys = counters.get()
                try:
                    out = np.empty((tq, tg), np.float32)
                    np.matmul(q_tiles[qt], g_tile.T, out=out)
                    kernels.verify_tile(out, g_tile, nrows=min(tq, nq - qt * tq), c0=c0, c1=c1,
                                        q0=q0 + qt * tq, g0=g0, slots=slots, keys=keys, **shared)
                finally:
                    counters.put((slots, keys))

            list(pool.map(count, jobs))
            if progress is not None:
                progress(stop - a, b - a)
    for _ in range(n_workers):
        slots, keys = counters.get()
        stats.imp_slots += torch.from_numpy(slots)
        stats.imp_keys += torch.from_numpy(keys)


def _slot_table(u: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The kernel's slot guess: ``table[t]`` = #u below ``base + t / scale`` over [u_0, u_last]."""
    if len(u) == 0:
        return np.zeros(1, np.int64), 0.0, 0.0
    n = int(min(max(4 * len(u), 16), 1 << 22))
    base, top = float(u[0]), float(u[-1])
    scale = n / (top - base) if top > base else 0.0
    edges = base + np.arange(n, dtype=np.float64) / scale if scale else np.full(1, base)
    return np.searchsorted(u.astype(np.float64), edges, side="left").astype(np.int64), base, scale


def _torch_pass(stats: VerifyStats, query: EmbeddingSet, gallery: EmbeddingSet,
                qemb: torch.Tensor, qa: torch.Tensor, ga: torch.Tensor, eps: torch.Tensor,
                protocol: Protocol, q_range: tuple[int, int], g_range: tuple[int, int],
                rows: int, *, device: torch.device, precision: str, budget: int,
                progress: Progress | None = None) -> None:
    """The same counts in plain PyTorch ops (CUDA, reduced precisions, small CPU jobs)."""
    from embeval.engine.torch_pass import device_blocks

    q0, q1 = q_range
    dtype = matmul_dtype(precision)
    q_all, qa_all, ga_all = qemb.to(device), qa.to(device), ga.to(device)
    qlab, glab = query.labels.to(device), gallery.labels.to(device)
    e_all = eps.to(device) if precision == "fp32" else None
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
                s = transform((q_all[s0:s1].to(dtype) @ g_mm.T).float(), qa_all[s0:s1, None],
                              ga_all[None, start:stop], stats.metric)
                check_finite_scores(s, query.name, gallery.name)
                own = (qlab[s0:s1, None] == glab[None, start:stop]) & (qlab[s0:s1, None] >= 0)
                if protocol.exclude_self:
                    own |= torch.arange(s0, s1, device=device)[:, None] == gi[None, :]
                r, c = (~own).nonzero(as_tuple=True)
                x = s[r, c] + 0.0
                if e_all is not None and len(u):
                    x = _canonical_near(x, u, e_all[s0 + r], q_all, g, qa_all, ga_all,
                                        s0 + r, c, start, stats.metric)
                slots += torch.bincount(slot_of(x, u), minlength=len(slots))
                keys += torch.bincount(ordered_keys(x) >> 16, minlength=KEY_BINS)
            if progress is not None:
                progress(stop - a, b - a)
    stats.imp_slots += slots.cpu()
    stats.imp_keys += keys.cpu()


def _canonical_near(x: torch.Tensor, u: torch.Tensor, e: torch.Tensor, q_all: torch.Tensor,
                    g: torch.Tensor, qa_all: torch.Tensor, ga_all: torch.Tensor,
                    qi: torch.Tensor, c: torch.Tensor, start: int, metric: str) -> torch.Tensor:
    """``x`` with every score within ``e`` of a genuine value replaced by its canonical score."""
    j = torch.searchsorted(u, x.contiguous(), right=True)
    below = u[(j - 1).clamp_min(0)]
    above = u[j.clamp_max(len(u) - 1)]
    near = ((j > 0) & (x - below <= e)) | ((j < len(u)) & (above - x <= e))
    idx = near.nonzero().flatten()
    if len(idx):
        qi, c = qi[idx], c[idx]
        x = x.clone()
        x[idx] = transform(canonical_dot(q_all[qi], g[c]), qa_all[qi], ga_all[start + c],
                           metric) + 0.0
    return x
