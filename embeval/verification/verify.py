"""``verify``: every trial of two embedding sets (or the listed ones) → ROC, TAR@FAR, EER, AUC.

>>> import torch, embeval
>>> q = embeval.EmbeddingSet(torch.eye(2), torch.tensor([0, 1]))
>>> g = embeval.EmbeddingSet(torch.tensor([[1., 0.], [0., 1.], [.6, .8]]), torch.tensor([0, 1, 1]))
>>> res = embeval.verify(q, g, fars=(0.5,), device="cpu")
>>> res.metrics["TAR@FAR=0.5"], res.metrics["AUC"], res.metrics["n_impostor"]
(1.0, 1.0, 3)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embeval.data.store import EmbeddingSet
from embeval.engine import Protocol, positive_pairs
from embeval.engine.rank import Progress
from embeval.engine.trial_pass import trial_stats
from embeval.engine.trials import VerifyStats
from embeval.errors import OptionError
from embeval.options import EvalOptions
from embeval.verification import pairs as P
from embeval.verification.roc import (
    DEFAULT_FARS,
    FAR_RULES,
    Curve,
    check_fars,
    curve,
    verification_metrics,
)

__all__ = ["VerifyResult", "verify", "verification_stats", "summarize_verification", "NEAREST_LIMIT"]

#: all-pairs runs up to this many trials can use ``far_rule="nearest"`` (it needs every score)
NEAREST_LIMIT = 1 << 25


@dataclass
class VerifyResult:
    """Metrics (fractions in [0, 1]; thresholds are scores; counts), the trial statistics,
    the options that shaped them, and the LFW folds when asked for."""

    metrics: dict[str, float]
    stats: VerifyStats
    n_query: int
    n_gallery: int
    options: dict[str, object] = field(default_factory=dict)
    folds: P.FoldAccuracy | None = None
    elapsed_s: float = 0.0
    #: listed pairs: every trial's ``scores`` [T] float32, ``genuine`` [T] bool and query-side
    #: ``labels`` [T] int64, in file order (for intervals and paired comparison); else None
    listed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def curve(self) -> Curve:
        """The exact ROC points (:func:`embeval.verification.roc.curve`)."""
        return curve(self.stats)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        return f"VerifyResult({shown})"


def verify(
    query: EmbeddingSet,
    gallery: EmbeddingSet,
    options: EvalOptions | None = None,
    *,
    fars: Sequence[float] = DEFAULT_FARS,
    far_rule: str = "step",
    pairs: str | Path | None = None,
    templates: bool = False,
    folds: int | None = None,
    fold_thresholds: str = "scores",
    progress: Progress | None = None,
    **overrides: Any,
) -> VerifyResult:
    """Verification metrics of ``query`` × ``gallery`` (see :mod:`embeval.verification.roc`).

    Without ``pairs`` every (query, gallery) pair left by the protocol (``exclude_self``,
    ``exclude_same_camera``) is a trial, genuine when both labels are the same known label,
    counted in one streamed pass. ``pairs``: a CSV file of listed trials
    (:func:`embeval.verification.pairs.read_pairs`). ``templates``: pool items by their file's
    ``templates`` (and ``media``) tensors first; pairs then name template ids. ``folds``: the
    LFW protocol on the listed pairs (``accuracy``, ``accuracy_std``); ``fold_thresholds``: how
    each fold's threshold is picked, ``scores`` (every distinct score) or ``grid`` (insightface's
    grid, :func:`embeval.verification.pairs.fold_accuracy`). ``far_rule``: ``step``
    or ``nearest`` (insightface; needs every score: listed pairs, or up to
    :data:`NEAREST_LIMIT` trials). ``options`` / ``overrides``: :class:`EvalOptions` fields.
    """
    t0 = time.perf_counter()
    o = EvalOptions.build(options, **overrides)
    fars = check_fars(fars)
    _check(o, far_rule, pairs, folds)
    if fold_thresholds not in P.FOLD_THRESHOLDS:
        raise OptionError(f"fold_thresholds: unknown rule {fold_thresholds!r} "
                          f"({', '.join(P.FOLD_THRESHOLDS)})", param="fold_thresholds")
    if templates:
        query, gallery, q_ids, g_ids = _pool(query, gallery)
    fold_result = None
    scores = None
    trials = None
    if pairs is not None:
        spaces = ((P.TemplateIds(q_ids, query.name), P.TemplateIds(g_ids, gallery.name))
                  if templates else (query.n, gallery.n))
        listed = P.read_pairs(pairs, *spaces)
        s = P.pair_scores(query, gallery, listed.query, listed.gallery, o.metric, memory=o.memory)
        genuine = P.trial_labels(listed, query.labels, gallery.labels)
        scores = (s[genuine], s[~genuine])
        trials = (s, genuine, query.labels[listed.query])
        stats = VerifyStats.from_scores(*scores, o.metric)
        if folds is not None:
            fold_result = P.fold_accuracy(s, genuine, folds, thresholds=fold_thresholds,
                                          metric=o.metric)
    else:
        stats = verification_stats(query, gallery, o, progress=progress)
        if far_rule == "nearest":
            scores = _all_scores(query, gallery, o.metric,
                                 Protocol(o.exclude_same_camera, o.exclude_self), o.memory)
    result = summarize_verification(stats, o, fars=fars, far_rule=far_rule, scores=scores,
                                    folds=fold_result, fold_thresholds=fold_thresholds,
                                    pairs=pairs, templates=templates,
                                    n_query=query.n, n_gallery=gallery.n, t0=t0)
    result.listed = trials
    return result


def verification_stats(query: EmbeddingSet, gallery: EmbeddingSet,
                       options: EvalOptions | None = None, *, templates: bool = False,
                       gallery_range: tuple[int, int] | None = None,
                       progress: Progress | None = None, **overrides: Any) -> VerifyStats:
    """The trial counts of every pair (``templates``: of the pooled templates); of gallery items
    ``gallery_range`` only for a shard (shards' statistics merge with :meth:`VerifyStats.merge`)."""
    o = EvalOptions.build(options, **overrides)
    _check(o, "step", None, None)
    if templates:
        query, gallery, _, _ = _pool(query, gallery)
    return trial_stats(query, gallery, metric=o.metric,
                       protocol=Protocol(o.exclude_same_camera, o.exclude_self), device=o.device,
                       precision=o.precision, memory=o.memory, block_size=o.block_size,
                       backend=o.backend, gallery_range=gallery_range, progress=progress)


def summarize_verification(stats: VerifyStats, options: EvalOptions, *,
                           fars: Sequence[float] = DEFAULT_FARS, far_rule: str = "step",
                           scores: tuple[torch.Tensor, torch.Tensor] | None = None,
                           folds: P.FoldAccuracy | None = None, fold_thresholds: str = "scores",
                           pairs: str | Path | None = None,
                           templates: bool = False, n_query: int | None = None,
                           n_gallery: int | None = None, t0: float | None = None) -> VerifyResult:
    """The :class:`VerifyResult` of (possibly merged) trial statistics."""
    metrics = verification_metrics(stats, fars, far_rule=far_rule, scores=scores)
    if folds is not None:
        metrics["accuracy"] = folds.mean
        metrics["accuracy_std"] = folds.std
    opts: dict[str, object] = {**options.result_options(), "far_rule": far_rule,
                               "templates": templates,
                               "pairs": str(pairs) if pairs is not None else None,
                               "folds": len(folds.accuracies) if folds is not None else None,
                               "fold_thresholds": fold_thresholds if folds is not None else None}
    opts.pop("aggregate")
    opts.pop("no_positive")
    return VerifyResult(metrics, stats, stats.n_query if n_query is None else n_query,
                        stats.n_gallery if n_gallery is None else n_gallery, opts, folds,
                        time.perf_counter() - t0 if t0 is not None else 0.0)


def _check(o: EvalOptions, far_rule: str, pairs: str | Path | None, folds: int | None) -> None:
    if far_rule not in FAR_RULES:
        raise OptionError(f"far_rule: unknown rule {far_rule!r} ({', '.join(FAR_RULES)})",
                          param="far_rule")
    if o.aggregate != "none":
        raise OptionError("aggregate: verification compares items (or templates), not class "
                          "means", param="aggregate")
    if folds is not None and pairs is None:
        raise OptionError("folds: the LFW protocol splits listed trials: give pairs too",
                          param=("folds", "pairs"))
    if pairs is not None and (o.exclude_self or o.exclude_same_camera):
        raise OptionError("exclude_self / exclude_same_camera: listed pairs are the trials "
                          "as listed", param=("exclude_self", "exclude_same_camera"))


def _pool(query: EmbeddingSet,
          gallery: EmbeddingSet) -> tuple[EmbeddingSet, EmbeddingSet, torch.Tensor, torch.Tensor]:
    """Both sets pooled into templates (one set pooled once when it is both)."""
    pooled, q_ids = P.pool_templates(query)
    if gallery is query:
        return pooled, pooled, q_ids, q_ids
    g_pooled, g_ids = P.pool_templates(gallery)
    return pooled, g_pooled, q_ids, g_ids


def _all_scores(query: EmbeddingSet, gallery: EmbeddingSet, metric: str, protocol: Protocol,
                memory: int | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(genuine, impostor) scores of every trial: for the ``nearest`` rule on small runs."""
    n = query.n * gallery.n
    if n > NEAREST_LIMIT:
        raise OptionError(f"far_rule nearest: insightface's rule reads every trial's score, and "
                          f"this run has {n:,} trials (more than {NEAREST_LIMIT:,}); use the "
                          "default rule (exact at any scale) or listed pairs", param="far_rule")
    qi = torch.arange(query.n).repeat_interleave(gallery.n)
    gi = torch.arange(gallery.n).repeat(query.n)
    s = P.pair_scores(query, gallery, qi, gi, metric, memory=memory)
    keep = torch.ones(n, dtype=torch.bool)
    if protocol.exclude_self:
        keep &= qi != gi
    pq, pg = positive_pairs(query.labels, gallery.labels, query.cameras, gallery.cameras, protocol)
    genuine = torch.zeros(n, dtype=torch.bool)
    genuine[pq * gallery.n + pg] = True
    own = (query.labels[qi] == gallery.labels[gi]) & (query.labels[qi] >= 0)
    keep &= genuine | ~own  # own-label pairs dropped by the protocol are no trial
    return s[genuine & keep], s[~genuine & keep]
