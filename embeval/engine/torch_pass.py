"""Negative pass in plain PyTorch ops: the CUDA path, and the CPU path for bf16/fp16/tf32.

Blocks of (queries × gallery items) sized to the memory budget: one matmul, the
metric transform, the negative mask, a batched ``searchsorted`` of the block against
each query's ascending positive scores (padded with +inf), and a ``scatter_add`` into
padded per-query histograms. Top-k keeps the lowest gallery index on score ties.

Exact ties in fp32 (as ``embeval.engine.kernels``): the block's matmul scores only filter. Where
one lies within ``eps[q]`` (``ranking.tie_tolerance``) of a decision (a positive's score,
the row's hardest negative, the k-th best) it is replaced by the canonical score
(:func:`embeval.engine.similarity.canonical_dot`), which is the same on CPU and CUDA; so CUDA
and CPU give the same counts. Reduced precisions (tf32, bf16, fp16) are approximate and
skip this step.

Gallery blocks are read ahead by a helper thread (:func:`device_blocks`); on CUDA into
pinned memory and copied on a side stream, so the disk read and the host→device copy of
the next block overlap the current block's compute. Two gallery blocks are then on the
device at once: each is at most a quarter of the budget, the score blocks get the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from embeval.data.store import EmbeddingSet
from embeval.engine.listed import listed_masks
from embeval.engine.similarity import (
    canonical_dot,
    check_finite_scores,
    matmul_dtype,
    precision_context,
    transform,
)

NEG_INF = float("-inf")
BYTES_PER_SCORE = 64  # dot, score, bucket (int64), neighbour scores, masks, top-k


def negative_pass(stats, query: EmbeddingSet, gallery: EmbeddingSet, qemb: torch.Tensor,
                  qa: torch.Tensor, ga: torch.Tensor, protocol, g_range: tuple[int, int],
                  rows: int, *, device: torch.device, precision: str, budget: int,
                  progress=None, relevance=None) -> None:
    """Fill ``stats`` (in place) from gallery items ``g_range`` streamed in blocks of ``rows``.

    ``relevance``: the queries' listed items, exclusions folded in
    (:func:`embeval.engine.listed.with_protocol`): listed items are not negatives, junk is
    not a top-k candidate; else label equality and the camera rule decide.
    """
    nq = query.n
    dtype = matmul_dtype(precision)
    q_all = qemb.to(device)
    qa_all, ga_all = qa.to(device), ga.to(device)
    qlab = query.labels.to(device)
    glab = gallery.labels.to(device)
    qcam = gcam = None
    csr = None
    if relevance is not None:
        csr = (relevance.offsets.to(device), relevance.gallery.to(device),
               relevance.positive.to(device))
    elif protocol.exclude_same_camera:
        assert query.cameras is not None and gallery.cameras is not None  # checked by rank_stats
        qcam, gcam = query.cameras.to(device), gallery.cameras.to(device)
    counts = stats.n_pos.to(device)
    offsets = stats.pos_offsets.to(device)
    pos = stats.pos_scores.to(device)
    k = stats.topk_scores.shape[1] if stats.topk_scores is not None else 0
    a, b = g_range
    score_budget = budget
    if device.type == "cuda":  # two gallery blocks on the device: each ≤ budget / 4
        rows = max(1, min(rows, budget // (16 * gallery.dim)))
        score_budget = max(1, budget - 2 * 4 * gallery.dim * max(1, min(rows, b - a)))
    qb = max(1, min(nq, score_budget // (BYTES_PER_SCORE * max(1, min(rows, b - a)))))
    hist_out = torch.zeros_like(stats.neg_hist, device=device)
    n_neg = stats.n_neg.to(device)
    max_neg = stats.max_neg.to(device)
    topv = stats.topk_scores.to(device) if k else None
    topi = stats.topk_indices.to(device) if k else None
    eps = stats.extra["eps"].to(device) if precision == "fp32" and "eps" in stats.extra else None
    with torch.inference_mode(), precision_context(precision):
        for start, stop, g in device_blocks(gallery, a, b, rows, device):
            gi = torch.arange(start, stop, device=device)
            g_mm = g.to(dtype)
            for q0 in range(0, nq, qb):
                q1 = min(q0 + qb, nq)
                qi = torch.arange(q0, q1, device=device)
                dot = (q_all[q0:q1].to(dtype) @ g_mm.T).float()
                s = transform(dot, qa_all[q0:q1, None], ga_all[None, start:stop], stats.metric)
                check_finite_scores(s, query.name, gallery.name)
                junk: torch.Tensor | None
                if csr is not None:
                    same, junk = listed_masks(*csr, qi, start, stop)
                else:
                    same = (qlab[q0:q1, None] == glab[None, start:stop]) & (qlab[q0:q1, None] >= 0)
                    junk = same & (qcam[q0:q1, None] == gcam[None, start:stop]) \
                        if k and qcam is not None and gcam is not None else None
                dropped = qi[:, None] == gi[None, :] if protocol.exclude_self else None
                neg = ~same if dropped is None else ~same & ~dropped
                n_neg[q0:q1] += neg.sum(1)
                padded = _padded_positives(counts[q0:q1], offsets[q0:q1 + 1], pos)
                cand = None
                if k:
                    excluded = dropped if junk is None else (junk if dropped is None
                                                             else junk | dropped)
                    cand = s if excluded is None else s.masked_fill(excluded, NEG_INF)
                masked = s.masked_fill(~neg, NEG_INF)
                bucket = torch.searchsorted(padded, masked, right=True)  # [qb, gb] in 0..P
                if eps is not None:
                    near = _near_decisions(masked, cand, padded, bucket, eps[q0:q1, None], k)
                    r_all, c_all = near.nonzero(as_tuple=True)
                    # in steps within the budget: with a large k most top-k candidates are
                    # recomputed, and each holds its two rows and its positives here
                    step = max(1, score_budget // 8 // (4 * (2 * gallery.dim + padded.shape[1]) + 64))
                    for s0 in range(0, len(r_all), step):
                        r, c = r_all[s0:s0 + step], c_all[s0:s0 + step]
                        exact = transform(canonical_dot(q_all[q0 + r], g[c]),
                                          qa_all[q0 + r], ga_all[start + c], stats.metric)
                        masked[r, c] = torch.where(neg[r, c], exact, NEG_INF)
                        bucket[r, c] = (padded[r] <= masked[r, c, None]).sum(1)
                        if cand is not None:
                            cand[r, c] = torch.where(cand[r, c] > NEG_INF, exact, NEG_INF)
                max_neg[q0:q1] = torch.maximum(max_neg[q0:q1], masked.amax(1))
                _histogram(bucket, counts[q0:q1], offsets[q0:q1 + 1], hist_out, q0)
                if cand is not None and topv is not None and topi is not None:
                    _topk_update(cand, gi, topv[q0:q1], topi[q0:q1])
            if progress is not None:
                progress(stop - a, b - a)
    stats.neg_hist += hist_out.cpu()
    stats.n_neg.copy_(n_neg.cpu())
    stats.max_neg.copy_(max_neg.cpu())
    if stats.topk_scores is not None and stats.topk_indices is not None:
        assert topv is not None and topi is not None
        stats.topk_scores.copy_(topv.cpu())
        stats.topk_indices.copy_(topi.cpu())


def device_blocks(gallery: EmbeddingSet, a: int, b: int, rows: int,
                  device: torch.device) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, rows [stop - start, D] float32 on device)`` over items ``[a, b)``.

    A helper thread reads block i+1 (pinned on CUDA) while block i is ranked; on CUDA block
    i+1's copy is queued on a side stream before block i is yielded, and the compute stream
    waits on that copy's event before using it.
    """
    spans = [(s, min(s + rows, b)) for s in range(a, b, rows)]
    if not spans:
        return
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None

    def read(span: tuple[int, int]) -> torch.Tensor:
        host = gallery.rows(*span)
        return host.pin_memory() if cuda else host

    def upload(host: torch.Tensor) -> tuple[torch.Tensor, object]:
        if not cuda:
            return host, None
        with torch.cuda.stream(side):
            on_device = host.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        return on_device, done

    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(read, spans[0])
        current = upload(pending.result())
        if len(spans) > 1:
            pending = reader.submit(read, spans[1])
        for i, (start, stop) in enumerate(spans):
            following = None
            if i + 1 < len(spans):
                following = upload(pending.result())
                if i + 2 < len(spans):
                    pending = reader.submit(read, spans[i + 2])
            block, done = current
            if done is not None:
                compute = torch.cuda.current_stream(device)
                compute.wait_event(done)  # type: ignore[arg-type]
                block.record_stream(compute)  # allocated on the side stream, used here
            yield start, stop, block
            current = following  # type: ignore[assignment]


