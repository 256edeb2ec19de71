"""The small ROC cases of scikit-learn's documentation and test suite, as literal numbers.

Genuine trials are scikit-learn's positive class (label 1), impostors the negative one.
embeval's ROC points are those of ``roc_curve(..., drop_intermediate=False)``; AUC is
``roc_auc_score``; thresholds of the first point are +inf, and the last point, where
impostors score below every genuine trial, is reached at -inf (scikit-learn: the lowest score).
"""

from __future__ import annotations

import math

import pytest
import torch

from embeval.engine.trials import VerifyStats
from embeval.verification.roc import curve, verification_metrics


def stats(scores: list[float], labels: list[int]) -> VerifyStats:
    s = torch.tensor(scores, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.bool)
    return VerifyStats.from_scores(s[y], s[~y])


# (scores, labels, fpr, tpr, auc): roc_curve's docstring example and its toy-data tests
CASES = [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], [0, 0, 0.5, 0.5, 1], [0, 0.5, 0.5, 1, 1], 0.75),
    ([0, 1], [0, 1], [0, 0, 1], [0, 1, 1], 1.0),
    ([1, 0], [0, 1], [0, 1, 1], [0, 0, 1], 0.0),
    ([1, 1], [1, 0], [0, 1], [0, 1], 0.5),
    ([1, 0], [1, 0], [0, 0, 1], [0, 1, 1], 1.0),
    ([0.5, 0.5], [1, 0], [0, 1], [0, 1], 0.5),
]


@pytest.mark.parametrize(("scores", "labels", "fpr", "tpr", "auc"), CASES)
def test_scikit_learn_examples(scores: list[float], labels: list[int], fpr: list[float],
                               tpr: list[float], auc: float) -> None:
    s = stats(scores, labels)
    c = curve(s)
    assert c.fpr.tolist() == fpr and c.tpr.tolist() == tpr
    assert math.isinf(float(c.threshold[0])) and float(c.threshold[0]) > 0
    assert verification_metrics(s, [0.5])["AUC"] == auc


def test_docstring_example_thresholds_and_operating_points() -> None:
    """roc_curve's example: thresholds [inf, 0.8, 0.4, 0.35, 0.1]; embeval marks the point
    reached by "score > 0.35" with the next float32 above 0.35 (the run of impostor 0.4)."""
    s = stats([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    thr = curve(s).threshold.tolist()
    f32 = [float(torch.tensor(x, dtype=torch.float32)) for x in (0.8, 0.35, 0.1)]
    assert thr[1] == f32[0] and thr[3] == f32[1]
    assert thr[2] == float(torch.nextafter(torch.tensor(0.35), torch.tensor(1.0)))
    m = verification_metrics(s, [0.5])
    # FAR <= 0.5 allows the impostor 0.4: both genuine scores are accepted at threshold 0.35
    assert m["TAR@FAR=0.5"] == 1.0 and m["threshold@FAR=0.5"] == f32[1]
    # FNR = FPR = 0.5 on the segment ending at the impostor 0.4; the highest genuine score with
    # FNR <= 0.5 is 0.8
    assert m["EER"] == 0.5 and m["EER_threshold"] == f32[0]
