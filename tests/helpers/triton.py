"""Triton's interpreter for the fused-kernel tests: the kernel module imported under
``TRITON_INTERPRET=1`` (a module-scoped fixture), and a launch with the variable set."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck

#: hypothesis settings of the interpreter tests (a case costs about a second): few, and many (slow)
FEW = dict(deadline=None, max_examples=4, suppress_health_check=list(HealthCheck))
MANY = dict(FEW, max_examples=50)
#: (BQ, BG, BK, num_warps, num_stages) drawn by the interpreter tests: odd shapes, small tiles
TILES = [(16, 16, 16, 1, 1), (32, 16, 16, 1, 1), (16, 32, 16, 1, 1)]


@pytest.fixture(scope="module")
def kernel():
    """The kernel module imported under TRITON_INTERPRET=1 (the variable is set only while
    Triton is imported, and around each launch: :func:`interpreted`)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed: pip install \"embeval[test]\" (or [gpu])")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        from embeval.engine import triton_kernel
    if not triton_kernel.interpreting():
        pytest.skip("triton was imported without TRITON_INTERPRET=1 earlier in this process")
    return triton_kernel


@contextlib.contextmanager
def interpreted(module, name: str, **knobs) -> Iterator[None]:
    """``module.name`` (a fused pass) called with the tuning ``knobs`` added, and
    TRITON_INTERPRET=1 (read again at each launch); both undone on exit."""
    run = getattr(module, name)

    def tuned(*args, **kwargs):
        return run(*args, **kwargs, **knobs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, name, tuned)
        mp.setenv("TRITON_INTERPRET", "1")
        yield


def installed_runner(tmp_path: Path, command: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(backend, **env)``: the installed ``embeval COMMAND`` (``cmc``, ``verify``) on small
    files with ``--json``, TRITON_INTERPRET unset unless given in ``env``."""
    import embeval
    from helpers.data import sets

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    q, g = sets(nq=30, ng=50, d=5, classes=4, seed=1)
    qf = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels)
    gf = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels)
    base = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    exe = Path(sys.executable).with_name("embeval")

    def run(backend: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), command, str(qf), str(gf), "--device", "cpu", "--json",
                               "--backend", backend], capture_output=True, text=True,
                              env={**base, **env}, timeout=300)
    return run


_COMPILE = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from embeval.engine import triton_kernel
name, types, const, arch, warps, stages = json.loads(sys.argv[1])
fn = getattr(triton_kernel, name)
names = fn.arg_names
sig = {n: "constexpr" if n in const else types.get(n, "*fp32" if n.endswith("_ptr") else "i32")
       for n in names}
src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in const.items()})
k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                   options={"num_warps": warps, "num_stages": stages, "enable_fp_fusion": False})
print(k.asm["ptx"])
"""


def cuda_ptx(kernel: str, types: dict[str, str], const: dict, *, arch: int, warps: int,
             stages: int) -> str:
    """The PTX of ``embeval.engine.triton_kernel.KERNEL`` compiled for sm_ARCH in a child (no GPU
    needed: Triton ships ptxas, and the cubin is built too). ``types``: the arguments that are
    not ``*fp32`` pointers or ``i32``; ``const``: the constexpr arguments. Skips when this
    Triton cannot compile for CUDA here."""
    import json

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _COMPILE,
                        json.dumps([kernel, types, const, arch, warps, stages])],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode and "backend" in r.stderr.lower() and "cuda" not in r.stderr.lower():
        pytest.skip(f"this Triton cannot compile for CUDA here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout
