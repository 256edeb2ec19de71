"""Verification metrics of listed trials under trial weights: what a bootstrap or a paired test
recomputes for ``verify --pairs``.

With every trial's score at hand (listed pairs: LFW, CFP, IJB), a resample weighs trial t by
w_t (how often its unit was drawn) and the definitions of :mod:`embeval.verification.roc` apply
to the weighted multiset: TAR@FAR=f (the ``step`` rule: m = the largest integer with m / N <= f,
N = Σ w over impostors, TAR = Σ w over genuine trials scoring above the (m+1)-th highest
impostor, over Σ w over genuine trials; omitted when m = 0), EER (where FNR = FPR on the ROC
polyline through the distinct scores) and AUC (P(genuine > impostor) + ½ P(tie)). All weights 1
give the reported values (EER to float rounding: the point estimate is computed with exact
rationals).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .openset import OpenSetRecords, OpenSetStatistics

__all__ = ["ListedTrials", "VerificationStatistics", "verification_keys"]


class ListedTrials(NamedTuple):
    """Per listed trial: ``scores`` [T] float32, ``genuine`` [T] bool and ``labels`` [T] int64
    (the query side's label: the trial's unit under ``by="label"``)."""

    scores: torch.Tensor
    genuine: torch.Tensor
    labels: torch.Tensor


def verification_keys(metrics: dict, far_rule: str) -> list[str]:
    """The metrics of a listed-trials result that a resample recomputes: TAR@FAR (rule
    ``step`` only: the ``nearest`` reading is not resampled), EER and AUC."""
    keys = [k for k in metrics if k.startswith("TAR@FAR=")] if far_rule == "step" else []
    return keys + [k for k in ("EER", "AUC") if k in metrics]


class VerificationStatistics:
    """``keys`` (:func:`verification_keys`) of weighted trials: ``__call__(weights [b, T])``."""

    def __init__(self, trials: ListedTrials, keys: list[str]) -> None:
        self.keys = keys
        fars = [(k, float(k.split("=", 1)[1]), 1) for k in keys if k.startswith("TAR@FAR=")]
        ones = torch.ones(len(trials.scores), dtype=torch.float64)
        # TAR@FAR is TPIR@FPIR with genuine trials as mated and impostors as non-mated, rank 1
        self.tar = OpenSetStatistics(OpenSetRecords(trials.genuine, trials.scores, ones), fars) \
            if fars else None
        scores = trials.scores.double().numpy()
        self.order = np.argsort(-scores, kind="stable")  # descending
        s = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # distinct scores
        self.genuine = trials.genuine.numpy()[self.order].astype(np.float64)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        out = np.full((weights.shape[0], len(self.keys)), np.nan)
        col = 0
        if self.tar is not None:
            tar = self.tar(weights)
            out[:, :tar.shape[1]] = tar
            col = tar.shape[1]
        w = weights[:, self.order]
        gen = np.add.reduceat(w * self.genuine, self.starts, axis=1) if w.shape[1] else w
        imp = np.add.reduceat(w * (1 - self.genuine), self.starts, axis=1) if w.shape[1] else w
        n_gen, n_imp = gen.sum(1), imp.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            for key in self.keys[col:]:
                out[:, col] = _eer(gen, imp, n_gen, n_imp) if key == "EER" else \
                    _auc(gen, imp, n_gen, n_imp)
                col += 1
        return out


def _auc(gen: np.ndarray, imp: np.ndarray, n_gen: np.ndarray, n_imp: np.ndarray) -> np.ndarray:
    """Mann–Whitney over distinct scores (descending): impostors below a genuine group are those
    after it, ties count one half."""
    below = n_imp[:, None] - np.cumsum(imp, axis=1)
    wins = (gen * (below + 0.5 * imp)).sum(1)
    return np.where((n_gen > 0) & (n_imp > 0), wins / n_gen / n_imp, np.nan)


def _eer(gen: np.ndarray, imp: np.ndarray, n_gen: np.ndarray, n_imp: np.ndarray) -> np.ndarray:
    """FNR = FPR on the polyline from (0, 0) through the ROC points at each distinct score."""
    b = gen.shape[0]
    fpr = np.concatenate([np.zeros((b, 1)), np.cumsum(imp, 1) / n_imp[:, None]], 1)
    tpr = np.concatenate([np.zeros((b, 1)), np.cumsum(gen, 1) / n_gen[:, None]], 1)
    h = fpr + tpr  # reaches 1 (FPR = 1 - TPR) on the first segment whose end has h >= 1
    end = np.argmax(h >= 1 - 1e-12, axis=1).clip(min=1)
    rows = np.arange(b)
    fa, ta = fpr[rows, end - 1], tpr[rows, end - 1]
    fb, tb = fpr[rows, end], tpr[rows, end]
    alpha = (1 - fa - ta) / ((fb - fa) + (tb - ta))
    rate = fa + alpha * (fb - fa)
    return np.where((n_gen > 0) & (n_imp > 0), rate, np.nan)
