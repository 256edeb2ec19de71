"""The neighbour graph of k-reciprocal re-ranking (embeval.rerank.neighbours) against a brute-force
oracle: every pair's canonical score, sorted (score descending, the lower index first)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeval.engine.plan import compiled_available
from embeval.engine.similarity import aux, canonical_dot, transform
from embeval.rerank.neighbours import neighbour_graph, pair_scores

needs_numba = pytest.mark.skipif(not compiled_available(), reason="numba not installed")


def _all_scores(x: torch.Tensor, metric: str) -> torch.Tensor:
    """[N, N] canonical float32 scores, one pair at a time in torch."""
    n = len(x)
    i = torch.arange(n).repeat_interleave(n)
    j = torch.arange(n).repeat(n)
    xa = aux(x, metric)
    return transform(canonical_dot(x[i], x[j]), xa[i], xa[j], metric).view(n, n)


def _oracle(x: torch.Tensor, metric: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = _all_scores(x, metric).numpy()
    n = len(x)
    # lexsort: last key primary: score descending, then index ascending
    order = np.stack([np.lexsort((np.arange(n), -s[r])) for r in range(n)])[:, :k]
    return order, np.take_along_axis(s, order, 1), s.min(1)


def _points(seed: int, n: int, dim: int, kind: str) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if kind == "grid":  # small integers: many exactly tied distances, duplicated rows
        x = rng.integers(-2, 3, (n, dim)).astype(np.float32)
    elif kind == "near":  # unit rows in tight clusters: many near-ties at the k-th neighbour
        c = rng.standard_normal((4, dim))
        x = c[rng.integers(0, 4, n)] + 1e-6 * rng.standard_normal((n, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    else:
        x = rng.standard_normal((n, dim))
    return torch.from_numpy(x.astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["euclid", "sq_euclid", "cosine"])
@pytest.mark.parametrize("kind", ["grid", "near", "normal"])
def test_graph_equals_brute_force(metric: str, kind: str) -> None:
    x = _points(3, 90, 37 if kind == "normal" else 24, kind)
    if kind == "grid" and metric == "cosine":
        x[x.abs().sum(1) == 0] = 1.0  # no zero rows for cosine
    k = 7
    index, score, lowest = _oracle(x, metric, k)
    for memory in (1 << 30, 24 * 90 * 5):  # one block; 5 rows a block
        g = neighbour_graph(x, metric, k, memory=memory)
        assert g.index.tolist() == index.tolist()
        assert np.array_equal(g.score.numpy(), score)
        assert np.array_equal(g.lowest.numpy(), lowest)


@needs_numba
@pytest.mark.parametrize("metric", ["euclid", "sq_euclid", "cosine"])
def test_compiled_pair_scores_are_the_torch_bits(metric: str) -> None:
    x = _points(5, 300, 37, "normal")
    rng = np.random.default_rng(0)
    i = torch.from_numpy(rng.integers(0, 300, 20_000))
    j = torch.from_numpy(rng.integers(0, 300, 20_000))
    xa = aux(x, metric)
    want = pair_scores(x, xa, i, j, metric)
    assert torch.equal(pair_scores(x, xa, i, j, metric, compiled=True), want)
    g = neighbour_graph(x, metric, 9, memory=1 << 20, compiled=True)
    h = neighbour_graph(x, metric, 9, memory=1 << 20)
    assert torch.equal(g.index, h.index) and torch.equal(g.score, h.score)
