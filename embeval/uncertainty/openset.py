"""TPIR@FPIR under query weights: the open-set metrics a bootstrap or a paired test recomputes.

TPIR@FPIR is not a mean of per-query values: its threshold is an order statistic of the
non-mated queries' top-1 scores. Under integer weights w (a resample draws query q w_q times)
the definitions of :mod:`embeval.verification.identify` apply to the weighted multiset: N =
Σ w over non-mated queries, m = the largest integer with m / N <= f, s = the (m+1)-th highest
non-mated score counting multiplicity, TPIR = Σ w over mated queries with first hit within k and
best positive > s, divided by Σ w over mated queries. All weights 1 give the reported values.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from embeval import metrics as M
from embeval.engine import RankStats

__all__ = ["OpenSetRecords", "open_set_records", "OpenSetStatistics", "tpir_key"]


class OpenSetRecords(NamedTuple):
    """Per query: ``mated`` [Q] bool, ``decision`` [Q] float32 (best positive score when mated,
    top-1 score when not), ``first_rank`` [Q] float64 (inf when not mated)."""

    mated: torch.Tensor
    decision: torch.Tensor
    first_rank: torch.Tensor


def open_set_records(stats: RankStats) -> OpenSetRecords:
    """The per-query records of ``stats`` that identification reads."""
    mated = stats.n_pos > 0
    top = stats.pos_offsets[1:].clamp(1, max(len(stats.pos_scores), 1)) - 1
    best = stats.pos_scores[top] if len(stats.pos_scores) else torch.zeros(stats.n_query)
    decision = torch.where(mated, best, stats.max_neg).float()
    return OpenSetRecords(mated, decision, M.first_hit_rank(stats))


def tpir_key(key: str) -> tuple[str, float, int]:
    """``"TPIR@FPIR=0.01,rank5"`` → ``(key, 0.01, 5)`` (rank 1 when not named)."""
    rate, _, rank = key.removeprefix("TPIR@FPIR=").partition(",rank")
    return key, float(rate), int(rank or 1)


def _accepted(f: float, n: np.ndarray) -> np.ndarray:
    """Elementwise the largest m in [0, n] with m / n <= f (float division)."""
    m = np.clip(np.floor(f * n), 0, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(2):
            m = np.where((m < n) & ((m + 1) / n <= f), m + 1, m)
            m = np.where((m > 0) & (m / n > f), m - 1, m)
    return m


class OpenSetStatistics:
    """TPIR@FPIR=f at rank k (``keys``: ``(metric key, f, k)``) of weighted records, rule ``rule``
    (``"embeval"`` or ``"insightface"``): ``__call__(weights [b, R]) -> [b, len(keys)]``."""

    def __init__(self, records: OpenSetRecords, keys: list[tuple[str, float, int]],
                 rule: str = "embeval") -> None:
        mated = records.mated.numpy().astype(bool)
        decision = records.decision.numpy().astype(np.float64)
        self.keys, self.rule = keys, rule
        non = np.flatnonzero(~mated)
        self.non_order = non[np.argsort(-decision[non], kind="stable")]  # scores descending
        self.non_scores = decision[self.non_order]
        mat = np.flatnonzero(mated)
        self.mat_order = mat[np.argsort(decision[mat], kind="stable")]  # scores ascending
        self.mat_scores = decision[self.mat_order]
        first = records.first_rank.numpy()[self.mat_order]
        self.hit = {k: (first <= k).astype(np.float64) for _, _, k in keys}

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        b = weights.shape[0]
        out = np.full((b, len(self.keys)), np.nan)
        wn = weights[:, self.non_order]
        wm = weights[:, self.mat_order]
        cum_n = np.cumsum(wn, axis=1)
        total_n = cum_n[:, -1] if cum_n.shape[1] else np.zeros(b)
        total_m = wm.sum(axis=1)
        # above[k][:, j] = Σ of the weighted hits of mated records j.. (ascending scores)
        above = {k: np.cumsum((wm * h)[:, ::-1], axis=1)[:, ::-1] for k, h in self.hit.items()}
        for col, (_, f, k) in enumerate(self.keys):
            if self.rule == "insightface":
                cut = np.maximum(np.floor(total_n * f), 1) - 1
                ok = total_n > 0
            else:
                cut = _accepted(f, total_n)
                ok = cut > 0
            # s = the (cut+1)-th highest non-mated score: first position whose cumulative > cut
            pos = np.array([np.searchsorted(row, c, side="right") for row, c in zip(cum_n, cut)],
                           dtype=np.int64)
            s = self.non_scores[np.minimum(pos, max(len(self.non_scores) - 1, 0))] \
                if len(self.non_scores) else np.zeros(b)
            first_above = np.searchsorted(self.mat_scores, s, side="right")  # mated with > s
            hits = np.zeros(b)
            inside = first_above < len(self.mat_scores)
            hits[inside] = above[k][np.flatnonzero(inside), first_above[inside]]
            with np.errstate(invalid="ignore", divide="ignore"):
                value = hits / total_m
            out[:, col] = np.where(ok & (total_m > 0), value, np.nan)
        return out
