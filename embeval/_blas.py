"""Pick OpenBLAS's AVX-512 kernels where the CPU has them and OpenBLAS would not.

OpenBLAS (inside numpy, which runs embeval's CPU matmuls) chooses its kernels from the
CPU model. Where the model is hidden or newer than the library (AMD Zen 4/5, many cloud
VMs), it falls back to its AVX2 "Haswell" kernels: measured 119 GFLOPS a core for float32
score tiles on a Zen 5 VM, against 204 GFLOPS with its AVX-512 "SkylakeX" kernels, which
every CPU with AVX-512 F/CD/BW/DQ/VL runs. The choice is read once, from the environment
variable ``OPENBLAS_CORETYPE``, when OpenBLAS loads; this module sets it before numpy is
imported. It never overrides a value the user set, and ``EMBEVAL_OPENBLAS_CORETYPE=keep``
turns it off.
"""

from __future__ import annotations

import os
import sys

AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def prefer_avx512_kernels(flags: frozenset[str] | None = None) -> str | None:
    """Set ``OPENBLAS_CORETYPE=SkylakeX`` when it can help; return what was set (or None).

    ``flags``: the CPU's feature flags, read from ``/proc/cpuinfo`` when None.
    """
    if ("OPENBLAS_CORETYPE" in os.environ or "numpy" in sys.modules
            or os.environ.get("EMBEVAL_OPENBLAS_CORETYPE", "").lower() == "keep"):
        return None
    if not AVX512 <= (cpu_flags() if flags is None else flags):
        return None
    os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    return "SkylakeX"
