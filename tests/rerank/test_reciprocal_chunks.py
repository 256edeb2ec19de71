"""The k-reciprocal encoding V built in chunks of items (bounded memory) equals it built at once,
bit for bit, for several k1 (ties included: duplicated rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeval.engine.similarity import aux, row_norms
from embeval.rerank.encoding import distance_sq, reciprocal_v
from embeval.rerank.neighbours import neighbour_graph


@pytest.mark.parametrize("k1", [1, 4, 20, 79, 160])
def test_chunked_v_equals_whole(k1: int) -> None:
    g = torch.Generator().manual_seed(k1)
    x = torch.randn(80, 6, generator=g)
    x[40:50] = x[:10]  # exact ties
    xa = aux(x, "euclid", row_norms(x))
    graph = neighbour_graph(x, "euclid", min(k1 + 1, 80), memory=1 << 20)
    m = distance_sq(graph.lowest, "euclid")
    whole = reciprocal_v(graph, x, xa, "euclid", k1, m, limit=float("inf"))
    parts = reciprocal_v(graph, x, xa, "euclid", k1, m, limit=1.0)  # one item per chunk
    for a, b in zip((whole.indptr, whole.indices, whole.values),
                    (parts.indptr, parts.indices, parts.values)):
        assert np.array_equal(a, b)
