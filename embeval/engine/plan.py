"""Planning a pass: memory budgets, gallery shards, what the user wrote for them."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from embeval.errors import OptionError
from embeval.options import parse_memory

__all__ = ["parse_memory", "shard_range", "parse_shard", "default_memory", "compiled_available",
           "triton_available"]


def shard_range(n_items: int, index: int, count: int, *, align: int = 2048) -> tuple[int, int]:
    """Items ``[a, b)`` of shard ``index`` (0-based) of ``count``: contiguous, near-equal sizes.

    Boundaries fall on multiples of ``align`` (the CPU engine's gallery tile, so no tile is
    split between shards) whenever every shard can get at least one such unit; shards of
    small sets split anywhere (results stay bit-identical either way, only slower).
    """
    if not 0 <= index < count:
        raise OptionError(f"shard {index}/{count}: the index must be between 0 and {count - 1}",
                          param="shard")
    if count * align > n_items:
        align = 1
    units = -(-n_items // align)
    return (min(n_items, index * units // count * align),
            min(n_items, (index + 1) * units // count * align))


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 ≤ i < n) → ``(i, n)``; raises :class:`OptionError` naming ``shard``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise OptionError(f"shard: cannot read {text!r} (write i/n, e.g. 0/4 for the first "
                          "of four shards)", param="shard") from None
    if n < 1 or not 0 <= i < n:
        raise OptionError(f"shard {text}: need 0 <= i < n (shards are numbered from 0)",
                          param="shard")
    return i, n


def default_memory(dev: torch.device) -> int:
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free * 0.6)
    return int(os.environ.get("EMBEVAL_CPU_MEMORY", 1 << 30))


@functools.cache
def compiled_available() -> bool:
    """Whether numba (the compiled CPU pass) is installed, found without importing it: the import
    costs 0.25 s (and yaml), and only CPU jobs above ``rank.SMALL_PASS`` scores need it."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def triton_available() -> bool:
    """Whether Triton (the fused GPU pass, ``pip install "embeval[gpu]"``) is installed, found
    without importing it."""
    return importlib.util.find_spec("triton") is not None
