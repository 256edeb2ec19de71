"""Negative pass in one fused Triton kernel (``backend="triton"``): scores never leave the chip.

The gallery is streamed in blocks as by :mod:`embeval.engine.torch_pass` (read ahead, pinned,
side-stream copies); each block is one launch of :func:`embeval.engine.triton_kernel.rank_tiles`
over (query tile × a share of the block's gallery tiles). The kernel's tf32x3 scores are within
``eps[q]`` (:func:`embeval.engine.fused_bound.fused_tolerance`) of the canonical scores; they
decide whatever lies further than that from a decision, and the pairs they cannot decide come
back in a buffer of (query, gallery item) and are settled here with the canonical score
(:func:`embeval.engine.similarity.canonical_dot`), exactly as :mod:`embeval.engine.cpu` and
:mod:`embeval.engine.torch_pass` settle theirs. So the statistics are bit-identical to theirs:

- a negative within ``eps`` of one of its query's positives: counted in the histogram bin of its
  canonical score;
- the hardest negative: the canonical maximum over every negative whose kernel score is within
  ``2·eps`` of the query's kernel maximum (the programs' maxima and the buffer's candidates);
- a full buffer: the kernel counts every append it could not write, and the launch is run again,
  from zeroed counts, with a buffer that size (nothing is dropped, nothing counted twice).

Top-k lists are not kept here (``rank_stats`` gives jobs with ``topk`` to the torch pass), and
only fp32 runs here (tf32 / bf16 / fp16 are the torch pass's approximate filters).
On CPU tensors the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1`` when Triton is
first imported): slow, for tests.
"""

from __future__ import annotations

import math

import torch

from embeval.data.store import EmbeddingSet
from embeval.engine import plan
from embeval.engine.fused_bound import CHUNK, KERNEL_PRECISION
from embeval.engine.similarity import METRIC_CODES, canonical_dot, check_finite_scores, transform
from embeval.engine.torch_pass import device_blocks
from embeval.errors import OptionError

__all__ = ["negative_pass", "available", "kernel_module", "sm_count", "search_steps", "Tiles"]

#: (BQ, BG, BK, num_warps, num_stages): the tile of one program step, on CUDA and in the interpreter
CUDA_TILES = (128, 64, 32, 8, 3)
INTERPRETER_TILES = (32, 32, 16, 1, 1)
Tiles = tuple[int, int, int, int, int]
#: gallery items per launch on CUDA: bounds the buffer (its size follows from the last launch's)
LAUNCH_ROWS = 1 << 16


def available() -> bool:
    """Whether Triton can be imported (found without importing it)."""
    return plan.triton_available()


def kernel_module(device: torch.device):
    """The kernel module, or an :class:`OptionError` saying why the backend cannot run here."""
    if not available():
        raise OptionError("backend triton: Triton is not installed (pip install \"embeval[gpu]\")",
                          param="backend")
    from embeval.engine import triton_kernel

    if device.type == "cpu" and not triton_kernel.interpreting():
        raise OptionError("backend triton on CPU runs in Triton's interpreter only: set "
                          "TRITON_INTERPRET=1 (slow, for tests), or use a CUDA device",
                          param="backend")
    if device.type == "cuda" and triton_kernel.interpreting():
        raise OptionError("backend triton: Triton runs in its interpreter (TRITON_INTERPRET is "
                          "set), which cannot use CUDA tensors; unset it", param="backend")
    return triton_kernel


