"""Engine invariants: blocks, shards, threads, backends, and the top-k tie rule."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.data import assert_same, sets

import embeval
from embeval import metrics as M
from embeval.engine import NO_INDEX, Protocol, RankStats, rank_stats
from embeval.engine.similarity import canonical_dot


@pytest.mark.slow
@pytest.mark.parametrize("metric", embeval.METRICS)
def test_bit_identical_for_any_block_size(metric: str) -> None:
    q, g = sets()
    ref = rank_stats(q, g, metric=metric, topk=7, device="cpu")
    for block in (1, 7, 64, 2049, g.n):
        assert_same(rank_stats(q, g, metric=metric, topk=7, device="cpu", block_size=block), ref)


@pytest.mark.slow
def test_bit_identical_for_any_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    q, g = sets(nq=1100)  # three query tiles: both the shared and the private-state schedules
    ref = rank_stats(q, g, metric="cosine", topk=5, device="cpu")
    for threads in ("1", "3", "8"):
        monkeypatch.setenv("EMBEVAL_THREADS", threads)
        assert_same(rank_stats(q, g, metric="cosine", topk=5, device="cpu"), ref)


@pytest.mark.slow
@pytest.mark.parametrize("cuts", [(0, 1000, 2500), (0, 1, 2047, 2048, 2500), (0, 2500)])
def test_gallery_shards_merge_exactly(cuts: tuple[int, ...]) -> None:
    q, g = sets()
    protocol = Protocol(exclude_same_camera=True)
    ref = rank_stats(q, g, metric="euclid", protocol=protocol, topk=4, device="cpu")
    parts = [rank_stats(q, g, metric="euclid", protocol=protocol, topk=4, device="cpu",
                        gallery_range=(a, b)) for a, b in zip(cuts[:-1], cuts[1:])]
    merged = parts[0]
    for p in reversed(parts[1:]):  # any merge order
        merged = merged.merge(p)
    assert_same(merged, ref)


def test_query_shards_concatenate_exactly() -> None:
    q, g = sets()
    ref = rank_stats(q, g, metric="inner", topk=3, device="cpu")
    # a query shard is computed as its own query set: tiles shrink to its size, so only
    # the counts (not the last bits of the scores) are guaranteed: use exact integer data
    qi, gi = sets(integer=True)
    ref = rank_stats(qi, gi, metric="inner", topk=3, device="cpu")
    parts = [rank_stats(embeval.EmbeddingSet(qi.embeddings[a:b], qi.labels[a:b]), gi,
                        metric="inner", topk=3, device="cpu") for a, b in ((0, 120), (120, 300))]
    assert_same(RankStats.concat(parts), ref)


@pytest.mark.slow
@pytest.mark.parametrize("metric", embeval.METRICS)
def test_torch_path_equals_numba_path(metric: str) -> None:
    """The pure-PyTorch path (what CUDA runs) on CPU gives the numba path's statistics bit
    for bit, on float data too: both decide with canonical scores."""
    for integer in (True, False):
        q, g = sets(integer=integer)
        a = rank_stats(q, g, metric=metric, topk=6, device="cpu", backend="numba")
        b = rank_stats(q, g, metric=metric, topk=6, device="cpu", backend="torch", block_size=333)
        assert_same(a, b)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embeval.engine.plan, "compiled_available", lambda: False)  # no numba at all
        c = rank_stats(q, g, metric=metric, topk=6, device="cpu", block_size=500)
    assert_same(a, c)


@pytest.mark.parametrize("d", [1, 5, 15, 16, 17, 100, 512, 513])
def test_canonical_dot_is_the_kernels_order(d: int) -> None:
    """similarity.canonical_dot (CPU and CUDA) and the numba kernel agree to the bit, and
    the order is really fixed: not what a plain sum gives for every row."""
    gen = torch.Generator().manual_seed(d)
    q, g = torch.randn(400, d, generator=gen), 3 * torch.randn(400, d, generator=gen)
    out = torch.empty(400)
    zeros = torch.zeros(400)
    idx = torch.arange(400)
    embeval.engine.kernels.pair_scores(q.numpy(), g.numpy(), idx.numpy(), idx.numpy(), 0,
                                         zeros.numpy(), zeros.numpy(), 0, out.numpy())
    canon = canonical_dot(q, g, chunk=37)
    assert torch.equal(canon, out)
    exact = (q.double() * g.double()).sum(1)
    assert torch.allclose(canon.double(), exact, rtol=0, atol=d * 2e-6 * 9)
    if d >= 100:
        assert not torch.equal(canon, (q * g).flip(1).sum(1))
    if torch.cuda.is_available():
        assert torch.equal(canonical_dot(q.cuda(), g.cuda()).cpu(), out)


def test_topk_ties_prefer_lower_gallery_index() -> None:
    q = embeval.EmbeddingSet(torch.tensor([[1.0, 0.0]]), [0])
    g = embeval.EmbeddingSet(torch.tensor([[0.5, 0], [1, 0], [0.5, 0], [0.5, 0], [1, 0]]), [1, 2, 3, 0, 4])
    for backend, block in (("numba", None), ("numba", 1), ("torch", 2)):
        s = rank_stats(q, g, metric="inner", topk=4, device="cpu", backend=backend, block_size=block)
        assert s.topk_indices.tolist() == [[1, 4, 0, 2]], backend
    same = embeval.EmbeddingSet(torch.ones(2, 2), [0, 0])
    s = rank_stats(same, same, metric="inner", topk=2, device="cpu", protocol=Protocol(exclude_self=True))
    assert s.topk_indices.tolist() == [[1, NO_INDEX], [0, NO_INDEX]]  # self dropped, a slot stays empty


def test_constant_embedding_scores_pessimistically() -> None:
    """Everything tied: every negative ranks ahead of every positive."""
    q = embeval.EmbeddingSet(torch.ones(2, 3), [0, 1])
    g = embeval.EmbeddingSet(torch.ones(4, 3), [0, 1, 1, 2])
    s = rank_stats(q, g, metric="cosine", device="cpu")
    assert M.first_hit_rank(s).tolist() == [4.0, 3.0]  # 3 and 2 negatives ahead
    assert M.average_precision(s).tolist() == [0.25, 0.5]


def test_knn_vote_and_class_tie_rule() -> None:
    q = embeval.EmbeddingSet(torch.tensor([[1.0, 0.0]]), [7])
    # ranked: 9 (0.9), 7 (0.8), 9 (0.7), 7 (0.6), -1 (0.5): k=4 ties 9 and 7 -> 9 ranks first
    g = embeval.EmbeddingSet(torch.tensor([[0.9, 0], [0.8, 0], [0.7, 0], [0.6, 0], [0.5, 0]]),
                             [9, 7, 9, 7, -1])
    s = rank_stats(q, g, metric="inner", topk=5, device="cpu")
    assert M.knn_predict(s, g.labels, k=4).tolist() == [9]
    assert M.knn_predict(s, g.labels, k=2).tolist() == [9]
    assert M.knn_predict(s, g.labels, k=1).tolist() == [9]


def test_lazy_gallery_streams_with_tiny_blocks(tmp_path) -> None:
    q, g = sets()
    p = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels, g.cameras)
    lazy = embeval.load(p)
    assert lazy.is_lazy
    ref = rank_stats(q, g, metric="cosine", topk=2, device="cpu")
    assert_same(rank_stats(q, lazy, metric="cosine", topk=2, device="cpu", memory="1MB"), ref)


def test_input_errors() -> None:
    q, g = sets()
    with pytest.raises(embeval.OptionError, match="3-dimensional embeddings but .* has 24"):
        rank_stats(embeval.EmbeddingSet(torch.ones(2, 3), [0, 1]), g, device="cpu")
    with pytest.raises(embeval.OptionError, match="has no 'cameras'"):
        rank_stats(*sets(integer=True), protocol=Protocol(exclude_same_camera=True), device="cpu")
    with pytest.raises(embeval.OptionError, match="same set"):
        rank_stats(q, g, protocol=Protocol(exclude_self=True), device="cpu")
    with pytest.raises(embeval.OptionError, match="unknown metric"):
        rank_stats(q, g, metric="manhattan", device="cpu")


def test_means_do_not_depend_on_summation_order() -> None:
    """mAP & co. are means of [Q] float64 values: exactly rounded sums, so a different
    thread count or shard split (which reorders torch's reductions) cannot move the last bit."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(40_000, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(
        -8, 8, (40_000,), generator=gen)
    ref = M.exact_mean(x)
    orders = {float(x[torch.randperm(len(x), generator=gen)].sum()) for _ in range(20)}
    assert len(orders) > 1  # plain summation does depend on the order here
    for _ in range(20):
        assert M.exact_mean(x[torch.randperm(len(x), generator=gen)]) == ref
    assert M.exact_mean(torch.tensor([1e16, 1.0, -1e16, 1.0], dtype=torch.float64)) == 0.5
    assert math.isnan(M.exact_mean(torch.empty(0, dtype=torch.float64)))


