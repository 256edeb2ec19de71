"""One call from two embedding sets to every metric: what the CLI and ``import embeval`` share.

>>> import torch, embeval
>>> q = embeval.EmbeddingSet(torch.eye(2), torch.tensor([0, 1]))
>>> g = embeval.EmbeddingSet(torch.tensor([[1., 0.], [0., 1.], [.7, .7]]), torch.tensor([0, 1, 1]))
>>> res = embeval.evaluate(q, g, ks=(1, 2), device="cpu")
>>> res.metrics["rank1"], res.metrics["mAP"]
(1.0, 1.0)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from embeval.data.relevance import Relevance
from embeval.data.store import EmbeddingSet
from embeval.engine import Protocol, RankStats, rank_stats, shard_range
from embeval.engine.rank import Progress
from embeval.errors import OptionError
from embeval.options import EvalOptions
from embeval.rerank.options import RerankOptions

from . import metrics as M

__all__ = ["EvalOptions", "EvalResult", "evaluate", "evaluation_stats", "PartialEvaluation",
           "summarize", "aggregate_mean"]


@dataclass
class EvalResult:
    """Metrics (fractions in [0, 1]; hard_* are scores), per-query values and the raw stats."""

    metrics: dict[str, float]
    n_query: int
    n_gallery: int
    n_valid: int
    stats: RankStats
    per_query: dict[str, torch.Tensor]
    options: dict[str, object] = field(default_factory=dict)
    elapsed_s: float = 0.0
    pr_curves: tuple[torch.Tensor, ...] | None = None

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        return (f"EvalResult({self.n_query} queries × {self.n_gallery} gallery items, "
                f"{self.n_valid} valid: {shown})")


def aggregate_mean(gallery: EmbeddingSet) -> EmbeddingSet:
    """One L2-normalised mean embedding per known label (class prototypes), labels ascending.

    The mean is taken over the items' embeddings as stored (DESIGN.md section 3), then
    normalised. Items with an unknown label (< 0) stay single, L2-normalised, after the
    prototypes.
    """
    emb = gallery.embeddings.float()
    labels = gallery.labels
    known = labels >= 0
    classes, inverse = torch.unique(labels[known], return_inverse=True)
    sums = torch.zeros(len(classes), emb.shape[1], dtype=torch.float64)
    sums.index_add_(0, inverse, emb[known].double())
    protos = torch.nn.functional.normalize(sums, dim=1).float()
    singles = torch.nn.functional.normalize(emb[~known], dim=1)
    return EmbeddingSet(torch.cat([protos, singles]), torch.cat([classes, labels[~known]]),
                        metadata=gallery.metadata, name=f"{gallery.name} (class means)")


def evaluate(
    query: EmbeddingSet,
    gallery: EmbeddingSet,
    options: EvalOptions | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    knn_k: int | None = None,
    pr: bool = False,
    progress: Progress | None = None,
    relevance: Relevance | None = None,
    rerank: RerankOptions | None = None,
    **overrides: Any,
) -> EvalResult:
    """Evaluate ``query`` against ``gallery``: every metric of DESIGN.md section 3.

    ``options``: an :class:`~embeval.options.EvalOptions` (default: its defaults);
    ``overrides``: any of its fields as keywords (``metric="inner", exclude_self=True``),
    which replace those of ``options``. ``ks``: rank cut-offs; ``knn_k``: neighbours of the
    kNN vote; ``pr``: also the precision-recall metrics and curves.

    ``metrics`` keys: ``accuracy``, ``top{k}_accuracy``, ``rank{k}``, ``mAP``, ``mINP``,
    ``MRR``, ``MAP@R``, ``R-precision``, ``P@{k}``, ``nDCG@{k}``, ``hard_pos``, ``hard_neg``;
    ``knn_accuracy`` with ``knn_k``; ``maxF1``, ``P@maxF1``, ``R@maxF1``, ``T@maxF1`` with
    ``pr=True``. ``per_query``: [Q] tensors ``n_pos``, ``first_rank``, ``last_rank``, ``ap``,
    ``hard_pos``, ``hard_neg``, ``rr``, ``map_at_r``, ``r_precision``, ``p@{k}``, ``ndcg@{k}``
    (+ ``knn_pred``; ``max_f1``, ``threshold@maxF1``, ``precision@maxF1``, ``recall@maxF1``
    with ``pr``).
    ``backend``: see :func:`embeval.engine.rank_stats` (``"torch"`` runs the CUDA code on CPU).
    ``relevance``: per-query positives and junk instead of label equality
    (:func:`embeval.read_relevance`); the protocol's exclusions still apply.
    ``rerank``: k-reciprocal re-ranking, query expansion or DBA (:mod:`embeval.rerank`).
    """
    t0 = time.perf_counter()
    opts = EvalOptions.build(options, **overrides)
    part = evaluation_stats(query, gallery, opts, ks=ks, knn_k=knn_k, progress=progress,
                            relevance=relevance, rerank=rerank)
    return summarize(part.stats, part.gallery.labels, ks=part.ks, knn_k=knn_k,
                     no_positive=opts.no_positive, pr=pr, options=part.options, t0=t0, ap=opts.ap)


@dataclass
class PartialEvaluation:
    """What :func:`evaluation_stats` returns: statistics of one gallery shard, before the summary.

    ``gallery`` is the gallery actually ranked (the class prototypes with ``aggregate="mean"``),
    ``gallery_range`` the items ``[a, b)`` of it that this shard streamed, ``ks`` the checked
    cut-offs and ``options`` the options that shape the result (``EvalResult.options``).
    """

    stats: RankStats
    gallery: EmbeddingSet
    gallery_range: tuple[int, int]
    ks: list[int]
    options: dict[str, object]


def evaluation_stats(
    query: EmbeddingSet,
    gallery: EmbeddingSet,
    options: EvalOptions | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    knn_k: int | None = None,
    shard: tuple[int, int] | None = None,
    progress: Progress | None = None,
    relevance: Relevance | None = None,
    rerank: RerankOptions | None = None,
    **overrides: Any,
) -> PartialEvaluation:
    """Check the options and compute the mergeable statistics, of the gallery shard ``shard``
    = ``(i, n)`` (:func:`embeval.engine.shard_range`) or of the whole gallery.

    ``options`` / ``overrides``: as for :func:`evaluate`. Shards' statistics combine exactly
    with :meth:`RankStats.merge`, then :func:`summarize`. ``relevance``: as for :func:`evaluate`
    (the whole gallery's lists, whatever the shard). ``rerank``: as for :func:`evaluate`; QE,
    DBA and k-reciprocal re-ranking shard like any run (the re-ranking's graph is whole).
    """
    o = EvalOptions.build(options, **overrides)
    if relevance is not None and o.aggregate == "mean":
        raise OptionError("aggregate mean cannot be combined with relevance (the lists name "
                          "gallery items, not class prototypes)", param=("aggregate", "relevance"))
    if o.aggregate == "mean":
        gallery = aggregate_mean(gallery)
    ks = M.check_ks(ks, gallery.n)
    if knn_k is not None:
        M.check_ks([knn_k], gallery.n, "knn_k")
    g_range = shard_range(gallery.n, *shard) if shard is not None else (0, gallery.n)
    if rerank is not None and rerank.active:
        from embeval.rerank.apply import reranked
        stats = reranked(query, gallery, rerank, o, topk=knn_k or 0, shard=shard,
                         progress=progress, relevance=relevance, gallery_range=g_range)
        return PartialEvaluation(stats, gallery, g_range, list(ks), o.result_options())
    stats = rank_stats(query, gallery, metric=o.metric,
                       protocol=Protocol(o.exclude_same_camera, o.exclude_self),
                       topk=knn_k or 0, device=o.device, precision=o.precision, memory=o.memory,
                       block_size=o.block_size, backend=o.backend, gallery_range=g_range,
                       progress=progress, relevance=relevance)
    return PartialEvaluation(stats, gallery, g_range, list(ks), o.result_options())


def summarize(stats: RankStats, gallery_labels: torch.Tensor, *, ks: Sequence[int],
              knn_k: int | None = None, no_positive: str = "skip", pr: bool = False,
              options: dict[str, object] | None = None, t0: float | None = None,
              ap: str | None = None) -> EvalResult:
    """Every metric from (possibly merged) statistics.

    ``ap``: the AP of ``mAP`` and the per-query ``ap`` (:data:`embeval.options.AP_RULES`;
    None: ``options["ap"]``, else ``"standard"``).
    """
    rule = ap if ap is not None else str((options or {}).get("ap", "standard"))
    EvalOptions(ap=rule)  # checks the name
    first, last = M.first_hit_rank(stats), M.last_hit_rank(stats)
    hard_pos, hard_neg = M.hard_scores(stats)
    ap_q = M.trapezoid_average_precision(stats) if rule == "trapezoid" else M.average_precision(stats)
    per_query = {"n_pos": stats.n_pos, "first_rank": first, "last_rank": last,
                 "ap": ap_q, "hard_pos": hard_pos, "hard_neg": hard_neg}
    values: dict[str, float] = {}
    top = M.topk_accuracy(stats, ks=sorted(set([1, *ks])))
    values["accuracy"] = top[1]
    values.update({f"top{k}_accuracy": top[k] for k in ks})
    values.update({f"rank{k}": v for k, v in M.cmc(stats, ks=ks, no_positive=no_positive).items()})
    values["mAP"] = M._valid_mean(ap_q, stats, no_positive)
    values["mINP"] = M.mean_inp(stats, no_positive=no_positive)
    ranked = M.rank_metrics(stats, ks=ks, no_positive=no_positive)
    values.update({key: ranked[key] for key in _rank_keys(ks)})
    per_query.update({key: ranked[key] for key in ("rr", "map_at_r", "r_precision",
                                                   *(f"{m}@{k}" for m in ("p", "ndcg") for k in ks))})
    values["hard_pos"] = _nanmean(hard_pos)
    values["hard_neg"] = _nanmean(hard_neg)
    curves = None
    if knn_k:
        per_query["knn_pred"] = M.knn_predict(stats, gallery_labels, k=knn_k)
        values["knn_accuracy"] = M.knn_accuracy(stats, gallery_labels, k=knn_k)
    if pr:
        f1 = M.max_f1(stats, no_positive=no_positive)
        values.update({key: float(f1[key]) for key in ("maxF1", "P@maxF1", "R@maxF1", "T@maxF1")})
        per_query.update({"max_f1": f1["f1"], "threshold@maxF1": f1["threshold"],
                          "precision@maxF1": f1["precision"], "recall@maxF1": f1["recall"]})
        curves = M.pr_points(stats)
    n_valid = int((stats.n_pos > 0).sum())
    return EvalResult(metrics=values, n_query=stats.n_query, n_gallery=stats.n_gallery,
                      n_valid=n_valid, stats=stats, per_query=per_query, options=options or {},
                      elapsed_s=time.perf_counter() - t0 if t0 is not None else 0.0,
                      pr_curves=curves)


def _rank_keys(ks: Sequence[int]) -> list[str]:
    """The summary keys of :func:`embeval.metrics.rank_metrics`, in cmc's order."""
    return ["MRR", "MAP@R", "R-precision", *(f"P@{k}" for k in ks), *(f"nDCG@{k}" for k in ks)]


def _nanmean(x: torch.Tensor) -> float:
    return M.exact_mean(x[~torch.isnan(x)])
