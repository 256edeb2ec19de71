"""Each reported metric as a mean of per-query values: what a bootstrap resamples.

A metric that :func:`embeval.evaluation.summarize` reports as a mean over queries is, here,
``Σ values[include] / #include``: ``values`` [Q] float64 (0 where not included) and
``include`` [Q] bool (the queries the mean runs over: those with positives, or all of them,
as the metric and ``no_positive`` say). The sum over the included queries divided by their
count reproduces the reported value bit for bit (``tests/uncertainty`` checks every key).

Metrics that are not means of per-query values get no terms: TPIR@FPIR (its threshold is an
order statistic of the non-mated queries: :mod:`embeval.uncertainty.openset` resamples it),
thresholds and counts (no interval), and verification's TAR@FAR, EER and AUC (see
:func:`no_interval`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from embeval.evaluation import EvalResult

__all__ = ["Terms", "mean_terms", "NO_INTERVAL"]

#: why a metric gets no interval, by family (shown by the CLI, written in the JSON)
NO_INTERVAL = {
    "threshold": "a decision threshold, not a rate",
    "count": "a count",
    "verify": "all-pairs verification keeps trial counts, not per-query values: a bootstrap "
              "over identities would need each identity's impostor counts (listed --pairs "
              "trials are resampled)",
    "folds": "the LFW protocol's fold accuracy (accuracy_std is its spread over the folds)",
    "nearest": "insightface's nearest-point reading of TAR@FAR is not resampled (the step "
               "rule is)",
}


class Terms(NamedTuple):
    """``values`` [Q] float64 (0 where excluded) and ``include`` [Q] bool: metric = mean of
    ``values[include]``."""

    values: torch.Tensor
    include: torch.Tensor


def _terms(values: torch.Tensor, include: torch.Tensor) -> Terms:
    v = values.double().nan_to_num(nan=0.0)  # nan: no positive (counted as 0 when included)
    return Terms(torch.where(include, v, torch.zeros((), dtype=torch.float64)), include.clone())


def mean_terms(result: EvalResult) -> dict[str, Terms]:
    """The terms of every metric of ``result`` that is a mean over queries, in its order.

    ``result``: an :class:`~embeval.EvalResult`, a revisited protocol's result (per-setting
    keys ``mAP@easy``, ``mP@5@hard``...) or an identification's (closed-set ``rank{k}`` over
    mated queries).
    """
    settings = getattr(result, "settings", None)
    if settings is not None:  # RevisitedResult
        out: dict[str, Terms] = {}
        for name, part in settings.items():
            part_terms = mean_terms(part)
            for key in result.metrics:
                metric, _, setting = key.rpartition("@")
                if setting == name:
                    base = "mAP" if metric == "mAP" else metric.replace("mP@", "mp@")
                    out[key] = part_terms[base] if base in part_terms else _terms(
                        part.per_query[base], part.stats.n_pos > 0)
        return out
    stats = result.stats
    valid = stats.n_pos > 0
    everyone = torch.ones_like(valid)
    over = valid if result.options.get("no_positive", "skip") == "skip" else everyone
    pq = getattr(result, "per_query", None)
    first = pq["first_rank"] if pq is not None else _first_rank(stats)
    out = {}
    for key in result.metrics:
        terms = _term(key, result, pq, first, valid, over, everyone)
        if terms is not None:
            out[key] = terms
    return out


def _first_rank(stats) -> torch.Tensor:  # noqa: ANN001
    from embeval.metrics import first_hit_rank

    return first_hit_rank(stats)


_PER_QUERY = {"mAP": "ap", "MRR": "rr", "MAP@R": "map_at_r", "R-precision": "r_precision",
              "maxF1": "max_f1", "P@maxF1": "precision@maxF1", "R@maxF1": "recall@maxF1"}


def _term(key: str, result: EvalResult, pq: dict[str, torch.Tensor] | None, first: torch.Tensor,
          valid: torch.Tensor, over: torch.Tensor, everyone: torch.Tensor) -> Terms | None:
    """The terms of one metric key, or None when it is not a mean over queries."""
    if key.startswith("rank") and key[4:].isdigit():
        mated_only = pq is None  # identification: closed-set rank-k over mated queries
        return _terms((first <= int(key[4:])).double(), valid if mated_only else over)
    if pq is None:
        return None
    if key == "accuracy" or (key.startswith("top") and key.endswith("_accuracy")):
        k = 1 if key == "accuracy" else int(key[3:-len("_accuracy")])
        return _terms((first <= k).double(), everyone)
    if key in _PER_QUERY:
        return _terms(pq[_PER_QUERY[key]], over)
    if key.startswith(("P@", "nDCG@")):
        family, _, cut = key.partition("@")
        return _terms(pq[f"{family.lower()}@{cut}"], over)
    if key == "mINP":
        return _terms(pq["n_pos"].double() / pq["last_rank"], over)
    if key in ("hard_pos", "hard_neg"):
        return _terms(pq[key], ~torch.isnan(pq[key]))
    if key == "T@maxF1":
        return _terms(pq["threshold@maxF1"], valid)
    if key == "knn_accuracy":
        labels = result.stats.query_labels
        return _terms(((pq["knn_pred"] == labels) & (labels >= 0)).double(), everyone)
    return None
