"""kNN's majority vote (:func:`embeval.metrics.knn_predict`): in O(Q·k) memory, the same labels
as the [Q, k, k] comparison it replaced (kept here as the oracle), ties and gaps included (its
memory through the installed command: tests/cli/test_memory_cli.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embeval import metrics as M
from embeval.engine import NO_INDEX, RankStats


def _oracle(idx: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """The full [Q, k, k] comparison: votes[q, j] = neighbours sharing neighbour j's label."""
    present = idx != NO_INDEX
    labels = torch.where(present, gallery_labels[idx.clamp_max(len(gallery_labels) - 1)],
                         torch.full_like(idx, -2))
    labels = labels.clamp_min(-1).masked_fill(~present, -2)
    votes = ((labels[:, :, None] == labels[:, None, :]) & present[:, None, :]).sum(2)
    votes = votes.masked_fill(~present, -1)
    pred = labels.gather(1, torch.argmax(votes, dim=1)[:, None]).squeeze(1)
    return torch.where(present.any(1), pred, torch.full_like(pred, -1))


def _stats(idx: torch.Tensor) -> RankStats:
    nq = idx.shape[0]
    zeros = torch.zeros(nq, dtype=torch.int64)
    return RankStats(metric="cosine", n_gallery=1, query_labels=zeros,
                     pos_offsets=torch.zeros(nq + 1, dtype=torch.int64), pos_scores=torch.zeros(0),
                     neg_hist=zeros, n_neg=zeros, max_neg=torch.zeros(nq),
                     topk_scores=torch.zeros(idx.shape), topk_indices=idx)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_vote_equals_the_full_comparison(data: st.DataObject) -> None:
    g = data.draw(st.integers(1, 30))
    labels = torch.tensor(data.draw(st.lists(st.integers(-3, 4), min_size=g, max_size=g)))
    nq, k = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 12))
    idx = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, g - 1), min_size=k, max_size=k),
                                          min_size=nq, max_size=nq)))
    gaps = data.draw(st.lists(st.integers(0, k), min_size=nq, max_size=nq))  # trailing NO_INDEX
    for q, n in enumerate(gaps):
        idx[q, k - n:] = NO_INDEX
    for kk in sorted({1, k}):
        assert torch.equal(M.knn_predict(_stats(idx), labels, k=kk), _oracle(idx[:, :kk], labels))


def test_large_k_in_chunks_equals_the_full_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(-1, 12, (3000,), generator=gen)  # many tied classes at k = 700
    idx = torch.stack([torch.randperm(3000, generator=gen)[:700] for _ in range(40)])
    idx[3, 650:] = NO_INDEX
    idx[7] = NO_INDEX
    want = _oracle(idx, labels)
    monkeypatch.setattr(M, "KNN_CHUNK_CELLS", 700 * 3)  # 3 queries per chunk
    assert torch.equal(M.knn_predict(_stats(idx), labels, k=700), want)
