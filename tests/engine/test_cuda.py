"""CUDA against CPU (skipped without a GPU): exact on exactly representable data, with the
gallery streamed from files in blocks (pinned read-ahead, side-stream copies)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.data import assert_same, sets

import embeval
from embeval.engine import rank_stats

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("metric", embeval.METRICS)
def test_cuda_streaming_equals_cpu(tmp_path: Path, metric: str) -> None:
    q, g = sets(integer=True)
    files = [embeval.save(tmp_path / f"g{i}.safetensors", g.embeddings[a:b], g.labels[a:b])
             for i, (a, b) in enumerate(((0, 900), (900, 2500)))]
    lazy = embeval.load_many(files)
    ref = rank_stats(q, g, metric=metric, topk=6, device="cpu")
    for block in (None, 257):  # one block; many blocks read ahead across the file boundary
        got = rank_stats(q, lazy, metric=metric, topk=6, device="cuda", block_size=block)
        assert_same(got, ref)


def test_cuda_gallery_shards_merge(tmp_path: Path) -> None:
    q, g = sets(integer=True)
    ref = rank_stats(q, g, metric="inner", topk=3, device="cpu")
    parts = [rank_stats(q, g, metric="inner", topk=3, device="cuda", block_size=300,
                        gallery_range=r) for r in ((0, 1234), (1234, 2500))]
    assert_same(parts[0].merge(parts[1]), ref)


def test_bf16_is_close_to_fp32() -> None:
    q, g = sets()
    a = embeval.evaluate(q, g, device="cuda", knn_k=3)
    b = embeval.evaluate(q, g, device="cuda", knn_k=3, precision="bf16")
    assert b.metrics["mAP"] == pytest.approx(a.metrics["mAP"], abs=0.02)
    assert b.metrics["rank1"] == pytest.approx(a.metrics["rank1"], abs=0.03)
