"""``intervals(result)``: a bootstrap interval for every metric of a result that has one.

>>> import torch, embeval
>>> q = embeval.EmbeddingSet(torch.eye(4)[[0, 1, 2, 3, 0, 1]], torch.tensor([0, 1, 2, 3, 0, 9]))
>>> g = embeval.EmbeddingSet(torch.eye(4), torch.tensor([0, 1, 2, 3]))
>>> res = embeval.evaluate(q, g, ks=(1,), device="cpu")
>>> ci = intervals(res, level=0.9, n_resamples=200)
>>> res.metrics["rank1"], ci.bounds["rank1"]
(1.0, (1.0, 1.0))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embeval.options import IntervalOptions, check_resample_work

from .bootstrap import MeanStatistics, percentile_interval, replicates, resampling_units
from .listed import ListedTrials, VerificationStatistics, verification_keys
from .openset import OpenSetStatistics, open_set_records, tpir_key
from .terms import NO_INTERVAL, mean_terms

__all__ = ["Intervals", "intervals", "result_statistics", "cmc_band", "Joined"]


@dataclass
class Intervals:
    """``bounds``: metric → ``(lo, hi)`` (None when no resample had a value); ``reasons``:
    metric → why it has no interval; ``options``: how they were computed."""

    bounds: dict[str, tuple[float, float] | None]
    options: IntervalOptions
    reasons: dict[str, str] = field(default_factory=dict)
    #: what was resampled: "queries", or "listed trials" (verify --pairs)
    records: str = "queries"

    def to_json(self) -> dict[str, list[float] | None]:
        """The ``ci`` object of ``--json``: metric → ``[lo, hi]`` or null."""
        return {k: (list(v) if v is not None else None) for k, v in self.bounds.items()}


class Joined:
    """Several statistics over the same records, their columns side by side."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        return np.concatenate([p(weights) for p in self.parts], axis=1)


def record_labels(result: Any) -> torch.Tensor | None:
    """The labels of ``result``'s records, one per resampled record: its queries, or its
    listed trials (``verify --pairs``: the query side's label); None when it has none
    (all-pairs verification keeps trial counts only)."""
    listed = getattr(result, "listed", None)
    if listed is not None:
        return listed[2]
    return getattr(result.stats, "query_labels", None)


def result_statistics(result: Any, unit: np.ndarray | None = None,
                      n_units: int | None = None) -> tuple[list[str], Joined]:
    """The metric names of ``result`` that a resample can recompute, and the statistic
    ``weights [b, R] -> [b, len(names)]`` over its records (:func:`record_labels`) that
    recomputes them (weights all 1: the result)."""
    listed = getattr(result, "listed", None)
    if listed is not None:
        keys = verification_keys(result.metrics, str(result.options.get("far_rule", "step")))
        return keys, Joined([VerificationStatistics(ListedTrials(*listed), keys)])
    terms = mean_terms(result)
    names = list(terms)
    parts: list[Any] = []
    if names:
        values = np.stack([terms[k].values.numpy() for k in names], axis=1)
        include = np.stack([terms[k].include.numpy() for k in names], axis=1)
        parts.append(MeanStatistics(values, include, unit, n_units))
    extra = getattr(result, "options", {})
    if "fpir_rule" in extra:  # an identification: TPIR@FPIR from weighted records
        tpirs = [tpir_key(k) for k in result.metrics if k.startswith("TPIR@FPIR=")]
        if tpirs:
            parts.append(OpenSetStatistics(open_set_records(result.stats), tpirs,
                                           str(extra["fpir_rule"])))
            names += [k for k, _, _ in tpirs]
    return names, Joined(parts)


def intervals(result: Any, options: IntervalOptions | None = None, **overrides: Any) -> Intervals:
    """Percentile bootstrap intervals for the metrics of ``result`` (an
    :class:`~embeval.EvalResult`, ``IdentifyResult``, ``RevisitedResult``, or a
    ``VerifyResult`` of listed pairs, whose trials are resampled).

    ``options`` / ``overrides``: :class:`~embeval.options.IntervalOptions` fields (``level``,
    ``n_resamples``, ``seed``, ``by``). Metrics that are not recomputable from per-query
    values or listed trials (thresholds, counts, all-pairs verification) are listed in
    ``reasons``. Cost: O(resamples × records × metrics), independent of the gallery size.
    """
    o = IntervalOptions.build(options, **overrides)
    labels = record_labels(result)
    if labels is None:  # all-pairs verification's trial counts
        return Intervals({}, o, {k: _reason(k, result) for k in result.metrics})
    check_resample_work(o.n_resamples, len(labels))
    unit, n_units = resampling_units(labels, o.by)
    names, statistic = result_statistics(result, unit, n_units)
    reps = replicates(statistic, unit, n_units, o.n_resamples, o.seed) if names else np.empty((0, 0))
    bounds = dict(zip(names, percentile_interval(reps, o.level))) if names else {}
    reasons = {k: _reason(k, result) for k in result.metrics if k not in bounds}
    return Intervals(bounds, o, reasons,
                     "listed trials" if getattr(result, "listed", None) is not None else "queries")


def _reason(key: str, result: Any) -> str:
    if key.startswith(("threshold@", "T@")) or key.endswith("_threshold"):
        return NO_INTERVAL["threshold"]
    if key.startswith("n_"):
        return NO_INTERVAL["count"]
    if key.startswith("accuracy") and getattr(result, "folds", None) is not None:
        return NO_INTERVAL["folds"]
    if key.startswith("TAR@FAR=") and getattr(result, "listed", None) is not None:
        return NO_INTERVAL["nearest"]
    return NO_INTERVAL["verify"]


def cmc_band(result: Any, max_rank: int, options: IntervalOptions | None = None,
             **overrides: Any) -> tuple[list[float], list[float]]:
    """``(lower [K], upper [K])``: the bootstrap interval of CMC rank-k for k = 1..``max_rank``
    (fractions; the curve's band), resampled as :func:`intervals` resamples ``rank{k}``."""
    o = IntervalOptions.build(options, **overrides)
    first = result.per_query["first_rank"].numpy()
    valid = (result.stats.n_pos > 0).numpy()
    over = valid if result.options.get("no_positive", "skip") == "skip" else np.ones_like(valid)
    ranks = np.arange(1, max_rank + 1)
    check_resample_work(o.n_resamples, len(first))
    hits = (first[:, None] <= ranks[None, :]) & over[:, None]
    unit, n_units = resampling_units(result.stats.query_labels, o.by)
    statistic = MeanStatistics(hits.astype(np.float64), np.repeat(over[:, None], max_rank, 1),
                               unit, n_units)
    bounds = percentile_interval(replicates(statistic, unit, n_units, o.n_resamples, o.seed), o.level)
    nan = float("nan")
    return ([b[0] if b else nan for b in bounds], [b[1] if b else nan for b in bounds])
