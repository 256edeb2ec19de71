"""Shared fixtures, and hypothesis profiles: random exploration locally, a fixed seed in CI.

CI exports ``HYPOTHESIS_PROFILE=ci`` (then ``ci-full`` for the slow run) so that a red run is
reproducible from its log and main stays green for reasons in the code, not in the draw; local
runs keep exploring new examples (and remember failures in ``.hypothesis/``). The default run
(the README's ``python -m pytest -q``) gives each property test a few examples; ``-m slow`` selects
the slow tests, and a ``full`` profile gives property tests their own budgets (``.ci/run``).

Every test runs inside :func:`restore_globals`: whatever a test (or the code it calls) does
to the process environment, the working directory, torch's thread count or the random
generators is undone afterwards, so no test can leak a setting into later tests or into the
subprocesses they start (an ``OPENBLAS_CORETYPE`` left behind once made every later
subprocess die with SIGILL on CPUs without AVX-512).
"""
import os
import random

import numpy as np
import pytest
import torch
from helpers.budget import FAST
from hypothesis import settings

# "default"/"ci": the README's quick run, at most FAST examples per property test;
# "full"/"ci-full": each test's own budget (helpers.budget.examples), CI's slow run
settings.register_profile("default", max_examples=FAST)
settings.register_profile("ci", derandomize=True, print_blob=True, max_examples=FAST)
settings.register_profile("full")
settings.register_profile("ci-full", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def restore_globals():
    """Snapshot the process-wide state a test can change; restore it exactly afterwards."""
    env = dict(os.environ)
    cwd = os.getcwd()
    threads = torch.get_num_threads()
    rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    yield
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    os.chdir(cwd)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    random.setstate(rng[0])
    np.random.set_state(rng[1])
    torch.random.set_rng_state(rng[2])


@pytest.fixture(autouse=True)
def compiled_cpu_pass(monkeypatch):
    """In this process, backend="auto" takes the compiled CPU pass whatever the size (as before
    embeval.engine.rank.SMALL_PASS), so the oracle tests keep covering it; the torch pass is covered
    by the tests that name backend="torch", small jobs' choice by test_small_jobs_never_compile."""
    from embeval.engine import rank as ranking
    monkeypatch.setattr(ranking, "SMALL_PASS", 0)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread avoids OpenMP stalls on a busy 2-core machine."""
    torch.set_num_threads(1)  # restore_globals puts the old count back
