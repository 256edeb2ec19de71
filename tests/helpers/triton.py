"""Triton's interpreter for the fused-kernel tests: the kernel module imported under
``TRITON_INTERPRET=1`` (a module-scoped fixture), and a launch with the variable set."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import pytest


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
