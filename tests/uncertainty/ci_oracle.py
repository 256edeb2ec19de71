"""Plain numpy / python re-implementations for the uncertainty tests: they import nothing of
embeval.

* the resampling stream (DESIGN.md section 7, embeval.uncertainty.bootstrap's module doc):
  resample r draws ``rng.integers(0, U, size=U)`` from ``np.random.default_rng([seed, 0])``,
  resamples in order; the units are the queries, or (``by="label"``) the known labels in
  ascending order followed by each query with an unknown label (< 0), in query order;
* a replicate is the plain mean of the resampled queries' values over those included;
* TPIR@FPIR from the definition in embeval.verification.identify's module doc.
"""

from __future__ import annotations

import math

import numpy as np


def units_of(labels: np.ndarray, by: str) -> list[np.ndarray]:
    """The query indices of each resampling unit, in unit order."""
    labels = np.asarray(labels)
    if by == "query":
        return [np.array([i]) for i in range(len(labels))]
    known = sorted({int(x) for x in labels if x >= 0})
    return ([np.flatnonzero(labels == c) for c in known]
            + [np.array([i]) for i in range(len(labels)) if labels[i] < 0])


def resampled_queries(labels: np.ndarray, by: str, n_resamples: int, seed: int):
    """Yield, per resample, the query indices drawn (with multiplicity)."""
    units = units_of(labels, by)
    rng = np.random.default_rng([seed, 0])
    for _ in range(n_resamples):
        idx = rng.integers(0, len(units), size=len(units))
        yield np.concatenate([units[u] for u in idx]) if len(idx) else np.array([], int)


def plain_replicates(columns: dict[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray,
                     by: str, n_resamples: int, seed: int) -> dict[str, list[float]]:
    """name → replicates: np.mean of values[sel][include[sel]] (nan when none included)."""
    out: dict[str, list[float]] = {k: [] for k in columns}
    for sel in resampled_queries(labels, by, n_resamples, seed):
        for k, (values, include) in columns.items():
            v = values[sel][include[sel]]
            out[k].append(float(np.mean(v)) if len(v) else math.nan)
    return out


def percentile(reps: list[float], level: float) -> tuple[float, float] | None:
    r = np.array([x for x in reps if not math.isnan(x)])
    if not len(r):
        return None
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def tpir(mated: np.ndarray, decision: np.ndarray, first_rank: np.ndarray, f: float, k: int,
         rule: str) -> float:
    """TPIR@FPIR=f at rank k of a list of query records (identify's module doc), or nan when
    omitted (embeval: fewer than 1/f non-mated; no non-mated or no mated query)."""
    non = sorted((float(d) for d, m in zip(decision, mated) if not m), reverse=True)
    n = len(non)
    mated_idx = [i for i in range(len(mated)) if mated[i]]
    if n == 0 or not mated_idx:
        return math.nan
    if rule == "insightface":
        s = non[max(int(n * f), 1) - 1]
    else:
        m = 0
        for j in range(n + 1):  # the largest j with j / n <= f
            if j / n <= f:
                m = j
        if m == 0:
            return math.nan
        s = non[m]  # the (m+1)-th highest
    hits = sum(1 for i in mated_idx if first_rank[i] <= k and decision[i] > s)
    return hits / len(mated_idx)