@pytest.mark.slow
def test_small_jobs_never_compile_kernels():  # a fresh process: no conftest fixture
    """backend="auto" on CPU: a job up to SMALL_PASS scores runs the torch pass (no numba compile,
    the first-run cost), a larger one the compiled pass; both give the same statistics."""
    import subprocess
    import sys
    code = """
import torch, embeval
from embeval.engine import kernels as _kernels, rank as ranking
q = embeval.EmbeddingSet(torch.randn(50, 8), torch.arange(50) % 7)
g = embeval.EmbeddingSet(torch.randn(300, 8), torch.arange(300) % 7)
small = embeval.evaluate(q, g, knn_k=3, device="cpu")
print(sum(len(f.signatures) for f in (_kernels.tile_pass, _kernels.pair_scores, _kernels.merge_topk)))
ranking.SMALL_PASS = 0
big = embeval.evaluate(q, g, knn_k=3, device="cpu")
print(len(_kernels.tile_pass.signatures))
print(small.metrics == big.metrics)
"""
    from embeval.engine import kernels as _kernels
    if not _kernels.AVAILABLE:
        pytest.skip("numba is not installed")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0", "1", "True"]


def test_overflow_rule_is_within_a_factor_two_of_a_real_overflow() -> None:
    from embeval.engine.similarity import overflow_rule

    d = 16
    for metric in ("inner", "cosine", "euclid", "sq_euclid"):
        lo, hi = 1.0, 2.0 ** 130  # bisect the largest accepted norm (query norm = gallery norm)
        for _ in range(200):
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if overflow_rule(metric, "fp32", d, mid, mid) is None else (lo, mid)
        row = torch.full((1, d), 1.0) / d ** 0.5
        ok, over = (row * lo).float(), (row * lo * 2.0 ** 0.5 * 1.01).float()
        if metric in ("euclid", "sq_euclid"):  # worst case: q = -g, ‖q‖² + ‖g‖² + 2|q·g|
            for x, finite in ((ok, True), (over, False)):
                d2 = (x * x).sum(1) * 2 + 2 * canonical_dot(x, x)
                assert bool(torch.isfinite(d2).all()) == finite, metric
        else:  # worst case: q = g, q·g = |q||g|
            assert torch.isfinite(canonical_dot(ok, ok)).all()
            assert not torch.isfinite(canonical_dot(over, over)).all(), metric


