"""Training heads, losses and batch samplers (pure PyTorch, used by :mod:`embeval.train`).

>>> import torch
>>> emb, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
>>> float(batch_hard_triplet(emb, labels, margin=0.3)) >= 0
True
>>> [len(b) for b in pk_batches(labels, batch_size=4, instances=2, generator=torch.Generator())]
[4, 4]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CosineClassifier", "make_classifier", "batch_hard_triplet", "random_batches",
           "pk_batches"]


class CosineClassifier(nn.Module):
    """Normalised softmax: ``logits = scale * (cos(x, w_c) - margin * [c == y])``.

    ``forward(x [B, D], labels [B] | None) -> [B, C]``; the margin (CosFace) applies
    only when labels are given (training).
    """

    def __init__(self, in_features: int, num_classes: int, *, scale: float = 16.0,
                 margin: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.scale, self.margin = scale, margin

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T
        if labels is not None and self.margin:
            cos = cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.scale * cos


class LinearClassifier(nn.Linear):
    """Plain softmax classifier (no bias), same call signature as :class:`CosineClassifier`."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


def make_classifier(kind: str, in_features: int, num_classes: int, *, scale: float,
                    margin: float) -> nn.Module:
    """``softmax`` or ``cosine`` head over ``num_classes``."""
    if kind == "cosine":
        return CosineClassifier(in_features, num_classes, scale=scale, margin=margin)
    head = LinearClassifier(in_features, num_classes, bias=False)
    nn.init.normal_(head.weight, std=0.001)
    return head


def batch_hard_triplet(emb: torch.Tensor, labels: torch.Tensor, *, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances.

    ``emb``: [B, D] float; ``labels``: [B] int. For each anchor with at least one
    positive and one negative in the batch: ``relu(d(a, hardest p) - d(a, hardest n) +
    margin)``; the mean over those anchors (0 when there is none).
    """
    d = torch.cdist(emb, emb).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos = same & ~eye
    valid = pos.any(1) & (~same).any(1)
    if not bool(valid.any()):
        return emb.sum() * 0.0
    hardest_pos = d.masked_fill(~pos, float("-inf")).amax(1)
    hardest_neg = d.masked_fill(same, float("inf")).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def random_batches(n: int, *, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """A shuffled epoch in batches of ``batch_size`` (a trailing batch of 1 is dropped:
    BatchNorm cannot train on it)."""
    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[a:a + batch_size] for a in range(0, n, batch_size)]
    return [b for b in batches if len(b) > 1]


def pk_batches(labels: torch.Tensor, *, batch_size: int, instances: int,
               generator: torch.Generator) -> list[list[int]]:
    """A P x K identity-sampled epoch: batches of P = batch_size // K classes x K images.

    Every image of every class is used once per epoch in groups of K (a class's last
    group is topped up with random images of the same class); groups are shuffled and
    P of them make a batch. The number of batches depends on the labels only.
    """
    groups: list[list[int]] = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        idx: list[int] = members[torch.randperm(len(members), generator=generator)].tolist()
        short = -len(idx) % instances
        if short:
            extra = torch.randint(len(idx), (short,), generator=generator).tolist()
            idx += [idx[i] for i in extra]
        groups += [idx[a:a + instances] for a in range(0, len(idx), instances)]
    order = torch.randperm(len(groups), generator=generator).tolist()
    per_batch = max(1, batch_size // instances)
    batches = [sum((groups[g] for g in order[a:a + per_batch]), [])
               for a in range(0, len(order), per_batch)]
    return [b for b in batches if len(b) > 1]
