"""torch.distributed runs: ``torchrun --nproc-per-node N -m embeval cmc Q G -k 1 5 10``.

When torchrun starts the process (``WORLD_SIZE > 1`` in the environment):

- every rank loads and checks the inputs BEFORE joining the group, so a bad file or option
  fails on every rank alike (no rank waits for a peer that already exited); the group also
  has a timeout (``EMBEVAL_DIST_TIMEOUT`` seconds, default 1800) and torchrun stops the
  other ranks when one fails;
- the backend is NCCL when the device is CUDA (each rank uses ``cuda:LOCAL_RANK``), gloo
  otherwise; on CPU each rank limits its threads to its share of the cores
  (``EMBEVAL_THREADS``, default: usable cores // ``LOCAL_WORLD_SIZE``), so N processes on
  N cores do not oversubscribe them;
- by default rank r evaluates GALLERY shard r of N (:func:`embeval.engine.shard_range`,
  boundaries on the CPU engine's 2048-item gallery tiles): every rank reads the whole
  gallery once for the positives' exact scores, and streams only its shard for the negative
  pass, the O(Q·G) part. The statistics are reduced onto rank 0 with tensor collectives:
  histograms and negative counts by SUM, hardest negatives by MAX (exact), top-k lists
  gathered and merged in rank order;
- when the gallery is too small to give every rank two full gallery tiles
  (G < 2·N·2048) but the queries give every rank a full 512-query tile (Q ≥ 512·N), rank r
  takes QUERY shard r instead (boundaries on 512-query tiles, so every score tile is the
  one a single process computes: still bit-identical on CPU) against the whole gallery, and
  rank 0 gathers the shards' statistics (``gather_object``) and concatenates them. Not with
  ``--exclude-self``, which needs the global query index; see :func:`split_axis`;
- rank 0 alone prints and writes files; the other ranks print nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from embeval._launch import is_leader, requested  # torch-free: the CLI's error path asks them
from embeval.engine.plan import shard_range
from embeval.engine.similarity import resolve_device
from embeval.engine.stats import RankStats, merge_topk
from embeval.errors import OptionError

__all__ = ["requested", "is_leader", "Group", "process_group", "threads_per_rank", "split_axis",
           "check_gpus_per_rank"]

QUERY_TILE = 512  # the CPU engine's tile (embeval.engine.cpu.TILE_Q, TILE_G)
GALLERY_TILE = 2048


def split_axis(n_query: int, n_gallery: int, world: int, *, exclude_self: bool = False) -> str:
    """``"gallery"`` (the default) or ``"query"``: which axis the ranks share out.

    Query shards when the gallery cannot give every rank two full gallery tiles but the
    queries can give every rank a full query tile, and ``exclude_self`` is off.
    """
    if (not exclude_self and n_gallery < 2 * world * GALLERY_TILE
            and n_query >= world * QUERY_TILE):
        return "query"
    return "gallery"


def threads_per_rank() -> int:
    """CPU threads for this rank: ``EMBEVAL_THREADS``, else usable cores // local ranks."""
    if "EMBEVAL_THREADS" in os.environ:
        return max(1, int(os.environ["EMBEVAL_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


@dataclass
class Group:
    """This process's place in the group: ``rank`` of ``world``, the ``device`` it computes on."""

    rank: int
    world: int
    device: str

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def query_range(self, n_query: int) -> tuple[int, int]:
        """This rank's queries ``[a, b)`` when the ranks share out queries (tile-aligned)."""
        return shard_range(n_query, self.rank, self.world, align=QUERY_TILE)

    def concat(self, stats: RankStats) -> RankStats | None:
        """Concatenate every rank's query-shard statistics on rank 0 (None on the others)."""
        bucket: list[RankStats | None] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(stats, bucket, dst=0)
        if bucket is None:
            return None
        return RankStats.concat([s for s in bucket if s is not None])

    def reduce(self, stats: RankStats) -> RankStats | None:
        """Merge every rank's gallery-shard statistics onto rank 0 (None on the others)."""
        dev = torch.device(self.device) if dist.get_backend() == "nccl" else torch.device("cpu")
        hist, n_neg, max_neg = (t.to(dev) for t in (stats.neg_hist, stats.n_neg, stats.max_neg))
        dist.reduce(hist, dst=0, op=dist.ReduceOp.SUM)
        dist.reduce(n_neg, dst=0, op=dist.ReduceOp.SUM)
        dist.reduce(max_neg, dst=0, op=dist.ReduceOp.MAX)
        topv, topi = stats.topk_scores, stats.topk_indices
        if topv is not None and topi is not None:
            lead = self.rank == 0
            parts: list[list[torch.Tensor]] = []
            for t in (topv, topi):
                mine = t.to(dev).contiguous()
                bucket = [torch.empty_like(mine) for _ in range(self.world)] if lead else None
                dist.gather(mine, bucket, dst=0)
                parts.append(bucket or [])
            if lead:
                topv, topi = parts[0][0].cpu().clone(), parts[1][0].cpu().clone()
                for v, i in zip(parts[0][1:], parts[1][1:]):  # rank order: same as shard order
                    merge_topk(topv, topi, v.cpu(), i.cpu())
        if self.rank != 0:
            return None
        return replace(stats, neg_hist=hist.cpu(), n_neg=n_neg.cpu(), max_neg=max_neg.cpu(),
                       topk_scores=topv, topk_indices=topi)


def check_gpus_per_rank(ranks_per_node: int, gpus: int) -> None:
    """Each CUDA rank takes ``cuda:LOCAL_RANK``: refuse (on every rank alike, so rank 0 says it)
    more ranks on a node than it has GPUs, instead of failing on the ranks beyond them."""
    if ranks_per_node > gpus:
        raise OptionError(f"device: {ranks_per_node} ranks on this node, each needing a GPU of its "
                          f"own, but {gpus} GPU(s) are visible: start at most {gpus} per node, or "
                          "evaluate on the CPU", param="device")


@contextmanager
def process_group(device: str = "auto") -> Iterator[Group]:
    """Join the torchrun group (NCCL on CUDA, gloo on CPU) for the duration of the block."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = resolve_device(device)
    extra: dict[str, Any] = {}
    if dev.type == "cuda":
        check_gpus_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", world)), torch.cuda.device_count())
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        backend = "nccl"
        extra["device_id"] = dev  # bind the communicator to this rank's GPU now
    else:
        n = threads_per_rank()
        torch.set_num_threads(n)
        os.environ["EMBEVAL_THREADS"] = str(n)  # the CPU engine's tile workers
        backend = "gloo"
    timeout = timedelta(seconds=float(os.environ.get("EMBEVAL_DIST_TIMEOUT", "1800")))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout, **extra)
    try:
        yield Group(rank, world, str(dev))
    finally:
        dist.destroy_process_group()
