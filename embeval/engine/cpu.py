"""CPU negative pass: fixed-shape score tiles (numpy sgemm) + the fused numba kernel.

Scores are always computed one tile of a fixed global grid at a time (``TQ`` queries ×
``TG`` gallery items, edge and shard-boundary tiles zero-padded in place), each with a
single-threaded sgemm. A score's arithmetic therefore never depends on the block size,
the shard split or the number of threads, and neither do the statistics. Parallelism
comes from running tiles on a thread pool (the kernel releases the GIL).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from embeval.data.store import EmbeddingSet
from embeval.engine import kernels as _kernels
from embeval.engine.similarity import METRIC_CODES

TILE_Q = 512
TILE_G = 2048


def tile_shape(n_query: int, n_gallery: int) -> tuple[int, int]:
    """The grid's tile shape: fixed, shrunk (to multiples of 16) only for small sets."""
    def fit(n: int, cap: int) -> int:
        return min(cap, -(-n // 16) * 16)
    return fit(n_query, TILE_Q), fit(n_gallery, TILE_G)


def workers() -> int:
    return max(1, int(os.environ.get("EMBEVAL_THREADS", torch.get_num_threads())))


def negative_pass(stats, query: EmbeddingSet, gallery: EmbeddingSet, qemb: torch.Tensor,
                  qa: torch.Tensor, ga: torch.Tensor, protocol, g_range: tuple[int, int],
                  rows: int, *, progress=None, relevance=None, **_: object) -> None:
    """Fill ``stats`` (in place) from gallery items ``g_range`` streamed in blocks of ``rows``.

    ``relevance``: the queries' listed items, exclusions folded in
    (:func:`embeval.engine.listed.with_protocol`), instead of their label groups.
    """
    nq = query.n
    tq, tg = tile_shape(nq, gallery.n)
    q = qemb.numpy()
    n_qt = -(-nq // tq)
    last = np.zeros((tq, gallery.dim), np.float32)
    last[: nq - (n_qt - 1) * tq] = q[(n_qt - 1) * tq:]
    q_tiles = [q[i * tq:(i + 1) * tq] if i < n_qt - 1 else last for i in range(n_qt)]

    no_cam = np.zeros(1, np.int64)
    if relevance is None:
        lab_order, lab_lo, lab_hi = label_groups(query.labels, gallery.labels)
        own_junk = np.zeros(len(lab_order), np.bool_)
    else:  # the camera rule is folded into the lists (junk)
        lab_order, off = relevance.gallery.numpy(), relevance.offsets.numpy()
        lab_lo, lab_hi, own_junk = off[:-1], off[1:], (~relevance.positive).numpy()
    shared = dict(
        qcam=query.cameras.numpy() if query.cameras is not None else np.zeros(nq, np.int64),
        gcam=gallery.cameras.numpy() if gallery.cameras is not None else no_cam,
        qa=qa.numpy(), ga=ga.numpy(), mode=METRIC_CODES[stats.metric],
        exclude_self=protocol.exclude_self,
        exclude_cam=protocol.exclude_same_camera and relevance is None,
        lab_order=lab_order, lab_lo=lab_lo, lab_hi=lab_hi, own_junk=own_junk,
        eps=stats.extra["eps"].numpy(), Qe=q,
    )
    offsets = stats.pos_offsets.numpy()
    k = stats.topk_scores.shape[1] if stats.topk_scores is not None else 0
    views = _RowViews(stats, offsets, tq, k)
    n_workers = workers()
    a, b = g_range
    rows = max(1, rows)
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(n_workers) as pool:
        for start in range(a, b, rows):
            stop = min(start + rows, b)
            block = gallery.rows(start, stop).numpy()
            tiles = _grid_tiles(block, start, stop, tg)
            groups = 1 if n_qt >= n_workers else min(n_workers, len(tiles))
            chunks = [tiles[i::groups] for i in range(groups)]
            jobs = [(qt, chunk) for qt in range(n_qt) for chunk in chunks]

            def run(job: tuple[int, list], groups: int = groups) -> None:
                qt, chunk = job
                state = views.rows(qt) if groups == 1 else views.private(qt)
                out = np.empty((tq, tg), np.float32)
                nrows = min(tq, nq - qt * tq)
                for g_tile, c0, c1, g0 in chunk:
                    np.matmul(q_tiles[qt], g_tile.T, out=out)
                    _kernels.tile_pass(out, g_tile, nrows=nrows, c0=c0, c1=c1, q0=qt * tq, g0=g0,
                                       **shared, **state)
                if groups > 1:
                    views.merge(qt, state)

            list(pool.map(run, jobs))  # every tile done (an error in one is raised here)
            if progress is not None:
                progress(stop - a, b - a)


def label_groups(query_labels: torch.Tensor,
                 gallery_labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery indices grouped by label, [G] int64 (ascending within a label), and each
    query's group ``[lo, hi)`` in it, [Q] int64 each (empty for labels < 0)."""
    order = torch.argsort(gallery_labels, stable=True)
    sorted_labels = gallery_labels[order]
    lo = torch.searchsorted(sorted_labels, query_labels)
    hi = torch.searchsorted(sorted_labels, query_labels, right=True)
    hi = torch.where(query_labels >= 0, hi, lo)
    return order.numpy(), lo.numpy(), hi.numpy()


def _grid_tiles(block: np.ndarray, start: int, stop: int, tg: int) -> list[tuple]:
    """Grid tiles covering gallery rows ``[start, stop)``: (rows [tg, D], c0, c1, g0)."""
    tiles = []
    for t in range(start // tg, -(-stop // tg)):
        g0 = t * tg
        lo, hi = max(start, g0), min(stop, g0 + tg)
        if lo == g0 and hi == g0 + tg:
            rows = block[g0 - start:g0 - start + tg]
        else:
            rows = np.zeros((tg, block.shape[1]), np.float32)
            rows[lo - g0:hi - g0] = block[lo - start:hi - start]
        tiles.append((rows, lo - g0, hi - g0, g0))
    return tiles


class _RowViews:
    """The kernel's per-tile-row arguments: views of the shared statistics, or private copies."""

    def __init__(self, stats, offsets: np.ndarray, tq: int, k: int) -> None:
        self.offsets = offsets
        self.tq = tq
        self.k = k
        self.hist = stats.neg_hist.numpy()
        self.pos = stats.pos_scores.numpy()
        self.max_neg = stats.max_neg.numpy()
        self.n_neg = stats.n_neg.numpy()
        nq = len(offsets) - 1
        self.topv = stats.topk_scores.numpy() if k else np.zeros((nq, 0), np.float32)
        self.topi = stats.topk_indices.numpy() if k else np.zeros((nq, 0), np.int64)
        self.lock = threading.Lock()

    def _span(self, qt: int) -> tuple[int, int]:
        r0 = qt * self.tq
        return r0, min(r0 + self.tq, len(self.offsets) - 1)

    def rows(self, qt: int) -> dict[str, np.ndarray]:
        r0, r1 = self._span(qt)
        off = self.offsets[r0:r1 + 1] - self.offsets[r0]
        p0, p1 = self.offsets[r0], self.offsets[r1]
        return dict(pos_off=off, pos=self.pos[p0:p1], hist=self.hist[p0 + r0:p1 + r1],
                    max_neg=self.max_neg[r0:r1], n_neg=self.n_neg[r0:r1],
                    topv=self.topv[r0:r1], topi=self.topi[r0:r1])

    def private(self, qt: int) -> dict[str, np.ndarray]:
        view = self.rows(qt)
        return dict(view, hist=np.zeros_like(view["hist"]),
                    max_neg=np.full_like(view["max_neg"], -np.inf),
                    n_neg=np.zeros_like(view["n_neg"]),
                    topv=np.full_like(view["topv"], -np.inf),
                    topi=np.full_like(view["topi"], np.iinfo(np.int64).max))

    def merge(self, qt: int, part: dict[str, np.ndarray]) -> None:
        with self.lock:
            view = self.rows(qt)
            view["hist"] += part["hist"]
            view["n_neg"] += part["n_neg"]
            np.maximum(view["max_neg"], part["max_neg"], out=view["max_neg"])
            if self.k:
                _kernels.merge_topk(view["topv"], view["topi"], part["topv"], part["topi"])
