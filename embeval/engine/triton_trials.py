"""Impostor counts in one fused Triton kernel (``trial_stats(..., backend="triton")``).

The gallery is streamed in blocks (:func:`embeval.engine.torch_pass.device_blocks`); each block
is one launch of :func:`embeval.engine.triton_kernel.trial_tiles` over (query tile × a share of
the block's gallery tiles). The kernel computes every dot product in float64 (DMMA tensor
cores), rounds it to float32 where :func:`embeval.engine.exact.dot_bound` proves the rounding is
the exact product's, applies the metric transform in float32, and counts the impostor in its
slot among the genuine scores and in its key bin with integer atomic adds (their order cannot
change a count). Scores never leave the chip; the few pairs it cannot settle (an ambiguous
rounding, about one in 10^6 at D = 512) come back in a buffer and are counted here with the
correctly rounded score (:func:`embeval.engine.exact.pair_dots`). So the counts are
bit-identical to the numba and torch passes': every pass scores a pair as the float32 transform
of its correctly rounded dot product.

A full buffer: the kernel counts every append it could not write, and the launch is rerun, from
zeroed counts, with a buffer that size (nothing dropped, nothing counted twice). fp32 only.
On CPU tensors the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``): for tests.
"""

from __future__ import annotations

import torch

from embeval.data.store import EmbeddingSet
from embeval.engine.exact import pair_dots
from embeval.engine.similarity import METRIC_CODES, check_finite_scores, transform
from embeval.engine.stats import Protocol
from embeval.engine.torch_pass import device_blocks
from embeval.engine.trials import KEY_BINS, VerifyStats, ordered_keys, slot_of, slot_table
from embeval.engine.triton_pass import LAUNCH_ROWS, Tiles, kernel_module, search_steps, sm_count
from embeval.errors import OptionError

__all__ = ["impostor_pass"]

#: (BQ, BG, BK, num_warps, num_stages): float64 accumulators, half the ranking kernel's query tile
CUDA_TILES = (64, 64, 16, 4, 3)
INTERPRETER_TILES = (32, 32, 16, 1, 1)


