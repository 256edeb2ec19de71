"""Verification outputs: the ROC as CSV (``--roc``) and the data of its plot (``--plot``: the
figure itself is :mod:`embeval.visual.figures.verification`'s).

The ROC arrays come in whole (up to one point per distinct score); :func:`thin_roc` picks the few
thousand points that draw the same curve. Impostor scores are only known as a radix histogram
(``imp_keys``: 65536 bins by the top 16 bits of the ordered float32 key); :func:`impostor_histogram`
turns it into float intervals and :func:`rebin` spreads it onto plotting bins.

Every file goes through :func:`embeval.outputs.atomic_path`: complete under its name, or absent.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embeval.outputs import atomic_path

__all__ = ["impostor_histogram", "rebin", "write_roc_csv", "thin_roc", "operating_points"]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]
PathLike = str | os.PathLike[str]
_N_KEY_BINS = 1 << 16
#: key bins holding finite float32 values: -FLT_MAX is in bin 0x0080, +FLT_MAX in bin 0xFF7F
_FIRST_FINITE, _LAST_FINITE = 0x0080, 0xFF7F


def _np(x: ArrayLike) -> np.ndarray:
    """A CPU numpy view (no copy where possible) of a tensor or array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _magnitude(bits: np.ndarray) -> np.ndarray:
    """float64 value of non-negative float32 bit patterns ``bits`` (int64, up to 0x7F800000,
    which gives 2**128: the value one step above FLT_MAX had the exponent range continued)."""
    exponent, fraction = bits >> 23, bits & 0x7FFFFF
    normal = np.ldexp((fraction + (1 << 23)).astype(np.float64), (exponent - 150).astype(np.int32))
    return np.where(exponent == 0, np.ldexp(fraction.astype(np.float64), -149), normal)


def _bin_low(b: np.ndarray) -> np.ndarray:
    """The smallest float32 value (float64) key bin ``b`` can hold; bin b's values are
    ``[_bin_low(b), _bin_low(b + 1))``. Key bin b >= 0x8000: non-negative floats whose bits'
    top 16 are ``b - 0x8000``; b < 0x8000: negative floats, bits = ~key."""
    b = b.astype(np.int64)
    positive = b >= 0x8000
    bits = np.where(positive, (b - 0x8000) << 16, 0x7FFFFFFF - (b << 16))
    value = _magnitude(bits)
    return np.where(positive, value, -value)


