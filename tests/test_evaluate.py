"""embeval.evaluate's result object, and the README's Python examples."""
from __future__ import annotations

import pytest
import torch

import embeval


@pytest.fixture(scope="module")
def sets():
    g = torch.Generator().manual_seed(4)
    q = embeval.EmbeddingSet(torch.randn(40, 8, generator=g), torch.randint(0, 5, (40,), generator=g))
    gal = embeval.EmbeddingSet(torch.randn(700, 8, generator=g), torch.randint(0, 5, (700,), generator=g))
    return q, gal


@pytest.mark.slow
def test_result_repr_is_one_short_line(sets):
    res = embeval.evaluate(*sets, ks=(1, 5), device="cpu")
    text = repr(res)
    assert text.startswith("EvalResult(40 queries × 700 gallery items, 40 valid: accuracy=")
    assert "\n" not in text and len(text) < 400 and f"mAP={res.metrics['mAP']:.4f}" in text


def test_readme_gallery_shards_merge_to_the_whole(sets):
    q, g = sets
    a = embeval.rank_stats(q, g, gallery_range=(0, 300), topk=3)
    b = embeval.rank_stats(q, g, gallery_range=(300, g.n), topk=3)
    whole, merged = embeval.rank_stats(q, g, topk=3), a.merge(b)
    for name in ("neg_hist", "n_neg", "max_neg", "topk_scores", "topk_indices", "pos_scores"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name


def test_separately_ranked_files_do_not_merge_and_say_why(sets):
    q, g = sets
    first = embeval.EmbeddingSet(g.embeddings[:300], g.labels[:300])
    second = embeval.EmbeddingSet(g.embeddings[300:], g.labels[300:])
    with pytest.raises(ValueError, match="gallery_range"):
        embeval.rank_stats(q, first).merge(embeval.rank_stats(q, second))
