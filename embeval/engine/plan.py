"""Planning a pass: memory budgets, gallery shards, what the user wrote for them."""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable

import torch

from embeval.errors import EmbevalWarning, OptionError
from embeval.options import parse_memory

__all__ = ["parse_memory", "shard_range", "parse_shard", "default_memory", "compiled_available",
           "triton_available", "auto_backend", "fused_ready", "fused_or_fallback"]

#: the least CUDA compute capability the fused kernels are built for: tf32 and float64 tensor
#: cores (sm_80, Ampere)
FUSED_CAPABILITY = (8, 0)


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


def fused_ready(device: torch.device) -> bool:
    """Whether ``backend="auto"`` may take the fused Triton kernels on ``device``: a CUDA GPU of
    compute capability 8.0 or above, Triton installed, and not in its interpreter."""
    return (device.type == "cuda" and triton_available()
            and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
            and torch.cuda.get_device_capability(device) >= FUSED_CAPABILITY)


def auto_backend(device: torch.device, precision: str, *, big: bool, fused: bool = True) -> str:
    """The pass ``backend="auto"`` takes. ``big``: the job has more scores than the engine's
    ``SMALL_PASS`` (a small job never waits for a kernel to compile); ``fused``: the fused kernel
    can do this job (no top-k). fp32 jobs: numba on CPU, the fused Triton kernel on CUDA
    (:func:`fused_ready`); everything else: the torch pass."""
    if precision == "fp32" and big:
        if device.type == "cpu" and compiled_available():
            return "numba"
        if fused and fused_ready(device):
            return "triton"
    return "torch"


def fused_or_fallback(fused: Callable[[], None], fallback: Callable[[], None], *, auto: bool,
                      what: str) -> None:
    """Run the fused pass ``fused()``. When ``auto`` chose it and Triton itself raises (a kernel
    that does not compile or fit on this GPU), warn (:class:`EmbevalWarning`) and run
    ``fallback()`` (the torch pass) instead: the fused passes add to the statistics only once
    they are complete, so nothing is counted twice. A backend the user named fails as it is."""
    try:
        fused()
    except Exception as e:
        if not auto or type(e).__module__.split(".")[0] != "triton":
            raise
        why = (str(e).strip().splitlines() or [""])[0][:200]
        warnings.warn(EmbevalWarning(f"{what}: the fused Triton kernel cannot run on this GPU "
                                     f"({type(e).__name__}: {why}); using the torch pass"),
                      stacklevel=2)
        fallback()
