"""embeval._blas: when it asks OpenBLAS for its AVX-512 kernels, and when it must not."""
import os
import subprocess
import sys

import pytest

from embeval import _blas

ALL = _blas.AVX512 | {"sse2", "avx", "avx2", "fma"}


@pytest.fixture
def clean_env(monkeypatch):
    """No user choice in the environment and numpy not yet imported."""
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("EMBEVAL_OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delitem(sys.modules, "numpy", raising=False)
    return monkeypatch


def test_sets_skylakex_on_an_avx512_cpu(clean_env):
    assert _blas.prefer_avx512_kernels(ALL) == "SkylakeX"
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"


def test_needs_every_avx512_subset(clean_env):
    assert _blas.prefer_avx512_kernels(ALL - {"avx512vl"}) is None
    assert "OPENBLAS_CORETYPE" not in os.environ


def test_never_overrides_the_user(clean_env):
    clean_env.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert _blas.prefer_avx512_kernels(ALL) is None
    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"


def test_keep_turns_it_off(clean_env):
    clean_env.setenv("EMBEVAL_OPENBLAS_CORETYPE", "KEEP")
    assert _blas.prefer_avx512_kernels(ALL) is None
    assert "OPENBLAS_CORETYPE" not in os.environ


NO_AVX512 = frozenset({"sse2", "avx", "avx2", "fma"})


def test_removes_kernels_the_cpu_cannot_run(clean_env):
    """An inherited SkylakeX on a CPU without AVX-512 would die with SIGILL: dropped."""
    clean_env.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    assert _blas.prefer_avx512_kernels(NO_AVX512) is None
    assert "OPENBLAS_CORETYPE" not in os.environ


def test_keeps_a_runnable_user_choice_and_unknown_cpus(clean_env):
    clean_env.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert _blas.prefer_avx512_kernels(NO_AVX512) is None
    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"
    clean_env.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    assert _blas.prefer_avx512_kernels(frozenset()) is None  # flags unknown: leave it
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"


@pytest.mark.parametrize("name, flags, ok", [
    ("SkylakeX", ALL, True), ("skylakex", NO_AVX512, False), ("Cooperlake", ALL, False),
    ("Haswell", frozenset({"sse2"}), False), ("Zen", NO_AVX512, True), ("Prescott", NO_AVX512, True),
])
def test_runnable(name, flags, ok):
    assert _blas.runnable(name, flags) is ok


def test_too_late_once_numpy_is_loaded(clean_env):
    clean_env.setitem(sys.modules, "numpy", object())
    assert _blas.prefer_avx512_kernels(ALL) is None
    assert "OPENBLAS_CORETYPE" not in os.environ


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx512f\n\n")
    assert _blas.cpu_flags(str(info)) == {"fpu", "sse2", "avx512f"}
    assert _blas.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_import_embeval_applies_it_before_numpy():
    """A fresh interpreter: importing embeval sets the variable exactly when the CPU allows."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "EMBEVAL_OPENBLAS_CORETYPE")}
    out = subprocess.run(
        [sys.executable, "-c",
         "import os, embeval; print(os.environ.get('OPENBLAS_CORETYPE', '-'))"],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("SkylakeX" if _blas.AVX512 <= _blas.cpu_flags() else "-")


def test_inherited_avx512_choice_is_checked_against_this_cpu():
    """A parent's SkylakeX reaches a child on another CPU: the child keeps it only if it can run it,
    and its matmul works either way."""
    env = {**os.environ, "OPENBLAS_CORETYPE": "SkylakeX"}
    env.pop("EMBEVAL_OPENBLAS_CORETYPE", None)
    out = subprocess.run(
        [sys.executable, "-c",
         "import os, embeval, numpy as np; a = np.ones((256, 256), np.float32); "
         "assert (a @ a)[0, 0] == 256; print(os.environ.get('OPENBLAS_CORETYPE', '-'))"],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("SkylakeX" if _blas.AVX512 <= _blas.cpu_flags() else "-")
