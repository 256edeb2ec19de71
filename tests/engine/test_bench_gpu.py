"""``benchmarks/bench_gpu.py`` can only measure on a GPU, and a GPU is lent for minutes: the
script itself is tested here, on CPU, in Triton's interpreter (``--cpu-smoke``), so that the
lent minutes are never spent on a bug in it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real benchmark")
def test_without_cuda_it_refuses_with_one_line() -> None:
    r = _run("--sizes", "100")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "bench_gpu: needs a CUDA GPU (torch.cuda.is_available() is False); nothing run"]


@pytest.mark.slow
def test_the_whole_script_runs_in_the_interpreter() -> None:
    """Every contender but faiss, both passes of both commands, the table and the JSON: the
    fused and torch statistics are bit-identical, and the metrics are those of the numba engine."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    r = _run("--cpu-smoke", "--sizes", "150", "--dim", "8", TRITON_INTERPRET="1")
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = json.loads(r.stdout)["rows"]
    assert row["identical"] is True and row["verify_identical"] is True
    assert row["verify_triton"]["trials"] == 150 * 150
    assert {"floor_fp32", "floor_tf32", "floor_fp64", "embeval_torch", "embeval_triton",
            "verify_torch", "verify_triton"} <= row.keys()
    assert "verify fused == torch bit for bit: True" in r.stderr
