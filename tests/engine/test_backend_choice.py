"""What ``backend="auto"`` takes (:func:`embeval.engine.plan.auto_backend`), and the fallback from
a fused Triton kernel that cannot run on the user's GPU to the torch pass, with one warning line.

No GPU is needed: the device's properties and Triton's failure are stood in for; the passes
that run are the real ones (on CPU), and their statistics are compared with the numba engine's.
"""

from __future__ import annotations

import pytest
import torch
from helpers.cli import cli, without_time
from helpers.data import assert_same, sets

import embeval
from embeval.engine import plan, rank_stats, triton_pass, triton_trials
from embeval.engine.trial_pass import trial_stats
from embeval.errors import EmbevalWarning

CUDA = torch.device("cuda", 0)


def _gpu(monkeypatch, capability: tuple[int, int], *, triton: bool = True) -> None:
    monkeypatch.setattr(plan, "triton_available", lambda: triton)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize(("capability", "triton", "want"), [
    ((9, 0), True, "triton"), ((8, 0), True, "triton"), ((7, 5), True, "torch"),
    ((9, 0), False, "torch")])
def test_auto_on_cuda_takes_the_fused_kernel_where_it_can(monkeypatch, capability, triton,
                                                          want) -> None:
    _gpu(monkeypatch, capability, triton=triton)
    assert plan.auto_backend(CUDA, "fp32", big=True) == want
    # never for small jobs, top-k lists or reduced precisions
    assert plan.auto_backend(CUDA, "fp32", big=False) == "torch"
    assert plan.auto_backend(CUDA, "fp32", big=True, fused=False) == "torch"
    for precision in ("tf32", "bf16", "fp16"):
        assert plan.auto_backend(CUDA, precision, big=True) == "torch"


def test_auto_never_takes_the_interpreter_or_the_cpu(monkeypatch) -> None:
    _gpu(monkeypatch, (9, 0))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert plan.auto_backend(CUDA, "fp32", big=True) == "torch"
    monkeypatch.setattr(plan, "compiled_available", lambda: True)
    assert plan.auto_backend(torch.device("cpu"), "fp32", big=True) == "numba"
    assert plan.auto_backend(torch.device("cpu"), "fp32", big=False) == "torch"
    monkeypatch.setattr(plan, "compiled_available", lambda: False)
    assert plan.auto_backend(torch.device("cpu"), "fp32", big=True) == "torch"


class OutOfResources(Exception):
    """Stands in for Triton's own (``triton.runtime.errors.OutOfResources``)."""


OutOfResources.__module__ = "triton.runtime.errors"


def _fail(*args, **kwargs):
    raise OutOfResources("out of resource: shared memory, Required: 262144, Hardware limit: 232448")


@pytest.fixture
def failing_kernels(monkeypatch):
    """backend="auto" takes the fused kernels, which raise as Triton does when a kernel does not
    fit the GPU; the fallback runs the real torch pass on CPU."""
    monkeypatch.setattr(plan, "auto_backend", lambda *a, **k: "triton")
    monkeypatch.setattr(triton_pass, "negative_pass", _fail)
    monkeypatch.setattr(triton_trials, "impostor_pass", _fail)


def test_a_failing_kernel_under_auto_falls_back_with_a_warning(failing_kernels) -> None:
    q, g = sets(nq=25, ng=40, d=5, classes=3)
    with pytest.warns(EmbevalWarning, match="ranking: the fused Triton kernel cannot run .*"
                                            "OutOfResources.*using the torch pass"):
        got = rank_stats(q, g, device="cpu", backend="auto")
    assert_same(got, rank_stats(q, g, device="cpu", backend="numba"))
    with pytest.warns(EmbevalWarning, match="verification: the fused Triton kernel"):
        v = trial_stats(q, g, device="cpu", backend="auto")
    ref = trial_stats(q, g, device="cpu", backend="numba")
    assert torch.equal(v.imp_slots, ref.imp_slots) and torch.equal(v.imp_keys, ref.imp_keys)


def test_a_named_backend_fails_as_it_is(failing_kernels, monkeypatch) -> None:
    """--backend triton is the user's choice: Triton's error is not hidden; nor is any error
    that is not Triton's under auto."""
    monkeypatch.setattr(triton_pass, "kernel_module", lambda device: None)
    q, g = sets(nq=10, ng=20, d=4, classes=3)
    with pytest.raises(OutOfResources):
        rank_stats(q, g, device="cpu", backend="triton")
    monkeypatch.setattr(triton_pass, "negative_pass", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        rank_stats(q, g, device="cpu", backend="auto")


def test_the_cli_prints_the_warning_as_one_line(failing_kernels, tmp_path, capsys) -> None:
    q, g = sets(nq=25, ng=40, d=5, classes=3)
    qf = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels)
    gf = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels)
    rc, out, err = cli(capsys, "cmc", qf, gf, "--json")
    lines = err.strip().splitlines()
    assert rc == 0 and len(lines) == 1, err
    assert lines[0].startswith("embeval: warning: ranking: the fused Triton kernel cannot run")
    rc, ref, _ = cli(capsys, "cmc", qf, gf, "--json", "--backend", "numba")
    assert rc == 0 and without_time(out) == without_time(ref)
