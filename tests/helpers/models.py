"""Tiny models for the extract tests, importable as ``helpers.models:<factory>``.

The CLI tests run ``embeval`` with ``tests/`` on PYTHONPATH, so ``MODEL`` can be
``helpers.models:tiny_net``. Factories initialise from a fixed seed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv(3->4) BN ReLU, global average pool, ``fc`` 4 -> 6 (a stand-in classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def tiny_net() -> TinyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyNet().eval()


def not_a_module() -> int:
    return 42


class SlowNet(TinyNet):
    """TinyNet that, when ``EMBEVAL_TEST_READY`` names a file, creates it at the 8th
    training forward pass and then sleeps 0.4 s per training step: a window in
    which a test sends a signal to a training run in the middle of an epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ready = os.environ.get("EMBEVAL_TEST_READY")
        if ready and self.training:
            self.calls += 1
            if self.calls == 8:
                Path(ready).touch()
            if self.calls >= 8:
                time.sleep(0.4)
        return super().forward(x)


def slow_net() -> SlowNet:
    return SlowNet()
