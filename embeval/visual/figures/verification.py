"""Figures of a verification result: ROC (TAR against log FAR), DET (probit axes) and the genuine /
impostor score densities (``verify --plot``, the report).

The data come from :mod:`embeval.verification.plot`: the ROC thinned to the points that draw it
(:func:`~embeval.verification.plot.thin_roc`), the impostors' radix histogram as float bins
(:func:`~embeval.verification.plot.impostor_histogram`, spread by
:func:`~embeval.verification.plot.rebin`). Needs matplotlib
(:func:`~embeval.visual.figures.base.require_matplotlib`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from embeval.verification.plot import (
    ArrayLike,
    PathLike,
    _np,
    impostor_histogram,
    operating_points,
    rebin,
    thin_roc,
)
from embeval.visual.figures.base import Figure, require_matplotlib, save_figure

__all__ = ["verification_figure", "score_histogram_figure", "trials_figure",
           "write_verification_plot", "PANELS"]


def _probit(p: np.ndarray) -> np.ndarray:
    """The standard normal deviate of probabilities ``p`` (the DET axes)."""
    return torch.special.ndtri(torch.as_tensor(p, dtype=torch.float64)).numpy()


PANELS = ("roc", "det", "hist")


def trials_figure(*, fpr: ArrayLike, tpr: ArrayLike, gen_values: ArrayLike,
                        gen_counts: ArrayLike, imp_edges: ArrayLike, imp_counts: ArrayLike,
                        far_points: Mapping[float, tuple[float, float]], title: str = "",
                        n_bins: int = 100, panels: Sequence[str] = PANELS):  # noqa: ANN201
    """A matplotlib ``Figure`` with ``panels`` (of :data:`PANELS`, in order, one axes each):
    the arguments are :func:`write_verification_plot`'s. Drawn with matplotlib."""
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
    fig = trials_figure(fpr=fpr, tpr=tpr, gen_values=gen_values, gen_counts=gen_counts,
                              imp_edges=imp_edges, imp_counts=imp_counts, far_points=far_points,
                              title=title, n_bins=n_bins)
    save_figure(fig, path)


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


def verification_figure(result: Any, *, title: str = "",
                        panels: Sequence[str] = PANELS) -> Figure:
    """ROC (TAR vs log FAR), DET (probit axes) and the genuine / impostor score densities of a
    :class:`~embeval.verification.verify.VerifyResult`: one axes per panel of ``panels``."""
    c = result.curve()
    edges, counts = impostor_histogram(result.stats.imp_keys)
    return trials_figure(
        fpr=c.fpr.numpy(), tpr=c.tpr.numpy(), gen_values=result.stats.gen_values.numpy(),
        gen_counts=result.stats.gen_counts.numpy(), imp_edges=edges, imp_counts=counts,
        far_points=operating_points(result), title=title, panels=panels)


def score_histogram_figure(result: Any, *, title: str = "") -> Figure:
    """The genuine and impostor score densities of a verification result (one axes)."""
    return verification_figure(result, title=title, panels=("hist",))
