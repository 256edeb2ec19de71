"""Percentile bootstrap over queries or identities, from per-query values (DESIGN.md section 7).

A resample draws U units (queries, or labels: all queries of an identity together; a query
with an unknown label is a unit of its own) with replacement; unit u drawn c_u times weighs
each of its queries by c_u. A mean metric's replicate is ``Σ c·values / Σ c·include``
(:class:`MeanStatistics`); the interval at level L is the (1 - L)/2 and (1 + L)/2 quantiles of
the replicates (linear interpolation between order statistics, numpy's default), replicates
with no included query dropped.

Deterministic: resample r is drawn by a generator seeded with ``(seed, stream)`` in a fixed
order, so the intervals are a function of the per-query values and the seed alone (the engine
makes those values identical for any block size, shard split and device). Sums are exact: each
metric's values are rounded to a multiple of 2^-e chosen so that every weighted sum is an
integer below 2^53 (e >= 32 for fractions over up to a million units; the rounding moves a
replicate by less than 2^-e), so a BLAS matrix product adds them with no rounding at all, in
any order, on any machine and thread count.

>>> import numpy as np
>>> s = MeanStatistics(np.array([[1.0], [0.0], [1.0], [1.0]]), np.ones((4, 1), bool))
>>> s(np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 1.0, 1.0]])).ravel().tolist()
[0.75, 0.5]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

__all__ = ["resampling_units", "resample_counts", "MeanStatistics", "percentile_interval",
           "replicates", "record_weights", "BOOTSTRAP_STREAM", "PERMUTATION_STREAM"]

BOOTSTRAP_STREAM, PERMUTATION_STREAM = 0, 1  # the generator streams of one seed
CHUNK_CELLS = 1 << 18  # resamples × units per product (2 MiB of float64: cache-sized, few page faults)


def resampling_units(labels: torch.Tensor, by: str) -> tuple[np.ndarray, int]:
    """``(unit [Q] int64, U)``: each query's resampling unit, 0..U-1.

    ``by="query"``: every query is a unit; ``by="label"``: the queries of one known label
    (>= 0) form a unit, a query with an unknown label (< 0) is its own. Units are numbered
    queries in order, or known labels ascending then unknown-label queries in order (the draws
    of :func:`resample_counts` refer to these numbers).
    """
    lab = labels.cpu().numpy().astype(np.int64)
    if by == "query":
        return np.arange(len(lab), dtype=np.int64), len(lab)
    if by != "label":
        raise ValueError(f"by: unknown resampling unit {by!r} (query, label)")
    known = lab >= 0
    unit = np.empty(len(lab), dtype=np.int64)
    classes, inverse = np.unique(lab[known], return_inverse=True)
    unit[known] = inverse
    unit[~known] = len(classes) + np.arange(int((~known).sum()))
    return unit, len(classes) + int((~known).sum())


def resample_counts(n_units: int, n_resamples: int, seed: int, *,
                    stream: int = BOOTSTRAP_STREAM) -> Iterator[np.ndarray]:
    """Chunks ``[b, U]`` float64 of how often each unit is drawn in resamples 0..n-1 (rows sum
    to U). Resample r is the r-th run of U draws ``rng.integers(0, U)`` of the generator
    ``default_rng([seed, stream])``, whatever the chunking."""
    rng = np.random.default_rng([seed, stream])
    rows = max(1, CHUNK_CELLS // max(n_units, 1))
    for start in range(0, n_resamples, rows):
        b = min(rows, n_resamples - start)
        drawn = rng.integers(0, n_units, size=(b, n_units))  # the same stream as b calls of U
        drawn += np.arange(b)[:, None] * n_units
        yield np.bincount(drawn.ravel(), minlength=b * n_units).reshape(b, n_units).astype(np.float64)


class MeanStatistics:
    """M mean metrics over R records: ``metric_m(w) = Σ_r w_r v_rm / Σ_r w_r i_rm``.

    ``values`` [R, M] float64 (finite; 0 where not included), ``include`` [R, M] bool.
    ``unit`` [R] and ``n_units``: the records' resampling units, which bound the weights a
    caller may pass (a unit's records all weigh the same, at most U; default: one unit per
    record). Values are rounded to 2^-e_m per metric so that every such weighted sum is exact.
    """

    def __init__(self, values: np.ndarray, include: np.ndarray, unit: np.ndarray | None = None,
                 n_units: int | None = None) -> None:
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("per-query values must be finite")
        r = values.shape[0]
        unit = np.arange(r) if unit is None else np.asarray(unit)
        n_units = r if n_units is None else n_units
        per_unit = np.zeros((max(n_units, 1), values.shape[1]))
        np.add.at(per_unit, unit, np.abs(values))
        bound = max(n_units, 1) * per_unit.max(axis=0, initial=0.0)  # the largest |weighted sum|
        exponent = np.array([52 - math.ceil(math.log2(b)) if b > 0 else 0 for b in bound])
        self.scale = np.ldexp(1.0, np.clip(exponent, -1000, 1000))
        self.values = np.rint(values * self.scale)  # integers: every weighted sum is exact
        # metrics share few inclusion rules (with positives, all, ...): one column per rule
        include = np.asarray(include, dtype=bool)
        first: dict[bytes, int] = {}
        self.rule_of = np.array([first.setdefault(np.packbits(column).tobytes(), len(first))
                                 for column in include.T], dtype=np.int64)
        self.include = np.ascontiguousarray(
            include[:, [list(self.rule_of).index(r) for r in range(len(first))]], dtype=np.float64)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """``[b, M]`` metrics under record weights ``[b, R]`` (nan where nothing is included)."""
        return self._ratio(weights @ self.values, weights @ self.include)

    def _ratio(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        den = den[:, self.rule_of]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / self.scale / den, np.nan)

    def paired(self, counts: np.ndarray | None,
               swaps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(A*, B*)`` [b, M] when the records are A's R then B's R: both weighed by record
        ``counts`` [b, R] (a paired resample), or, with 0/1 ``swaps`` [b, R] (a permutation),
        A* taking B's record where 1 and B* A's."""
        if counts is not None:
            r = counts.shape[1]
            return (self._ratio(counts @ self.values[:r], counts @ self.include[:r]),
                    self._ratio(counts @ self.values[r:], counts @ self.include[r:]))
        assert swaps is not None
        r = swaps.shape[1]
        va, vb, ia, ib = self.values[:r], self.values[r:], self.include[:r], self.include[r:]
        dv, di = swaps @ (vb - va), swaps @ (ib - ia)  # what the swapped records move
        return (self._ratio(va.sum(0) + dv, ia.sum(0) + di),
                self._ratio(vb.sum(0) - dv, ib.sum(0) - di))