def impostor_histogram(imp_keys: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The radix key histogram as float bins: ``(edges float64 [n+1], counts int64 [n])``.

    ``imp_keys``: [65536] int64, impostors by ``key(score) >> 16`` (see ``VerifyStats``).
    Only the bins from the first to the last non-empty one are returned; bin i holds the float32
    scores ``edges[i] <= s < edges[i+1]`` exactly (each edge is the smallest float32 value of its
    key bin; the last edge, past +FLT_MAX's bin, is 2**128). No impostor: both arrays empty.

    >>> keys = np.zeros(65536, np.int64); keys[0x8000 + 0x3F80] = 3  # 1.0 <= s < 1.0078125
    >>> impostor_histogram(keys)
    (array([1.       , 1.0078125]), array([3]))
    """
    keys = _np(imp_keys)
    if keys.shape != (_N_KEY_BINS,) or keys.dtype.kind not in "iu" or (keys < 0).any():
        raise ValueError(f"imp_keys: expected [65536] non-negative integer counts, got "
                         f"{keys.dtype} {list(keys.shape)}")
    used = np.flatnonzero(keys)
    if used.size == 0:
        return np.zeros(0, np.float64), np.zeros(0, np.int64)
    first, last = int(used[0]), int(used[-1])
    if first < _FIRST_FINITE or last > _LAST_FINITE:
        raise ValueError("imp_keys: counts in the key bins of inf/NaN scores (scores are finite)")
    edges = _bin_low(np.arange(first, last + 2))
    return edges, keys[first:last + 1].astype(np.int64)


def rebin(edges: ArrayLike, counts: ArrayLike, n_bins: int, lo: float, hi: float) -> np.ndarray:
    """Spread ``counts`` [n] on bins ``edges`` [n+1] onto ``n_bins`` equal bins over [lo, hi]:
    float64 [n_bins], each source bin's count shared in proportion to the overlap.

    A plotting approximation: it assumes the scores are spread evenly inside each source bin.
    The total is kept when [lo, hi] covers [edges[0], edges[-1]]; counts outside are dropped.

    >>> rebin([0.0, 1.0, 3.0], [2, 4], 3, 0.0, 3.0)
    array([2., 2., 2.])
    """
    e, c = _np(edges).astype(np.float64), _np(counts).astype(np.float64)
    if n_bins < 1 or not hi > lo:
        raise ValueError(f"rebin: need n_bins >= 1 and lo < hi, got {n_bins}, [{lo}, {hi}]")
    if c.size == 0:
        return np.zeros(n_bins)
    cumulative = np.concatenate([[0.0], np.cumsum(c)])  # piecewise-linear CDF at the edges
    return np.diff(np.interp(np.linspace(lo, hi, n_bins + 1), e, cumulative))


def write_roc_csv(path: PathLike, fpr: ArrayLike, tpr: ArrayLike, thresholds: ArrayLike) -> None:
    """CSV ``fpr,tpr,threshold`` (``\\n`` line ends), one row per ROC point, in order.

    Floats are written as ``repr(float(x))``: reading a cell back with ``float()`` gives the same
    float64 bit for bit (thresholds: the float32 score exactly; the first is ``inf``).
    """
    cols = [_np(x) for x in (fpr, tpr, thresholds)]
    if any(c.ndim != 1 or len(c) != len(cols[0]) for c in cols):
        raise ValueError(f"write_roc_csv: fpr, tpr, thresholds must be 1-D of one length, got "
                         f"{[list(c.shape) for c in cols]}")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["fpr", "tpr", "threshold"])
        w.writerows(zip(*(map(repr, c.astype(np.float64).tolist()) for c in cols)))


def thin_roc(fpr: ArrayLike, tpr: ArrayLike, thresholds: ArrayLike | None,
             keep_fprs: Sequence[int] | np.ndarray = (), max_points: int = 2000) -> np.ndarray:
    """Indices (int64, ascending) of the ROC points to draw or write: at most
    ``max(max_points, 2 + len(keep_fprs))`` of them.

    ``fpr``, ``tpr`` [n]: non-decreasing (a ROC in threshold order); ``thresholds``: [n] or None
    (only its length is checked); ``keep_fprs``: indices of points that must stay (the requested
    FAR operating points). Rule: keep the first and last points and ``keep_fprs``; then, for L
    levels evenly spaced in log10(FPR) (smallest positive .. last FPR), L in TPR (first .. last) and
    L in log10(FNR) (FNR = 1 - TPR: the DET's other axis), keep the first point reaching the
    level and the one before it (the corner of the step), with L = (max_points - 2 - len(keep)) // 6.
    Every gap of the drawn curve is then at most one level wide on each axis. Cost: a few
    binary searches per level (no pass over the arrays); n <= max_points keeps every point.
    """
    f, t = _np(fpr), _np(tpr)
    n = len(f)
    if f.shape != (n,) or t.shape != (n,) or (thresholds is not None and len(thresholds) != n):
        raise ValueError("thin_roc: fpr, tpr, thresholds must be 1-D of one length")
    keep = np.unique(np.asarray(keep_fprs, dtype=np.int64))
    if keep.size and (keep[0] < 0 or keep[-1] >= n):
        raise ValueError(f"thin_roc: keep_fprs indices must lie in [0, {n}), got {keep.tolist()}")
    if n <= max(max_points, 2):
        return np.arange(n, dtype=np.int64)
    levels = max((max_points - 2 - keep.size) // 6, 0)
    found = [np.array([0, n - 1]), keep]
    if levels:
        found += [_reach(f, _log_levels(f, levels)), _reach(t, np.linspace(t[0], t[-1], levels))]
        below_one = int(np.searchsorted(t, 1.0, side="left"))  # points with TPR < 1: [0, below_one)
        if below_one:
            low, high = 1.0 - float(t[below_one - 1]), 1.0 - float(t[0])  # positive FNR range
            fnr = np.logspace(math.log10(low), math.log10(high), levels)
            found.append(_reach(t, 1.0 - fnr[::-1]))
    picked = np.unique(np.concatenate(found))
    return picked[(picked >= 0) & (picked < n)]


def _log_levels(f: np.ndarray, levels: int) -> np.ndarray:
    """``levels`` values evenly spaced in log10 from the smallest positive of sorted ``f`` to its last."""
    start = int(np.searchsorted(f, 0.0, side="right"))
    if start == len(f):
        return np.zeros(0)
    return np.logspace(math.log10(f[start]), math.log10(max(f[-1], f[start])), levels)


def _reach(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """For sorted ``x``: the first index with x >= each level, and the index before it."""
    i = np.searchsorted(x, levels, side="left")
    return np.concatenate([i, i - 1])


def operating_points(result: Any) -> dict[float, tuple[float, float]]:
    """{FAR: (TAR, threshold)} of the FARs a verification result reports (its ``TAR@FAR=`` keys;
    the threshold is NaN where the result has none, as under the nearest rule)."""
    m = result.metrics
    return {float(k.split("=", 1)[1]): (m[k], m.get(k.replace("TAR@", "threshold@"), float("nan")))
            for k in m if k.startswith("TAR@FAR=")}
