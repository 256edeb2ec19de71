"""The pairs sidecar: embeval's listed-trials CSV (``query,gallery,same``), as
:func:`embeval.verification.pairs.read_pairs` reads it."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["pairs_csv"]


def pairs_csv(rows: Iterable[tuple[int, int, bool]]) -> str:
    """``query,gallery,same`` lines for (row or template id, row or template id, genuine)."""
    return "query,gallery,same\n" + "".join(f"{a},{b},{int(s)}\n" for a, b, s in rows)
