"""How much memory this process may still take: checked before a large allocation, so that a
declared size far beyond it is refused in one line instead of ending in ``MemoryError``.

The least of: the kernel's ``MemAvailable`` (Linux), the cgroup v2 limit less its usage, and
the address-space limit (``RLIMIT_AS``) less the current virtual size. Unknown parts are left
out (None when nothing is known: other systems, no ``/proc``).
"""

from __future__ import annotations

import resource
from pathlib import Path

__all__ = ["available_bytes", "check_allocation", "human"]


def _read_int(path: str, key: str | None = None) -> int | None:
    """An integer file (``key``: the ``key: N kB`` line of a /proc status-like file)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if key is None:
        text = text.strip()
        return int(text) if text.isdigit() else None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024  # kB
    return None


def available_bytes() -> int | None:
    """Bytes this process may still allocate (see the module docstring); None: unknown."""
    limits = []
    if (free := _read_int("/proc/meminfo", "MemAvailable")) is not None:
        limits.append(free)
    cap, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if cap is not None and used is not None:
        limits.append(max(cap - used, 0))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        size = _read_int("/proc/self/status", "VmSize") or 0
        limits.append(max(soft - size, 0))
    return min(limits) if limits else None


def human(n: int) -> str:
    """``n`` bytes in words: ``"8.6 GB"``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_allocation(nbytes: int, what: str) -> str | None:
    """None when ``nbytes`` fit in :func:`available_bytes`; else the problem in words (``what``:
    what would be allocated, "array 'embeddings' of shape [1000, 512] float32")."""
    free = available_bytes()
    if free is None or nbytes <= free:
        return None
    return f"{what} needs {human(nbytes)}, more than the {human(free)} of memory available"