def negative_pass(stats, query: EmbeddingSet, gallery: EmbeddingSet, qemb: torch.Tensor,
                  qa: torch.Tensor, ga: torch.Tensor, protocol, g_range: tuple[int, int],
                  rows: int, *, device: torch.device, precision: str = "fp32", budget: int,
                  progress=None, relevance=None, tiles: Tiles | None = None,
                  splits: int | None = None, capacity: int | None = None) -> None:
    """Fill ``stats`` (in place; no top-k) from gallery items ``g_range`` in blocks of ``rows``.

    ``stats.extra["eps"]``: [Q] the kernel's bound (``fused_tolerance``). ``relevance``: as for
    :func:`embeval.engine.torch_pass.negative_pass`. ``tiles`` / ``splits`` (gallery shares per
    query tile) / ``capacity`` (first buffer size): tuning, and tests; never change a result.
    """
    kernel = kernel_module(device)
    if stats.topk_scores is not None or precision != "fp32":
        raise OptionError("backend triton: fp32 without top-k only (rank_stats gives the rest to "
                          "the torch pass)", param="backend")
    bq, bg, bk, warps, stages = tiles or (CUDA_TILES if device.type == "cuda" else INTERPRETER_TILES)
    if bk > CHUNK:  # the rounding bound (embeval.engine.fused_bound) assumes chunks of ≤ CHUNK
        raise OptionError(f"backend triton: tile depth {bk} above the bound's chunk {CHUNK}",
                          param="backend")
    nq = query.n
    a, b = g_range
    if nq == 0 or b <= a:
        return
    run = _Launch(stats, query, gallery, qemb, qa, ga, protocol, device, relevance, budget)
    if device.type == "cuda":  # launches of ≤ LAUNCH_ROWS items keep each buffer small
        rows = max(1, min(rows, budget // (16 * gallery.dim), LAUNCH_ROWS))
    hist = torch.zeros_like(stats.neg_hist, device=device)
    n_neg = torch.zeros(nq, dtype=torch.int64, device=device)
    best = torch.full((nq,), float("-inf"), device=device)
    launch = dict(bq=bq, bg=bg, bk=bk, warps=warps, stages=stages)
    for start, stop, g in device_blocks(gallery, a, b, rows, device):
        n_qt = -(-nq // bq)
        n_gt = -(-(stop - start) // bg)
        share = splits or (max(1, 4 * sm_count(device) // n_qt) if device.type == "cuda" else 1)
        per = -(-n_gt // min(max(1, share), n_gt))
        # the first buffer: the last launch's appends per item, with a margin
        cap = capacity or max(1 << 12, 4 * nq * -(-n_gt // per),
                              int(1.25 * run.needed * (stop - start) / max(1, run.items)))
        while True:
            out = run.block(kernel, g, start, per, cap, **launch)
            if out is not None:
                break
            cap = run.needed  # the launch reported how many appends it had: rerun that big
        run.items = stop - start
        h, n, m = out
        hist += h
        n_neg += n
        torch.maximum(best, m, out=best)
        if progress is not None:
            progress(stop - a, b - a)
    stats.neg_hist += hist.cpu()
    stats.n_neg += n_neg.cpu()
    torch.maximum(stats.max_neg, best.cpu(), out=stats.max_neg)


def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def search_steps(n: int) -> int:
    """Binary-search steps that settle any range of up to ``n`` items."""
    return max(1, math.ceil(math.log2(n + 1)) + 1)


class _Launch:
    """The per-pass tensors on the device, and one block's launch and settlement."""

    def __init__(self, stats, query: EmbeddingSet, gallery: EmbeddingSet, qemb: torch.Tensor,
                 qa: torch.Tensor, ga: torch.Tensor, protocol, device: torch.device,
                 relevance, budget: int) -> None:
        self.metric = stats.metric
        self.names = (query.name, gallery.name)
        self.protocol = protocol
        self.q = qemb.to(device).float().contiguous()
        self.qa, self.ga = qa.to(device), ga.to(device)
        self.qlab = query.labels.to(device, torch.int64).contiguous()
        self.glab = gallery.labels.to(device, torch.int64).contiguous()
        self.listed = relevance is not None
        one = torch.zeros(1, dtype=torch.int64, device=device)
        if relevance is not None:
            self.own_off = relevance.offsets.to(device).contiguous()
            self.own = relevance.gallery.to(device).contiguous() if len(relevance.gallery) else one
            lengths = relevance.offsets[1:] - relevance.offsets[:-1]
            self.own_steps = search_steps(int(lengths.max()) if len(lengths) else 0)
        else:
            self.own_off, self.own, self.own_steps = one, one, 1
        self.pos_off = stats.pos_offsets.to(device).contiguous()
        pos = stats.pos_scores.to(device).contiguous()
        self.pos = pos if len(pos) else torch.zeros(1, device=device)
        counts = stats.n_pos
        self.pos_steps = search_steps(int(counts.max()) if len(counts) else 0)
        self.eps = stats.extra["eps"].to(device).contiguous()
        self.n_hist = len(stats.neg_hist)
        self.device = device
        self.needed = 0  # appends of the last launch, and its gallery items
        self.items = 1
        # pairs rescored at once: their gathered rows take ≤ budget / 2
        self.chunk = max(1 << 14, min(1 << 20, budget // (16 * max(1, qemb.shape[1]))))

    def block(self, kernel, g: torch.Tensor, start: int, per: int, cap: int, *, bq: int, bg: int,
              bk: int, warps: int, stages: int):
        """One launch over gallery rows ``g`` (items ``start...``); ``None`` when the buffer was
        too small (``self.needed`` says how big it must be), else ``(hist, n_neg, max_neg)``."""
        dev = self.device
        nq, n_g = len(self.q), len(g)
        n_qt = -(-nq // bq)
        n_gt = -(-n_g // bg)
        n_split = -(-n_gt // per)
        hist = torch.zeros(self.n_hist, dtype=torch.int64, device=dev)
        nneg = torch.zeros(n_split, nq, dtype=torch.int64, device=dev)
        pmax = torch.empty(n_split, nq, device=dev)
        parg = torch.empty(n_split, nq, dtype=torch.int32, device=dev)
        buf_q = torch.empty(cap, dtype=torch.int32, device=dev)
        buf_c = torch.empty(cap, dtype=torch.int32, device=dev)
        buf_s = torch.empty(cap, device=dev)
        cnt = torch.zeros(1, dtype=torch.int64, device=dev)
        bad = torch.zeros(1, dtype=torch.int64, device=dev)
        g = g.float().contiguous()
        extra = (dict(num_warps=warps, num_stages=stages, enable_fp_fusion=False)
                 if dev.type == "cuda" else {})  # IEEE operations: no contraction into FMAs
        kernel.rank_tiles[(n_qt, n_split)](
            self.q, g, self.qa, self.ga[start:start + n_g], self.qlab,
            self.glab[start:start + n_g], self.own_off, self.own, self.pos_off, self.pos,
            self.eps, hist, nneg, pmax, parg, buf_q, buf_c, buf_s, cnt, bad,
            nq, n_g, start, g.shape[1], per, self.pos_steps, self.own_steps, cap,
            MODE=METRIC_CODES[self.metric], EXCLUDE_SELF=bool(self.protocol.exclude_self),
            LISTED=self.listed, PRECISION=KERNEL_PRECISION, BQ=bq, BG=bg, BK=bk, **extra)
        if int(bad.item()):
            check_finite_scores(torch.tensor([float("nan")]), *self.names)
        n = int(cnt.item())
        self.needed = n
        if n > cap:
            return None
        best = self._settle(hist, g, start, pmax, parg, buf_q[:n], buf_c[:n], buf_s[:n])
        return hist, nneg.sum(0), best

    def _settle(self, hist: torch.Tensor, g: torch.Tensor, start: int, pmax: torch.Tensor,
                parg: torch.Tensor, bq: torch.Tensor, bc: torch.Tensor,
                bs: torch.Tensor) -> torch.Tensor:
        """Canonical scores of the buffer and the hardest-negative candidates: the undecided
        histogram entries are added to ``hist``; returns the block's [Q] hardest negatives."""
        nq = len(self.q)
        kmax = pmax.amax(0)
        floor = kmax - 2 * self.eps
        split_rows = torch.arange(nq, device=hist.device).expand_as(parg)
        from_programs = (parg >= 0) & (pmax >= floor[None, :])
        rows_b, cols_b = bq.long(), bc.long()
        undecided = (cols_b & 1).bool()
        cols_b = cols_b >> 1
        keep = undecided | (bs >= floor[rows_b])
        r = torch.cat([split_rows[from_programs], rows_b[keep]])
        c = torch.cat([parg[from_programs].long(), cols_b[keep]])
        und = torch.cat([torch.zeros(int(from_programs.sum()), dtype=torch.bool,
                                     device=hist.device), undecided[keep]])
        exact = torch.cat([canonical_dot(self.q[r[i:i + self.chunk]], g[c[i:i + self.chunk]], self.chunk)
                           for i in range(0, len(r), self.chunk)] or [r.new_empty(0, dtype=torch.float32)])
        exact = transform(exact, self.qa[r], self.ga[start + c], self.metric)
        best = torch.full((nq,), float("-inf"), device=hist.device)
        best.scatter_reduce_(0, r, exact, reduce="amax")
        ru, su = r[und], exact[und]
        b = _count_le(self.pos, self.pos_off[ru], self.pos_off[ru + 1], su) - self.pos_off[ru]
        hit = b > 0
        hist.index_add_(0, (self.pos_off[ru] + ru + b)[hit],
                        torch.ones(int(hit.sum()), dtype=torch.int64, device=hist.device))
        return best


def _count_le(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
              x: torch.Tensor) -> torch.Tensor:
    """[n] int64: ``lo`` + how many of ``values[lo:hi]`` (ascending) are ≤ ``x`` [n], per entry."""
    lo, hi = lo.clone(), hi.clone()
    last = max(len(values) - 1, 0)
    while bool((lo < hi).any()):
        act = lo < hi
        mid = (lo + hi) // 2
        go = act & (values[mid.clamp_max(last)] <= x)
        lo = torch.where(go, mid + 1, lo)
        hi = torch.where(act & ~go, mid, hi)
    return lo
