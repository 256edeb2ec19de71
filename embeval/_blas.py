"""Pick OpenBLAS's AVX-512 kernels where the CPU has them, and never a kernel the CPU lacks.

OpenBLAS (inside numpy, which runs embeval's CPU matmuls) chooses its kernels from the
CPU model. Where the model is hidden or newer than the library (AMD Zen 4/5, many cloud
VMs), it falls back to its AVX2 "Haswell" kernels: measured 119 GFLOPS a core for float32
score tiles on a Zen 5 VM, against 204 GFLOPS with its AVX-512 "SkylakeX" kernels, which
every CPU with AVX-512 F/CD/BW/DQ/VL runs. The choice is read once, from the environment
variable ``OPENBLAS_CORETYPE``, when OpenBLAS loads; this module sets it before numpy is
imported. It never overrides a value the user set, and ``EMBEVAL_OPENBLAS_CORETYPE=keep``
turns it off.

The one exception: a value naming kernels that this CPU cannot run (``SkylakeX`` inherited
by a machine without AVX-512, say) would kill the process with SIGILL at the first matmul,
so it is removed and OpenBLAS detects the CPU itself. The CPU's flags decide, not the
environment.
"""

from __future__ import annotations

import os
import sys

AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
AVX2 = frozenset({"avx", "avx2", "fma"})
#: OpenBLAS core types (lower case) and the CPU flags their kernels execute
KERNEL_FLAGS: dict[str, frozenset[str]] = {
    "sandybridge": frozenset({"avx"}),
    "haswell": AVX2, "zen": AVX2, "skylake": AVX2,
    "skylakex": AVX2 | AVX512,
    "cooperlake": AVX2 | AVX512 | {"avx512_bf16"},
    "sapphirerapids": AVX2 | AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile"},
}


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


def runnable(coretype: str, flags: frozenset[str]) -> bool:
    """False when ``coretype``'s kernels need a flag missing from ``flags`` (known CPUs only)."""
    needed = KERNEL_FLAGS.get(coretype.strip().lower())
    return not flags or needed is None or needed <= flags


def prefer_avx512_kernels(flags: frozenset[str] | None = None) -> str | None:
    """Set ``OPENBLAS_CORETYPE=SkylakeX`` when it can help; return what was set (or None).

    A value this CPU cannot run is removed first (see the module docstring).
    ``flags``: the CPU's feature flags, read from ``/proc/cpuinfo`` when None.
    """
    if "numpy" in sys.modules:
        return None  # OpenBLAS has read the variable already
    flags = cpu_flags() if flags is None else flags
    current = os.environ.get("OPENBLAS_CORETYPE")
    if current is not None and not runnable(current, flags):
        del os.environ["OPENBLAS_CORETYPE"]
        current = None
    if current is not None or os.environ.get("EMBEVAL_OPENBLAS_CORETYPE", "").lower() == "keep":
        return None
    if not AVX512 <= flags:
        return None
    os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    return "SkylakeX"
