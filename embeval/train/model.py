"""The model and optimiser of a training run: backbone + neck + classifier, SGD/AdamW, LR schedule."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from embeval.errors import OptionError
from embeval.extract.architectures import BACKBONES, NECK_BACKBONE, NeckNet, _call_factory, _cut
from embeval.train.config import TrainConfig
from embeval.train.losses import make_classifier

__all__ = ["TrainModel", "build_model", "make_optimizer", "lr_factor"]


class TrainModel(nn.Module):
    """``embedder`` (backbone + neck, what checkpoints hold) and ``classifier``."""

    def __init__(self, embedder: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.embedder, self.classifier = embedder, classifier

    def forward(self, x: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeddings [B, D], logits [B, C]); ``labels`` [B] enable the cosine margin."""
        emb = self.embedder(x)
        return emb, self.classifier(emb, labels)


def build_model(config: TrainConfig, num_classes: int) -> tuple[TrainModel, dict[str, Any]]:
    """A fresh model from the seed, and the architecture that rebuilds its embedder."""
    c = config
    torch.manual_seed(c.seed)
    if c.backbone in BACKBONES:
        arch: dict[str, Any] = {"backbone": c.backbone, "embedding_dim": c.embedding_dim,
                                "widths": list(c.widths)}
        embedder = BACKBONES[c.backbone](embedding_dim=c.embedding_dim, widths=tuple(c.widths))
    elif ":" in c.backbone:
        base = _call_factory(c.backbone)
        probe = _cut(copy.deepcopy(base), c.backbone, layer=None) if c.backbone_head == "identity" \
            else copy.deepcopy(base)
        h, w = c.crop or c.size
        try:
            with torch.no_grad():
                out = probe.eval()(torch.zeros(2, 3, h, w))
        except Exception as e:  # noqa: BLE001 - the user's model refused the input
            raise OptionError(f"backbone {c.backbone}: forward of a [2, 3, {h}, {w}] batch failed "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                              param="backbone") from None
        out = out[0] if isinstance(out, (tuple, list)) else out
        arch = {"backbone": NECK_BACKBONE, "base": c.backbone, "head": c.backbone_head,
                "feature_dim": int(torch.flatten(out, 1).shape[1]), "embedding_dim": c.embedding_dim}
        embedder = NeckNet(**{k: v for k, v in arch.items() if k != "backbone"}, module=base)
    else:
        raise OptionError(f"backbone: {c.backbone!r} is neither a built-in backbone "
                          f"({', '.join(BACKBONES)}) nor package.module:callable", param="backbone")
    head = make_classifier(c.classifier, c.embedding_dim, num_classes, scale=c.scale, margin=c.margin)
    return TrainModel(embedder, head), arch


def lr_factor(c: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier of each optimizer step: linear warm-up, then cosine / step / constant."""
    warm = round(c.warmup_epochs * steps_per_epoch)
    total = c.epochs * steps_per_epoch

    def factor(step: int) -> float:  # LR multiplier for optimizer step `step` (0-based)
        if step < warm:
            return (step + 1) / warm
        if c.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if c.schedule == "step":
            return c.gamma ** ((step // steps_per_epoch) // c.step_size)
        return 1.0

    return factor  # a plain function: LambdaLR does not store it, resume rebuilds it


def make_optimizer(c: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW; weight decay on weights only."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN, biases: no weight decay
    groups = [{"params": decay, "weight_decay": c.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if c.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=c.lr)
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0)