def _padded_positives(counts: torch.Tensor, offsets: torch.Tensor,
                      pos: torch.Tensor) -> torch.Tensor:
    """[qb, max(P, 1)]: each query's ascending positive scores, padded with +inf."""
    pmax = max(1, int(counts.max()) if counts.numel() else 1)
    idx = offsets[:-1, None] + torch.arange(pmax, device=pos.device)[None, :]
    valid = torch.arange(pmax, device=pos.device)[None, :] < counts[:, None]
    picked = pos[idx.clamp_max(max(len(pos) - 1, 0))] if len(pos) else torch.zeros_like(
        idx, dtype=torch.float32)
    return torch.where(valid, picked, torch.tensor(float("inf"), device=pos.device))


def _near_decisions(masked: torch.Tensor, cand: torch.Tensor | None, padded: torch.Tensor,
                    bucket: torch.Tensor, eps: torch.Tensor, k: int) -> torch.Tensor:
    """[qb, gb] bool: the matmul scores that may decide something differently from their
    canonical scores: negatives (``masked``, -inf elsewhere) within ``eps`` [qb, 1] of one of
    the query's positives or of the row's largest negative, and top-k candidates (``cand``)
    within ``eps`` of the block's k-th best."""
    inf = torch.full_like(padded[:, :1], float("inf"))
    below = padded.gather(1, (bucket - 1).clamp_min(0))
    above = torch.cat([padded, inf], 1).gather(1, bucket)
    near = ((bucket > 0) & (masked - below <= eps)) | (above - masked <= eps)
    near |= (masked >= masked.amax(1, keepdim=True) - eps) & (masked > NEG_INF)
    if cand is not None:
        kth = torch.topk(cand, min(k, cand.shape[1]), dim=1).values[:, -1:]
        near |= (cand >= kth - eps) & (cand > NEG_INF)
    return near


