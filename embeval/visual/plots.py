"""Figures of results: the CMC curve, the PR curve, ROC + DET + score histograms.

Pure functions: each takes a result object (:class:`~embeval.evaluate.EvalResult`,
:class:`~embeval.verification.verify.VerifyResult`) and returns a matplotlib ``Figure`` (no
pyplot state, nothing global); :func:`save_figure` writes one atomically, in the format of the
file's suffix (``.png``, ``.svg``, ``.pdf``). Drawn with matplotlib (a dependency):
without it, :class:`~embeval.errors.OptionError` with the one line that says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embeval import metrics as M
from embeval.errors import OptionError
from embeval.evaluate import EvalResult
from embeval.outputs import atomic_path
from embeval.results.writers import pr_figure, require_matplotlib
from embeval.verification import plot as vplot

__all__ = ["cmc_curve", "cmc_figure", "pr_figure", "verification_figure",
           "score_histogram_figure", "save_figure", "write_cmc_plot", "FORMATS"]

Figure = Any  # matplotlib.figure.Figure (imported lazily)
FORMATS = ("png", "svg", "pdf")


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


def _operating_points(result: Any) -> dict[float, tuple[float, float]]:
    """{FAR: (TAR, threshold)} of the FARs the verification result reports."""
    m = result.metrics
    return {float(k.split("=", 1)[1]): (m[k], m.get(k.replace("TAR@", "threshold@"), float("nan")))
            for k in m if k.startswith("TAR@FAR=")}


def verification_figure(result: Any, *, title: str = "",
                        panels: Sequence[str] = vplot.PANELS) -> Figure:
    """ROC (TAR vs log FAR), DET (probit axes) and the genuine / impostor score densities of a
    :class:`~embeval.verification.verify.VerifyResult`: one axes per panel of ``panels``."""
    c = result.curve()
    edges, counts = vplot.impostor_histogram(result.stats.imp_keys)
    return vplot.verification_figure(
        fpr=c.fpr.numpy(), tpr=c.tpr.numpy(), gen_values=result.stats.gen_values.numpy(),
        gen_counts=result.stats.gen_counts.numpy(), imp_edges=edges, imp_counts=counts,
        far_points=_operating_points(result), title=title, panels=panels)


def score_histogram_figure(result: Any, *, title: str = "") -> Figure:
    """The genuine and impostor score densities of a verification result (one axes)."""
    return verification_figure(result, title=title, panels=("hist",))


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` (complete or absent) in the format of its suffix (png, svg, pdf)."""
    fmt = Path(os.fspath(path)).suffix.lstrip(".").lower() or "png"
    if fmt not in FORMATS:
        raise OptionError(f"{os.fspath(path)}: plot format {fmt!r} is not one of "
                          f"{', '.join(FORMATS)} (by the file's suffix)", param="plot")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)


def write_cmc_plot(path: str | os.PathLike[str], result: EvalResult, *,
                   max_rank: int | None = None,
                   band: tuple[Sequence[float], Sequence[float]] | None = None,
                   title: str = "") -> None:
    """:func:`cmc_figure` written to ``path`` by :func:`save_figure`."""
    save_figure(cmc_figure(result, max_rank=max_rank, band=band, title=title), path)