def test_overflow_names_the_gallery_file_and_its_row(tmp_path) -> None:
    q = embeval.EmbeddingSet(torch.randn(4, 8) * 1e10, [0, 1, 2, 3], name="q")
    small = embeval.save(tmp_path / "g0.safetensors", torch.randn(5, 8), [0, 1, 2, 3, 4])
    big = torch.randn(6, 8)
    big[4] *= 1e30  # 1e30 * 1e10 is fine for float32; |q||g| ~ 1e40 is not
    embeval.save(tmp_path / "g1.safetensors", big, [0, 1, 2, 3, 4, 5])
    g = embeval.load_many([small, tmp_path / "g1.safetensors"])
    for metric in ("inner", "cosine", "euclid", "sq_euclid"):
        with pytest.raises(embeval.InputFileError) as err:
            rank_stats(q, g, metric=metric, device="cpu")
        msg = str(err.value)
        assert msg.startswith(f"{tmp_path / 'g1.safetensors'}: embedding row 4 has L2 norm")
        assert "against q (its longest row" in msg and "\n" not in msg
    rank_stats(q, embeval.load(small), metric="inner", device="cpu")  # fine without it


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_non_finite_scores_are_never_ranked(monkeypatch, backend) -> None:
    """Defence in depth: with the norm check switched off, overflowing scores still raise."""
    monkeypatch.setattr("embeval.engine.rank.overflow_rule", lambda *a, **k: None)
    gen = torch.Generator().manual_seed(0)
    q = embeval.EmbeddingSet(torch.randn(5, 8, generator=gen) * 1e20, [0, 1, 2, 3, 4])
    for labels in ([0, 1, 2, 0, 1, 2], [7, 7, 7, 8, 8, 8]):  # with positives, and none at all
        g = embeval.EmbeddingSet(torch.randn(6, 8, generator=gen) * 1e20, labels)
        with pytest.raises(embeval.InputFileError, match="scores against .* are not finite"):
            rank_stats(q, g, metric="inner", device="cpu", backend=backend, topk=2)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "NaNGB", "infMB"])
def test_memory_must_be_finite(text: str) -> None:
    from embeval.engine import parse_memory

    with pytest.raises(embeval.OptionError, match="is not a finite size"):
        parse_memory(text)
    assert parse_memory("1.5GiB") == 3 << 29 and parse_memory("1e7") == 10_000_000
