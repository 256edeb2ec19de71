"""Synthetic embedding sets and a bit-for-bit comparison of statistics, shared by the engine,
shard and torchrun tests."""

from __future__ import annotations

import torch

import embeval
from embeval.engine import RankStats

FIELDS = ("pos_offsets", "pos_scores", "neg_hist", "n_neg", "max_neg", "topk_scores", "topk_indices")


def assert_same(a: RankStats, b: RankStats) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert torch.equal(x, y), name


def sets(nq: int = 300, ng: int = 2500, d: int = 24, classes: int = 30, seed: int = 0,
         integer: bool = False) -> tuple[embeval.EmbeddingSet, embeval.EmbeddingSet]:
    g = torch.Generator().manual_seed(seed)
    if integer:
        qe, ge = (torch.randint(-2, 3, (n, d), generator=g).float() for n in (nq, ng))
    else:
        centres = torch.randn(classes, d, generator=g)
        ql, gl = (torch.randint(-1, classes, (n,), generator=g) for n in (nq, ng))
        qe = centres[ql.clamp_min(0)] + 1.5 * torch.randn(nq, d, generator=g)
        ge = centres[gl.clamp_min(0)] + 1.5 * torch.randn(ng, d, generator=g)
        return (embeval.EmbeddingSet(qe, ql, torch.randint(0, 3, (nq,), generator=g)),
                embeval.EmbeddingSet(ge, gl, torch.randint(0, 3, (ng,), generator=g)))
    ql, gl = (torch.randint(-1, classes, (n,), generator=g) for n in (nq, ng))
    return embeval.EmbeddingSet(qe, ql), embeval.EmbeddingSet(ge, gl)
