"""Open-set 1:N identification (DESIGN.md section 7): TPIR@FPIR at rank k, from the statistics
of one ranking pass (no second pass over the gallery).

A query is *mated* when it has at least one positive in the gallery after the protocol's
exclusions (``RankStats.n_pos > 0``), else *non-mated* (an unknown label, < 0, never has one).
A non-mated query's top-1 score is its hardest negative (``RankStats.max_neg``: every item it
sees is a negative). With N non-mated queries and f in (0, 1):

* FPIR(t) = #{non-mated: top-1 >= t} / N;
* m = the largest integer with m / N <= f (float division, as a dense ``fpir <= f``),
  s = the (m+1)-th highest non-mated top-1 score;
* TPIR@FPIR=f at rank k = #{mated: first hit within rank k and best positive > s} / #mated,
  the largest such fraction over thresholds t with FPIR(t) <= f (first hit: the pessimistic
  rank :func:`embeval.metrics.first_hit_rank`); omitted where m = 0 (fewer than 1/f non-mated);
* threshold@FPIR=f = the smallest decision score (non-mated top-1 or mated best positive)
  strictly above s: accepting scores >= it reaches the TPIR above (None when no score is).

``rule="insightface"`` takes s = the max(int(N·f), 1)-th highest non-mated top-1 score instead
(insightface's IJB 1:N evaluation): one order statistic higher whenever int(N·f) >= 1, and no f
is omitted.

>>> import torch, embeval
>>> q = embeval.EmbeddingSet(torch.tensor([[2., 0.], [0., 2.], [1., 1.], [0., -1.]]),
...                          torch.tensor([0, 1, 5, -1]))  # labels 5 and -1: non-mated
>>> g = embeval.EmbeddingSet(torch.tensor([[1., 0.], [0., 1.]]), torch.tensor([0, 1]))
>>> r = identify(q, g, fpirs=[0.5], ks=[1], metric="inner", device="cpu")
>>> r.metrics["TPIR@FPIR=0.5"], r.metrics["threshold@FPIR=0.5"], r.n_mated, r.n_nonmated
(1.0, 1.0, 2, 2)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from embeval import metrics as M
from embeval.data.relevance import Relevance
from embeval.data.store import EmbeddingSet
from embeval.engine import RankStats
from embeval.engine.rank import Progress
from embeval.errors import OptionError
from embeval.evaluation import evaluation_stats
from embeval.options import EvalOptions

__all__ = [
    "summarize_identification", "FPIR_RULES", "DEFAULT_FPIRS", "IdentifyResult", "OpenSetScores",
    "open_set_scores", "check_fpirs", "omitted_fpirs", "accepted_nonmated", "identification_metrics",
    "identify",
]

FPIR_RULES = ("embeval", "insightface")
DEFAULT_FPIRS = (1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class OpenSetScores:
    """What open-set identification reads of :class:`RankStats`.

    ``mated`` [Q] bool; ``best_pos`` [M] float32 and ``first_rank`` [M] float64 of the mated
    queries (in query order); ``nonmated_top1`` [N] float32, descending (-inf: the query saw
    no gallery item).
    """

    mated: torch.Tensor
    best_pos: torch.Tensor
    first_rank: torch.Tensor
    nonmated_top1: torch.Tensor


def open_set_scores(stats: RankStats) -> OpenSetScores:
    """Split the queries of ``stats`` into mated and non-mated, with their decision scores."""
    mated = stats.n_pos > 0
    best_pos = stats.pos_scores[stats.pos_offsets[1:][mated] - 1]  # positives ascending
    first_rank = M.first_hit_rank(stats)[mated]
    top1 = torch.sort(stats.max_neg[~mated], descending=True).values
    return OpenSetScores(mated, best_pos, first_rank, top1)


def check_fpirs(fpirs: Sequence[float], what: str = "fpirs") -> list[float]:
    """Validate FPIR targets: each in the open interval (0, 1); errors name ``what``."""
    values = [float(f) for f in fpirs]
    if not values:
        raise OptionError(f"{what}: give at least one FPIR", param=what)
    for f in values:
        if not 0.0 < f < 1.0:  # also rejects nan
            raise OptionError(f"{what} {f:g}: must be between 0 and 1 (exclusive)", param=what)
    return values


def accepted_nonmated(f: float, n: int) -> int:
    """The largest m in [0, n] with ``m / n <= f`` (float division, as a dense ``fpir <= f``)."""
    m = min(max(math.floor(f * n), 0), n)
    while m < n and (m + 1) / n <= f:
        m += 1
    while m > 0 and m / n > f:
        m -= 1
    return m


def _cut_index(f: float, n: int, rule: str) -> int | None:
    """0-based index into the descending non-mated scores of s (accept > s); None: omit f."""
    if n == 0:
        return None
    if rule == "insightface":
        return max(int(n * f), 1) - 1
    m = accepted_nonmated(f, n)
    return m if m > 0 else None


def omitted_fpirs(fpirs: Sequence[float], n_nonmated: int, rule: str = "embeval") -> dict[str, str]:
    """``{"TPIR@FPIR=f": why}`` for each FPIR target that has no threshold: with N non-mated
    queries, the "embeval" rule needs one accepted non-mated query (1 / N <= f, N >= 1/f)."""
    out = {}
    for f in check_fpirs(fpirs):
        if _cut_index(f, n_nonmated, rule) is not None:
            continue
        if n_nonmated == 0:
            why = "no non-mated queries"
        else:
            need = next(n for n in range(max(math.floor(1 / f) - 1, 1), 2**62)
                        if accepted_nonmated(f, n) > 0)
            why = f"too few non-mated queries for FPIR {f:g}: {n_nonmated}, it needs at least {need}"
        out[f"TPIR@FPIR={f:g}"] = why
    return out


def identification_metrics(stats: RankStats, *, fpirs: Sequence[float] = DEFAULT_FPIRS,
                           ks: Sequence[int] = (1,), rule: str = "embeval") -> dict[str, Any]:
    """TPIR@FPIR (ranks 1 and ``ks``), thresholds, closed-set rank-k and counts (module doc).

    Keys, per FPIR f (``{f:g}``) that is not omitted: ``TPIR@FPIR=f`` (rank 1),
    ``TPIR@FPIR=f,rank{k}`` for each k > 1, ``threshold@FPIR=f`` (a score, None when no decision
    score exceeds s); then ``rank{k}`` (closed-set CMC over mated queries, rank 1 included),
    ``n_mated``, ``n_nonmated``. Fractions in [0, 1] (nan without mated queries).
    """
    if rule not in FPIR_RULES:
        raise OptionError(f"fpir_rule: unknown rule {rule!r} ({', '.join(FPIR_RULES)})",
                          param="fpir_rule")
    fpirs = check_fpirs(fpirs)
    ks = sorted({1, *M.check_ks(ks, stats.n_gallery)})
    o = open_set_scores(stats)
    n_mated, n_non = len(o.best_pos), len(o.nonmated_top1)
    decisions = torch.cat([o.nonmated_top1, o.best_pos])
    out: dict[str, Any] = {}
    for f in fpirs:
        i = _cut_index(f, n_non, rule)
        if i is None:
            continue
        s = o.nonmated_top1[i]
        above = o.best_pos > s
        for k in ks:
            hits = int((above & (o.first_rank <= k)).sum())
            out[f"TPIR@FPIR={f:g}" + (f",rank{k}" if k > 1 else "")] = (
                hits / n_mated if n_mated else float("nan"))
        higher = decisions[decisions > s]
        out[f"threshold@FPIR={f:g}"] = float(higher.min()) if len(higher) else None
    for k in ks:
        out[f"rank{k}"] = int((o.first_rank <= k).sum()) / n_mated if n_mated else float("nan")
    out["n_mated"], out["n_nonmated"] = n_mated, n_non
    return out


@dataclass
class IdentifyResult:
    """Open-set identification metrics (:func:`identification_metrics`) and the raw stats."""

    metrics: dict[str, Any]
    n_query: int
    n_gallery: int
    n_mated: int
    n_nonmated: int
    stats: RankStats
    options: dict[str, object] = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: FPIR targets left out of ``metrics`` (:func:`omitted_fpirs`): ``{"TPIR@FPIR=f": why}``
    omitted: dict[str, str] = field(default_factory=dict)

    @property
    def n_valid(self) -> int:
        """Queries with positives (the mated ones), as :class:`~embeval.EvalResult` names them."""
        return self.n_mated

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items()
                          if isinstance(v, float) and k.startswith("TPIR"))
        return (f"IdentifyResult({self.n_query} queries ({self.n_mated} mated, {self.n_nonmated} "
                f"non-mated) × {self.n_gallery} gallery items: {shown})")


def identify(query: EmbeddingSet, gallery: EmbeddingSet, options: EvalOptions | None = None, *,
             fpirs: Sequence[float] = DEFAULT_FPIRS, ks: Sequence[int] | None = None,
             fpir_rule: str = "embeval", relevance: Relevance | None = None,
             progress: Progress | None = None, **overrides: Any) -> IdentifyResult:
    """Open-set 1:N identification of ``query`` against ``gallery`` (one ranking pass).

    ``options`` / ``overrides``: as for :func:`embeval.evaluate` (``no_positive`` does not
    apply: rank-k is over mated queries). ``ks``: ranks for TPIR and CMC (default 1 5 10,
    capped at the gallery size; rank 1 always). ``fpir_rule``: ``"embeval"`` or
    ``"insightface"`` (module doc). ``relevance``: per-query positives and junk instead of labels
    (:class:`~embeval.data.relevance.Relevance`; a query without positives is non-mated).
    """
    t0 = time.perf_counter()
    opts = EvalOptions.build(options, **overrides)
    check_fpirs(fpirs)
    if fpir_rule not in FPIR_RULES:
        raise OptionError(f"fpir_rule: unknown rule {fpir_rule!r} ({', '.join(FPIR_RULES)})",
                          param="fpir_rule")
    if ks is None:
        known = gallery.labels >= 0  # with aggregate="mean": one prototype per known label
        n = gallery.n if opts.aggregate == "none" else (
            len(torch.unique(gallery.labels[known])) + int((~known).sum()))
        ks = [k for k in (1, 5, 10) if k <= n] or [1]
    part = evaluation_stats(query, gallery, opts, ks=ks, relevance=relevance, progress=progress)
    return summarize_identification(part.stats, part.options, fpirs=fpirs, ks=part.ks,
                                    fpir_rule=fpir_rule, t0=t0)


def summarize_identification(stats: RankStats, options: dict[str, object], *,
                             fpirs: Sequence[float] = DEFAULT_FPIRS, ks: Sequence[int] = (1,),
                             fpir_rule: str = "embeval", t0: float | None = None) -> IdentifyResult:
    """The :class:`IdentifyResult` of (possibly merged) ranking statistics; ``options``: the
    evaluation's result options (``EvalResult.options``)."""
    values = identification_metrics(stats, fpirs=fpirs, ks=ks, rule=fpir_rule)
    options_out = {k: v for k, v in options.items() if k != "no_positive"}
    options_out["fpir_rule"] = fpir_rule
    return IdentifyResult(values, stats.n_query, stats.n_gallery, values["n_mated"],
                          values["n_nonmated"], stats, options_out,
                          time.perf_counter() - t0 if t0 is not None else 0.0,
                          omitted_fpirs(fpirs, values["n_nonmated"], fpir_rule))
