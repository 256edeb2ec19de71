"""Position metrics under every ordering of the tied items: the oracle of the tie rule.

Imports nothing from embeval. A query's row is its kept items' scores (float64) and whether
each is a positive. A *ranking* is a total order of the row that sorts the scores in
descending order; items with equal scores may come in any order. Every position metric is
computed, naively, from the ranked relevance list (best first), for every such ranking, and
its WORST value over them is what embeval must report (DESIGN.md section 3: "each position
metric equals its value under the worst ordering of the tied items").

Two rankings that differ only by swapping two items of equal relevance give the same relevance
list, so enumerating the distinct relevance lists (inside each run of equal scores: every choice
of the places its positives take) enumerates the value of every ordering; :func:`n_orderings`
says how many orderings of the items that stands for.

Definitions (binary relevance, positions 1-based, P positives, the j-th positive at p_j):
first rank p_1, last rank p_P, RR 1/p_1, INP P/p_P, P@k #{p_j ≤ k}/k, R-precision
#{p_j ≤ P}/P, MAP@R (1/P) Σ_{p_j ≤ P} j/p_j, nDCG@k Σ_{p_j ≤ k} 1/log2(p_j+1) over
Σ_{i ≤ min(P,k)} 1/log2(i+1); revisitop's ``compute_ap`` (trapezoids over the 0-based ranks)
and its mP@k (k' = min(k, p_P), #{p_j ≤ k'}/k'), as in python/evaluate.py of
filipradenovic/revisitop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np

__all__ = ["metrics_of_ranking", "rankings", "n_orderings", "worst", "best"]


def metrics_of_ranking(relevant: Sequence[bool], ks: Sequence[int]) -> dict[str, float]:
    """Every position metric of one ranked relevance list (best first); {} when no positive."""
    places = [i + 1 for i, r in enumerate(relevant) if r]
    P = len(places)
    if P == 0:
        return {}
    out: dict[str, float] = {"first_rank": places[0], "last_rank": places[-1],
                             "rr": float(Fraction(1, places[0])),
                             "inp": float(Fraction(P, places[-1])),
                             "r_precision": float(Fraction(sum(p <= P for p in places), P)),
                             "map_at_r": float(sum((Fraction(j, p) for j, p in
                                                    enumerate(places, 1) if p <= P),
                                                   Fraction(0)) / P)}
    ap = 0.0  # revisitop's compute_ap, 0-based ranks
    for j, p in enumerate(places):
        r = p - 1
        p0 = 1.0 if r == 0 else j / r
        ap += (p0 + (j + 1) / (r + 1)) * (1.0 / P) / 2.0
    out["trapezoid_ap"] = ap
    for k in ks:
        out[f"p@{k}"] = float(Fraction(sum(p <= k for p in places), k))
        dcg = math.fsum(1 / math.log2(p + 1) for p in places if p <= k)
        out[f"ndcg@{k}"] = dcg / math.fsum(1 / math.log2(i + 1) for i in range(1, min(P, k) + 1))
        kq = min(k, places[-1])
        out[f"mp@{k}"] = float(Fraction(sum(p <= kq for p in places), kq))
    return out


def _runs(scores: np.ndarray, relevant: np.ndarray) -> list[tuple[int, int]]:
    """(size, #positives) of each run of equal scores, best run first."""
    order = np.argsort(-scores, kind="stable")
    s, r = scores[order], relevant[order]
    out = []
    start = 0
    for i in range(1, len(s) + 1):
        if i == len(s) or s[i] != s[start]:
            out.append((i - start, int(r[start:i].sum())))
            start = i
    return out


def rankings(scores: Sequence[float], relevant: Sequence[bool]) -> Iterator[list[bool]]:
    """Every distinct ranked relevance list of the row (see the module docstring)."""
    runs = _runs(np.asarray(scores, np.float64), np.asarray(relevant, bool))
    choices = [list(itertools.combinations(range(size), npos)) for size, npos in runs]
    for pick in itertools.product(*choices):
        ranked: list[bool] = []
        for (size, _), places in zip(runs, pick):
            ranked.extend(i in places for i in range(size))
        yield ranked


def n_orderings(scores: Sequence[float]) -> int:
    """How many total orders of the items sort ``scores`` descending (∏ run size!)."""
    runs = _runs(np.asarray(scores, np.float64), np.zeros(len(scores), bool))
    return math.prod(math.factorial(size) for size, _ in runs)


def _extreme(scores, relevant, ks, pick_worst: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    for ranked in rankings(scores, relevant):
        for key, value in metrics_of_ranking(ranked, ks).items():
            rank_like = key in ("first_rank", "last_rank")
            worse = max if rank_like == pick_worst else min
            out[key] = value if key not in out else worse(out[key], value)
    return out


def worst(scores: Sequence[float], relevant: Sequence[bool], ks: Sequence[int]) -> dict[str, float]:
    """Each position metric's worst value over every ordering of the tied items ({} if P = 0):
    the largest first / last rank, the smallest of every other metric, each on its own."""
    return _extreme(scores, relevant, ks, True)


def best(scores: Sequence[float], relevant: Sequence[bool], ks: Sequence[int]) -> dict[str, float]:
    """Each position metric's best value over every ordering of the tied items."""
    return _extreme(scores, relevant, ks, False)