def _histogram(bucket: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor,
               hist: torch.Tensor, q0: int) -> None:
    """Add the block's negatives (``bucket`` [qb, gb]: how many of the query's positives
    score ≤ it; 0 for non-negatives, never counted) to the global histogram bins."""
    pmax = int(counts.max()) if counts.numel() else 0
    if pmax == 0:
        return
    qb = bucket.shape[0]
    local = torch.zeros(qb, pmax + 1, dtype=torch.int64, device=bucket.device)
    local.scatter_add_(1, bucket, torch.ones_like(bucket))
    # query r's bins start at offsets[r] + (q0 + r) in the global histogram; bin 0 is never used
    rows = torch.arange(qb, device=bucket.device)
    bins = torch.arange(1, pmax + 1, device=bucket.device)[None, :]
    target = offsets[:-1, None] + (q0 + rows)[:, None] + bins
    keep = bins <= counts[:, None]
    hist.index_add_(0, target[keep], local[:, 1:][keep])


def _topk_update(cand: torch.Tensor, gi: torch.Tensor, topv: torch.Tensor,
                 topi: torch.Tensor) -> None:
    """Merge the block's exact top-k (ties → lower gallery index) into ``topv``/``topi``."""
    k = topv.shape[1]
    kk = min(k, cand.shape[1])
    kth = torch.topk(cand, kk, dim=1).values[:, -1:]
    above = cand > kth
    tied = cand == kth
    room = kk - above.sum(1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, 1) <= room))
    r, c = keep.nonzero(as_tuple=True)  # row-major: exactly kk per row, gallery order
    bv = cand[r, c].view(-1, kk)
    bi = gi[c].view(-1, kk).masked_fill(bv == float("-inf"), torch.iinfo(torch.int64).max)
    v = torch.cat([topv, bv], 1)
    i = torch.cat([topi, bi], 1)
    order = torch.argsort(i, dim=1, stable=True)
    v, i = v.gather(1, order), i.gather(1, order)
    order = torch.argsort(v, dim=1, descending=True, stable=True)[:, :k]
    topv.copy_(v.gather(1, order))
    topi.copy_(i.gather(1, order))
