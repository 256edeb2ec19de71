"""Hypothesis budgets: few examples in the default run, each test's own budget in the slow run.

The README's test command (``python -m pytest -q``) must finish in a few minutes on 2 cores, so a
property test runs at most :data:`FAST` examples there; CI's second run (``HYPOTHESIS_PROFILE=ci-full``
or ``full``, see ``.ci/run``) gives every property test the budget it names.
"""
import os

FAST = 8  # examples per property test in the default run
FULL = os.environ.get("HYPOTHESIS_PROFILE", "default").endswith("full")


def examples(n: int) -> int:
    """A property test's example budget: ``n`` in a full-budget run, at most :data:`FAST` otherwise."""
    return n if FULL else min(n, FAST)
