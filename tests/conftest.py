"""Shared fixtures, and hypothesis profiles: random exploration locally, a fixed seed in CI.

CI exports ``HYPOTHESIS_PROFILE=ci`` so that a red run is reproducible from its log and
main stays green for reasons in the code, not in the draw; local runs keep exploring
new examples (and remember failures in ``.hypothesis/``).
"""
import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread avoids OpenMP stalls on a busy 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
