"""Planning a pass: memory budgets, gallery shards, what the user wrote for them."""

from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch

from embeval.errors import OptionError

__all__ = ["parse_memory", "shard_range", "parse_shard", "default_memory", "compiled_available"]


def parse_memory(text: str | int | None) -> int | None:
    """``"2GB"``, ``"512MB"``, ``"1.5GiB"`` or a byte count → bytes (None passes through)."""
    if text is None or isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "KIB": 2**10, "M": 1e6, "MB": 1e6, "MIB": 2**20,
             "G": 1e9, "GB": 1e9, "GIB": 2**30, "T": 1e12, "TB": 1e12, "TIB": 2**40}
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    try:
        value = float(num) * units[s[len(num):]]
    except (ValueError, KeyError):
        raise OptionError(f"--memory: cannot read {text!r} (examples: 512MB, 2GB)") from None
    if not math.isfinite(value):  # nan, inf, 1e400
        raise OptionError(f"--memory: {text!r} is not a finite size (examples: 512MB, 2GB)")
    if value < 1e6:
        raise OptionError(f"--memory: {text!r} is too small (at least 1MB)")
    return int(value)


def shard_range(n_items: int, index: int, count: int, *, align: int = 2048) -> tuple[int, int]:
    """Items ``[a, b)`` of shard ``index`` (0-based) of ``count``: contiguous, near-equal sizes.

    Boundaries fall on multiples of ``align`` (the CPU engine's gallery tile, so no tile is
    split between shards) whenever every shard can get at least one such unit; shards of
    small sets split anywhere (results stay bit-identical either way, only slower).
    """
    if not 0 <= index < count:
        raise OptionError(f"shard {index}/{count}: the index must be between 0 and {count - 1}")
    if count * align > n_items:
        align = 1
    units = -(-n_items // align)
    return (min(n_items, index * units // count * align),
            min(n_items, (index + 1) * units // count * align))


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 ≤ i < n) → ``(i, n)``; raises :class:`OptionError` naming ``--shard``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise OptionError(f"--shard: cannot read {text!r} (write i/n, e.g. 0/4 for the first "
                          "of four shards)") from None
    if n < 1 or not 0 <= i < n:
        raise OptionError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
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