def impostor_pass(stats: VerifyStats, query: EmbeddingSet, gallery: EmbeddingSet,
                  qemb: torch.Tensor, qa: torch.Tensor, ga: torch.Tensor, bound: torch.Tensor,
                  protocol: Protocol, q_range: tuple[int, int], g_range: tuple[int, int],
                  rows: int, *, device: torch.device, precision: str = "fp32", budget: int,
                  progress=None, tiles: Tiles | None = None, splits: int | None = None,
                  capacity: int | None = None) -> None:
    """Count the impostors of queries ``q_range`` × gallery items ``g_range`` into ``stats``.

    ``bound`` [Q] float64: :func:`embeval.engine.exact.dot_bound` of each query. ``tiles`` /
    ``splits`` (gallery shares per query tile) / ``capacity`` (first buffer size): tuning and
    tests; they never change a count. Arguments otherwise as the other passes of
    :func:`embeval.engine.trial_pass.trial_stats`.
    """
    kernel = kernel_module(device)
    if precision != "fp32":
        raise OptionError("backend triton: fp32 only (trial_stats gives the rest to the torch "
                          "pass)", param="backend")
    q0, q1 = q_range
    a, b = g_range
    if q1 <= q0 or b <= a:
        return
    bq, bg, bk, warps, stages = tiles or (CUDA_TILES if device.type == "cuda" else INTERPRETER_TILES)
    launch = _Launch(stats, query, gallery, qemb[q0:q1], qa[q0:q1], ga, bound[q0:q1], q0,
                     protocol, device)
    if device.type == "cuda":
        rows = max(1, min(rows, budget // (16 * gallery.dim), LAUNCH_ROWS))
    slots = torch.zeros_like(stats.imp_slots, device=device)
    keys = torch.zeros_like(stats.imp_keys, device=device)
    n_qt = -(-(q1 - q0) // bq)
    options = (dict(num_warps=warps, num_stages=stages, enable_fp_fusion=False)
               if device.type == "cuda" else {})  # IEEE operations: no contraction into FMAs
    for start, stop, g in device_blocks(gallery, a, b, rows, device):
        n_gt = -(-(stop - start) // bg)
        share = splits or (max(1, 4 * sm_count(device) // n_qt) if device.type == "cuda" else 1)
        per = -(-n_gt // min(max(1, share), n_gt))
        cap = capacity or max(1 << 12, 2 * launch.needed)
        while not launch.block(kernel, g, start, per, cap, slots, keys,
                               tile=(bq, bg, bk), options=options):
            cap = launch.needed  # the launch said how many appends it had: rerun that big
        if progress is not None:
            progress(stop - a, b - a)
    stats.imp_slots += slots.cpu()
    stats.imp_keys += keys.cpu()


class _Launch:
    """The pass's tensors on the device, and one gallery block's launch and settlement."""

    def __init__(self, stats: VerifyStats, query: EmbeddingSet, gallery: EmbeddingSet,
                 qemb: torch.Tensor, qa: torch.Tensor, ga: torch.Tensor, bound: torch.Tensor,
                 q0: int, protocol: Protocol, device: torch.device) -> None:
        self.stats = stats
        self.names = (query.name, gallery.name)
        self.q0, self.exclude_self = q0, bool(protocol.exclude_self)
        self.q = qemb.to(device).float().contiguous()
        self.qa, self.ga = qa.to(device).contiguous(), ga.to(device)
        self.bound = bound.to(device, torch.float64).contiguous()
        self.qlab = query.labels[q0:q0 + len(qemb)].to(device, torch.int64).contiguous()
        self.glab = gallery.labels.to(device, torch.int64)
        u = stats.gen_values
        table, base, scale = slot_table(u.numpy())
        self.table = torch.from_numpy(table).to(device)
        self.span = torch.tensor([base, scale], dtype=torch.float64, device=device)
        self.bin_steps = search_steps(int((table[1:] - table[:-1]).max()))
        self.u = (u if len(u) else torch.zeros(1)).to(device).contiguous()
        self.device = device
        self.needed = 0  # appends the last launch requested

    def block(self, kernel, g: torch.Tensor, start: int, per: int, cap: int, slots: torch.Tensor,
              keys: torch.Tensor, *, tile: tuple[int, int, int], options: dict) -> bool:
        """Count gallery rows ``g`` (items ``start...``) into ``slots``/``keys``; ``False`` (nothing
        counted) when the buffer was too small: ``self.needed`` says how big it must be."""
        bq, bg, bk = tile
        dev, nq, n_g = self.device, len(self.q), len(g)
        n_gt = -(-n_g // bg)
        n_split = -(-n_gt // per)
        s = torch.zeros_like(slots)
        k = torch.zeros_like(keys)
        buf_q = torch.empty(cap, dtype=torch.int32, device=dev)
        buf_c = torch.empty(cap, dtype=torch.int32, device=dev)
        cnt = torch.zeros(1, dtype=torch.int64, device=dev)
        bad = torch.zeros(1, dtype=torch.int64, device=dev)
        g = g.float().contiguous()
        kernel.trial_tiles[(-(-nq // bq), n_split)](
            self.q, g, self.qa, self.ga[start:start + n_g].contiguous(), self.qlab,
            self.glab[start:start + n_g].contiguous(), self.bound, self.u, self.table, self.span,
            s, k, buf_q, buf_c, cnt, bad, nq, n_g, self.q0, start, g.shape[1],
            len(self.table) - 1, per, self.bin_steps, cap,
            MODE=METRIC_CODES[self.stats.metric], EXCLUDE_SELF=self.exclude_self,
            BQ=bq, BG=bg, BK=bk, **options)
        if int(bad.item()):
            check_finite_scores(torch.tensor([float("nan")]), *self.names)
        n = self.needed = int(cnt.item())
        if n > cap:
            return False
        slots += s
        keys += k
        if n:
            self._settle(g, start, buf_q[:n].long(), buf_c[:n].long(), slots, keys)
        return True

    def _settle(self, g: torch.Tensor, start: int, r: torch.Tensor, c: torch.Tensor,
                slots: torch.Tensor, keys: torch.Tensor) -> None:
        """Count the buffered pairs (rows ``r`` of the query slice, columns ``c`` of ``g``) with
        their correctly rounded scores."""
        d = pair_dots(self.q[r].cpu(), g[c].cpu(), self.bound[r].cpu())
        x = transform(d, self.qa[r].cpu(), self.ga[start + c].cpu(), self.stats.metric) + 0.0
        check_finite_scores(x, *self.names)
        slots += torch.bincount(slot_of(x, self.stats.gen_values), minlength=len(slots)).to(slots.device)
        keys += torch.bincount(ordered_keys(x) >> 16, minlength=KEY_BINS).to(keys.device)
