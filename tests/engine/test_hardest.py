"""embeval.engine.hardest: the item behind each query's hardest negative, against a float64 brute force."""
from __future__ import annotations

import pytest
import torch

import embeval
from embeval.engine import Protocol, rank_stats
from embeval.engine.hardest import hardest_negatives


def brute_force(q: torch.Tensor, g: torch.Tensor, ql: torch.Tensor, gl: torch.Tensor, metric: str,
                exclude_self: bool) -> list[int]:
    """float64 scores, argmax over the negatives (lowest index first), -1 without negatives."""
    q, g = q.double(), g.double()
    if metric == "cosine":
        s = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    elif metric == "inner":
        s = q @ g.T
    else:
        d2 = torch.cdist(q, g) ** 2
        s = -d2 if metric == "sq_euclid" else -d2.sqrt()
    neg = ~((ql[:, None] >= 0) & (ql[:, None] == gl[None, :]))
    if exclude_self:
        neg &= ~torch.eye(len(q), len(g), dtype=torch.bool)
    s = s.masked_fill(~neg, float("-inf"))
    best = s.argmax(1)
    return torch.where(neg.any(1), best, -1).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["cosine", "inner", "euclid", "sq_euclid"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("rows", [1, 37, 4096])
def test_matches_float64_brute_force(metric, exclude_self, rows):
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(150, 12, generator=gen)
    gl = torch.randint(-1, 6, (150,), generator=gen)
    q, ql = (g, gl) if exclude_self else (torch.randn(40, 12, generator=gen),
                                          torch.randint(-1, 6, (40,), generator=gen))
    qs, gs = embeval.EmbeddingSet(q, ql), embeval.EmbeddingSet(g, gl)
    protocol = Protocol(exclude_self=exclude_self)
    stats = rank_stats(qs, gs, metric=metric, protocol=protocol, device="cpu")
    got = hardest_negatives(qs, gs, stats.max_neg, metric=metric, protocol=protocol, rows=rows,
                            query_rows=13)
    assert got.tolist() == brute_force(q, g, ql, gl, metric, exclude_self)


def test_ties_name_the_lowest_index_and_no_negative_is_minus_one():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    gl = torch.tensor([0, 1, 2, 1, 0])
    q = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.5, 0.5]])
    ql = torch.tensor([1, 0, 3])
    qs, gs = embeval.EmbeddingSet(q, ql), embeval.EmbeddingSet(g, gl)
    stats = rank_stats(qs, gs, metric="cosine", device="cpu")
    # query 0: items 1, 3 are positives, item 2 ties them as the hardest negative; query 2: its
    # hardest negatives 0..4 all tie at cos 45 degrees, the lowest index wins
    assert hardest_negatives(qs, gs, stats.max_neg, metric="cosine", rows=2).tolist() == [2, 1, 0]
    alone = embeval.EmbeddingSet(torch.ones(2, 2), torch.tensor([4, 4]))
    s = rank_stats(alone, alone, device="cpu")
    assert hardest_negatives(alone, alone, s.max_neg, metric="cosine").tolist() == [-1, -1]
