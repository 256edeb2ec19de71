"""The report's figures (``embeval report``), drawn from a saved result: CMC with its bootstrap
band, the mean interpolated PR curve, the per-query score and AP distributions, ROC / DET.

Each returns a base64 SVG data URI (:func:`~embeval.visual.figures.base.svg_uri`: the same
inputs give the same bytes). Needs matplotlib.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from embeval.options import IntervalOptions
from embeval.uncertainty.saved import SavedResult
from embeval.visual.figures.base import new_figure, svg_uri

__all__ = ["cmc_from_saved", "cmc_plot", "pr_plot", "distribution_plot", "verify_plot"]


def cmc_from_saved(saved: SavedResult, max_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks [K] = 1..K, rate [K])``: CMC rank-k from the saved per-query ``first_rank`` and
    ``n_pos`` under the result's ``no_positive`` rule (the same numbers as ``cmc``'s rank-k)."""
    first = saved.per_query["first_rank"].double().numpy()
    valid = saved.per_query["n_pos"].numpy() > 0
    over = valid if saved.options.get("no_positive", "skip") == "skip" else np.ones_like(valid)
    ranks = np.arange(1, max_rank + 1, dtype=np.int64)
    if not over.any():
        return ranks, np.full(max_rank, np.nan)
    hits = (first[over][:, None] <= ranks[None, :]).astype(np.float64)
    return ranks, np.array([math.fsum(c) / len(c) for c in hits.T])


def cmc_plot(saved: SavedResult, max_rank: int) -> str:
    from matplotlib.ticker import MaxNLocator

    from embeval.uncertainty.confidence import cmc_band

    ranks, rate = cmc_from_saved(saved, max_rank)
    fig = new_figure(5.5, 4.0)
    ax = fig.subplots()
    ci = (saved.intervals or {}).get("options")
    if ci:
        shim = SimpleNamespace(per_query=saved.per_query, options=saved.options,
                               stats=SimpleNamespace(n_pos=saved.per_query["n_pos"],
                                                     query_labels=saved.query_labels))
        o = IntervalOptions(float(ci["ci_level"]), int(ci["ci_resamples"]), int(ci["ci_seed"]),
                            str(ci["ci_by"]))
        lo, hi = cmc_band(shim, max_rank, o)
        ax.fill_between(ranks, 100 * np.asarray(lo), 100 * np.asarray(hi), step="post",
                        alpha=0.25, color="C0", label=f"{100 * o.level:g}% interval")
        ax.legend(loc="center right", fontsize=8)
    ax.step(ranks, 100 * rate, where="post", lw=2, color="C0")
    ax.set(xlabel="rank k", ylabel="rank-k accuracy (%)", xlim=(0.5, max_rank + 0.5),
           title="CMC")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return svg_uri(fig)


def pr_plot(pr_curves: Any, saved: SavedResult) -> str:
    from embeval.results.writers import interpolated_precision

    r, p = interpolated_precision(SimpleNamespace(pr_curves=pr_curves))  # type: ignore[arg-type]
    fig = new_figure(5.5, 4.0)
    ax = fig.subplots()
    ax.plot(r, p, lw=2)
    ax.set(xlabel="recall", ylabel="precision (interpolated, mean)", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision-recall")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return svg_uri(fig)


def distribution_plot(saved: SavedResult) -> str | None:
    """Per query: the hardest positive's and hardest negative's scores, and the AP."""
    pq = saved.per_query
    if not {"hard_pos", "hard_neg"} <= set(pq) and "ap" not in pq:
        return None
    fig = new_figure(9.0, 3.6)
    left, right = fig.subplots(1, 2)
    if {"hard_pos", "hard_neg"} <= set(pq):
        pos, neg = (pq[k].double().numpy() for k in ("hard_pos", "hard_neg"))
        pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
        both = np.concatenate([pos, neg])
        if len(both):
            bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 41)
            left.hist(neg, bins=bins, alpha=0.6, color="C3", histtype="stepfilled",
                      label="hardest negative")
            left.hist(pos, bins=bins, alpha=0.6, color="C2", histtype="stepfilled",
                      label="hardest positive")
            left.legend(fontsize=8)
    left.set(xlabel="score", ylabel="queries", title="Per-query scores")
    if "ap" in pq:
        ap = pq["ap"].double().numpy()
        right.hist(ap[np.isfinite(ap)], bins=np.linspace(0, 1, 21), color="C0",
                   histtype="stepfilled")
    right.set(xlabel="AP", ylabel="queries", title="Per-query AP")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return svg_uri(fig)


def verify_plot(saved: SavedResult) -> tuple[str | None, str]:
    """ROC, DET and score densities rebuilt from the saved trial counts (None + why if not)."""
    from embeval.engine.trials import VerifyStats
    from embeval.verification.verify import VerifyResult
    from embeval.visual.figures.verification import verification_figure

    t = saved.trials or {}
    need = ("gen_values", "gen_counts", "imp_slots", "imp_keys")
    if any(k not in t for k in need):
        return None, "the result file holds no trial counts"
    u = len(t["gen_values"])
    if t["gen_counts"].shape != (u,) or t["imp_slots"].shape != (2 * u + 1,) or \
            t["imp_keys"].shape != (65536,) or u == 0:
        return None, "no genuine trial, or trial counts of unexpected shapes"
    stats = VerifyStats(str(saved.options.get("metric", "cosine")), t["gen_values"],
                        t["gen_counts"], t["imp_slots"], t["imp_keys"], saved.n_query,
                        saved.n_gallery)
    if stats.n_impostor == 0:
        return None, "no impostor trial"
    metrics = {k: (float("nan") if v is None else v) for k, v in saved.metrics.items()}
    result = VerifyResult(metrics, stats, saved.n_query, saved.n_gallery, dict(saved.options))
    return svg_uri(verification_figure(result, title="")), ""
