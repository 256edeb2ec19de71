"""Verification outputs: the ROC as CSV (``--roc``) and a ROC / DET / score-histogram PNG (``--plot``).

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
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from embeval.outputs import atomic_path

__all__ = ["impostor_histogram", "rebin", "write_roc_csv", "thin_roc", "write_verification_plot",
           "verification_figure", "PANELS"]

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


def _probit(p: np.ndarray) -> np.ndarray:
    """The standard normal deviate of probabilities ``p`` (the DET axes)."""
    return torch.special.ndtri(torch.as_tensor(p, dtype=torch.float64)).numpy()


PANELS = ("roc", "det", "hist")


def verification_figure(*, fpr: ArrayLike, tpr: ArrayLike, gen_values: ArrayLike,
                        gen_counts: ArrayLike, imp_edges: ArrayLike, imp_counts: ArrayLike,
                        far_points: Mapping[float, tuple[float, float]], title: str = "",
                        n_bins: int = 100, panels: Sequence[str] = PANELS):  # noqa: ANN201
    """A matplotlib ``Figure`` with ``panels`` (of :data:`PANELS`, in order, one axes each):
    the arguments are :func:`write_verification_plot`'s. Drawn with matplotlib."""
    from embeval.results.writers import require_matplotlib
    require_matplotlib(None)
    from matplotlib.figure import Figure

    unknown = [p for p in panels if p not in PANELS]
    if unknown or not panels:
        raise ValueError(f"panels: {list(panels)}: choose from {list(PANELS)}")
    f, t = _np(fpr), _np(tpr)
    keep = thin_roc(f, t, None)
    f, t = f[keep].astype(np.float64), t[keep].astype(np.float64)
    fig = Figure(figsize=(5 * len(panels), 4.5), dpi=100)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "roc":
            _roc_panel(ax, f, t, far_points)
        elif panel == "det":
            _det_panel(ax, f, t, far_points)
        else:
            _hist_panel(ax, _np(gen_values), _np(gen_counts), _np(imp_edges), _np(imp_counts),
                        n_bins)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_verification_plot(path: PathLike, *, fpr: ArrayLike, tpr: ArrayLike,
                            gen_values: ArrayLike, gen_counts: ArrayLike, imp_edges: ArrayLike,
                            imp_counts: ArrayLike, far_points: Mapping[float, tuple[float, float]],
                            title: str = "", n_bins: int = 100) -> None:
    """PNG (or the format of ``path``'s suffix) with three panels.

    ROC: TAR (linear) against FAR (log axis); DET: FNR against FPR on normal-deviate (probit)
    axes; the genuine and impostor score densities on ``n_bins`` shared linear bins over the
    score range. ``fpr``, ``tpr`` [n]: the ROC (thinned here with :func:`thin_roc`);
    ``gen_values`` [U] / ``gen_counts`` [U]: distinct genuine scores and their counts;
    ``imp_edges`` [m+1] / ``imp_counts`` [m]: :func:`impostor_histogram`'s bins (spread onto the
    plotting bins by :func:`rebin`); ``far_points``: requested FAR -> (TAR, threshold), marked
    on the ROC and DET.
    """
    fig = verification_figure(fpr=fpr, tpr=tpr, gen_values=gen_values, gen_counts=gen_counts,
                              imp_edges=imp_edges, imp_counts=imp_counts, far_points=far_points,
                              title=title, n_bins=n_bins)
    suffix = Path(os.fspath(path)).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix)


def _marks(far_points: Mapping[float, tuple[float, float]]) -> list[tuple[float, float, str]]:
    """(FAR, TAR, legend label) of each requested operating point with a finite TAR."""
    return [(far, tar, f"FAR={far:g}: TAR {tar:.4f} (t={thr:.4g})")
            for far, (tar, thr) in sorted(far_points.items()) if math.isfinite(tar)]


def _roc_panel(ax, f: np.ndarray, t: np.ndarray,  # noqa: ANN001 - a matplotlib Axes
               far_points: Mapping[float, tuple[float, float]]) -> None:
    shown = f > 0
    ax.plot(f[shown], t[shown], lw=1.5, color="C0")
    marks = _marks(far_points)
    for far, tar, label in marks:
        ax.plot([far], [tar], "o", ms=5, label=label)
    ax.set_xscale("log")
    ax.set(xlabel="FAR (false accept rate)", ylabel="TAR (true accept rate)", ylim=(0, 1.02),
           title="ROC")
    ax.grid(alpha=0.3, which="both")
    if marks:
        ax.legend(fontsize=7, loc="lower right")


_DET_TICKS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99)


def _det_panel(ax, f: np.ndarray, t: np.ndarray,  # noqa: ANN001 - a matplotlib Axes
               far_points: Mapping[float, tuple[float, float]]) -> None:
    fnr = 1.0 - t
    shown = (f > 0) & (f < 1) & (fnr > 0) & (fnr < 1)
    ax.plot(_probit(f[shown]), _probit(fnr[shown]), lw=1.5, color="C0")
    for far, tar, label in _marks(far_points):
        if 0 < 1 - tar < 1:
            ax.plot(_probit(np.array([far])), _probit(np.array([1 - tar])), "o", ms=5, label=label)
    low = min([*f[shown], *fnr[shown], 1e-2])
    ticks = np.array([p for p in _DET_TICKS if p >= min(0.1, 10 ** math.floor(math.log10(low)))])
    where = _probit(ticks)
    names = [f"{100 * p:g}%" for p in ticks]
    ax.set_xticks(where, names, fontsize=7, rotation=45)
    ax.set_yticks(where, names, fontsize=7)
    ax.set(xlim=(where[0], where[-1]), ylim=(where[0], where[-1]), xlabel="FPR (probit axis)",
           ylabel="FNR (probit axis)", title="DET")
    ax.grid(alpha=0.3)


def _hist_panel(ax, gen_values: np.ndarray, gen_counts: np.ndarray,  # noqa: ANN001 - an Axes
                imp_edges: np.ndarray, imp_counts: np.ndarray, n_bins: int) -> None:
    ends = [float(x.min()) for x in (gen_values, imp_edges) if x.size]
    ends += [float(x.max()) for x in (gen_values, imp_edges) if x.size]
    lo, hi = (min(ends), max(ends)) if ends else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, n_bins + 1)
    width = (hi - lo) / n_bins
    if gen_counts.sum() > 0:
        g, _ = np.histogram(gen_values.astype(np.float64), bins=edges,
                            weights=gen_counts.astype(np.float64))
        ax.stairs(g / (g.sum() * width), edges, fill=True, alpha=0.45, color="C2", label="genuine")
    if imp_counts.sum() > 0:
        i = rebin(imp_edges, imp_counts, n_bins, lo, hi)
        ax.stairs(i / (i.sum() * width), edges, fill=True, alpha=0.45, color="C3", label="impostor")
    ax.set(xlabel="score", ylabel="density", xlim=(lo, hi), title="score distributions")
    ax.grid(alpha=0.3)
    if gen_counts.sum() > 0 or imp_counts.sum() > 0:
        ax.legend(fontsize=8)