def record_weights(unit: np.ndarray, n_units: int) -> Callable[[np.ndarray], np.ndarray]:
    """``weights [b, U] -> [b, R]``: each record takes its unit's weight (no copy when every
    record is its own unit, as with ``by="query"``)."""
    if len(unit) == n_units and bool((unit == np.arange(n_units)).all()):
        return lambda weights: weights
    return lambda weights: weights[:, unit]


def replicates(statistic: Callable[[np.ndarray], np.ndarray], unit: np.ndarray, n_units: int,
               n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, M]`` bootstrap replicates of ``statistic`` (records → unit ``unit``)."""
    records = record_weights(unit, n_units)
    out = [statistic(records(counts)) for counts in resample_counts(n_units, n_resamples, seed)]
    return np.concatenate(out) if out else np.empty((0, 0))


def percentile_interval(reps: np.ndarray, level: float) -> list[tuple[float, float] | None]:
    """Per column of ``reps`` [B, M]: the ((1 - level)/2, (1 + level)/2) quantiles of its finite
    replicates, or None when it has none."""
    out: list[tuple[float, float] | None] = []
    for column in np.asarray(reps).T:
        finite = column[np.isfinite(column)]
        if not len(finite):
            out.append(None)
            continue
        lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
        out.append((float(lo), float(hi)))
    return out

