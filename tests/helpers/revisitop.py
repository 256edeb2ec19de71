"""revisitop's ``compute_map`` as a test oracle (imports nothing from embeval).

The formula of ``compute_map`` / ``compute_ap`` in python/evaluate.py of
filipradenovic/revisitop, re-implemented (not copied): ``ranks`` [G, Q] 0-based ranked
database indices per query; the positions of the ``ok`` items in that list, each lowered by
the number of ``junk`` items ranked before it; AP = Σ_j (p0 + p1)/2 · 1/|ok| with p0 = j/r
(1 at r = 0), p1 = (j+1)/(r+1); mP@k: k' = min(k, largest 1-based position), #positions ≤ k'
/ k'; queries with no ``ok`` item are left out of the means.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compute_map", "SETTINGS", "gnd_of"]

#: revisitop's settings: positive kinds, ignored (junk) kinds
SETTINGS = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
            "hard": (("hard",), ("junk", "easy"))}


def compute_map(ranks: np.ndarray, gnd: list[dict[str, list[int]]],
                kappas: list[int]) -> tuple[float, np.ndarray]:
    """(mAP, mP@kappas) over the queries with an ``ok`` item."""
    aps, prs = [], []
    for i, g in enumerate(gnd):
        ok, junk = np.array(g["ok"], dtype=np.int64), np.array(g["junk"], dtype=np.int64)
        if len(ok) == 0:
            continue
        pos = np.flatnonzero(np.isin(ranks[:, i], ok))
        junk_at = np.flatnonzero(np.isin(ranks[:, i], junk))
        pos = np.array([p - int((junk_at < p).sum()) for p in pos])
        ap = 0.0
        for j, r in enumerate(pos):
            p0 = 1.0 if r == 0 else j / r
            ap += (p0 + (j + 1) / (r + 1)) * (1.0 / len(ok)) / 2.0
        aps.append(ap)
        one = pos + 1
        prs.append([(one <= min(int(one.max()), k)).sum() / min(int(one.max()), k) for k in kappas])
    return float(np.mean(aps)), np.mean(np.array(prs), axis=0)


def gnd_of(kind: np.ndarray, setting: str) -> list[dict[str, list[int]]]:
    """revisitop's per-setting gnd from ``kind`` [Q, G] (-1 none, 0 easy, 1 hard, 2 junk)."""
    code = {"easy": 0, "hard": 1, "junk": 2}
    pos, ign = SETTINGS[setting]
    return [{"ok": np.flatnonzero(np.isin(row, [code[k] for k in pos])).tolist(),
             "junk": np.flatnonzero(np.isin(row, [code[k] for k in ign])).tolist()} for row in kind]
