"""Figures of a ranking result: the CMC curve (``cmc --plot``) and the mean PR curve (``pr --plot``).

Pure functions: each takes an :class:`~embeval.evaluation.EvalResult` and returns a matplotlib
``Figure`` (no pyplot state, nothing global); the ``write_*`` functions save one atomically, in
the format of the file's suffix. Drawn with matplotlib, a dependency
(:func:`~embeval.visual.figures.base.require_matplotlib`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from embeval import metrics as M
from embeval.errors import OptionError
from embeval.evaluation import EvalResult
from embeval.results.writers import interpolated_precision
from embeval.visual.figures.base import Figure, require_matplotlib, save_figure

__all__ = ["cmc_curve", "cmc_figure", "pr_figure", "write_cmc_plot", "write_pr_plot"]


def cmc_curve(result: EvalResult, max_rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The CMC curve: ``(ranks [K] int64 = 1..K, rate [K] float64 in [0, 1])``, rate[k-1] =
    CMC rank-k under the result's ``no_positive`` rule. ``max_rank``: K (default: the gallery
    size, at most 100)."""
    stats = result.stats
    k = max_rank if max_rank is not None else min(stats.n_gallery, 100)
    if not 1 <= k <= stats.n_gallery:
        raise OptionError(f"max_rank {k}: must lie in [1, {stats.n_gallery}] (the gallery size)",
                          param="max_rank")
    ranks = np.arange(1, k + 1, dtype=np.int64)
    no_positive = str(result.options.get("no_positive", "skip"))
    values = M.cmc(stats, ks=ranks.tolist(), no_positive=no_positive)
    return ranks, np.array([values[int(r)] for r in ranks], dtype=np.float64)


def cmc_figure(result: EvalResult, *, max_rank: int | None = None,
               band: tuple[Sequence[float], Sequence[float]] | None = None,
               title: str = "") -> Figure:
    """One axes: CMC rank-k (percent) against k = 1..``max_rank`` (see :func:`cmc_curve`).

    ``band``: an interval ``(lower [K], upper [K])`` per rank (fractions, e.g. a bootstrap's
    percentiles), drawn shaded around the curve; None: no band.
    """
    ranks, rate = cmc_curve(result, max_rank)
    require_matplotlib()
    from matplotlib.figure import Figure as _Figure
    from matplotlib.ticker import MaxNLocator

    fig = _Figure(figsize=(5.5, 4), dpi=120)
    ax = fig.subplots()
    if band is not None:
        lower, upper = (np.asarray(b, dtype=np.float64) for b in band)
        if lower.shape != rate.shape or upper.shape != rate.shape:
            raise ValueError(f"band: lower and upper need {len(rate)} values (one per rank), got "
                             f"{list(lower.shape)} and {list(upper.shape)}")
        ax.fill_between(ranks, 100 * lower, 100 * upper, step="post" if len(ranks) > 1 else None,
                        alpha=0.25, color="C0", label="interval")
    ax.step(ranks, 100 * rate, where="post", lw=2, color="C0", label="CMC")
    ax.plot(ranks, 100 * rate, "o", ms=3 if len(ranks) <= 50 else 0, color="C0")
    ax.set(xlabel="rank k", ylabel="rank-k accuracy (%)", xlim=(0.5, len(ranks) + 0.5),
           ylim=(min(100 * float(rate.min()), 100 * float(np.min(band[0])) if band is not None
                     else 100.0) - 2, 101), title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    m = result.metrics
    shown = [f"rank-1 {100 * rate[0]:.2f}%"] + ([f"mAP {100 * m['mAP']:.2f}%"]
                                               if m.get("mAP") is not None else [])
    ax.text(0.98, 0.04, "   ".join(shown), transform=ax.transAxes, ha="right")
    if band is not None:
        ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    return fig


def write_cmc_plot(path: str | os.PathLike[str], result: EvalResult, *,
                   max_rank: int | None = None,
                   band: tuple[Sequence[float], Sequence[float]] | None = None,
                   title: str = "") -> None:
    """:func:`cmc_figure` written to ``path`` by :func:`save_figure`."""
    save_figure(cmc_figure(result, max_rank=max_rank, band=band, title=title), path)


def pr_figure(result: EvalResult, title: Callable[[], str] | str = ""):  # noqa: ANN201
    """A matplotlib ``Figure`` (one axes) of the mean interpolated precision-recall curve of a
    ``pr=True`` result."""
    if result.pr_curves is None:
        raise OptionError("result: PR curves were not computed (evaluate(..., pr=True))", param="result")
    require_matplotlib()
    from matplotlib.figure import Figure

    r, p = interpolated_precision(result)
    fig = Figure(figsize=(5, 4), dpi=120)
    ax = fig.subplots()
    ax.plot(r, p, lw=2)
    ax.set(xlabel="recall", ylabel="precision (interpolated, mean over queries)",
           xlim=(0, 1), ylim=(0, 1.02), title=title() if callable(title) else title)
    ax.grid(alpha=0.3)
    m = result.metrics
    ax.text(0.02, 0.04, f"mAP {m['mAP']:.4f}   maxF1 {m.get('maxF1', float('nan')):.4f}",
            transform=ax.transAxes)
    fig.tight_layout()
    return fig


def write_pr_plot(path: str | os.PathLike[str], result: EvalResult,
                  title: Callable[[], str] | str = "") -> None:
    """The mean interpolated precision-recall curve of a ``pr=True`` result, in the format of
    ``path``'s suffix (``.png``, ``.svg``, ``.pdf``)."""
    fig = pr_figure(result, title)
    save_figure(fig, path)
