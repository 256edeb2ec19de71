"""The fused Triton pass (``backend="triton"``) in Triton's interpreter, on CPU: its statistics
equal the compiled CPU engine's (``backend="numba"``) bit for bit.

Small-integer embeddings with duplicated rows make exact ties everywhere (the cases the buffer
and the canonical rescoring exist for); unknown labels, labels absent from the gallery (queries
without positives), the protocols, relevance lists with junk, galleries shorter than one tile,
several programs per query tile and buffers too small (the launch is rerun) are all drawn.
The interpreter runs the kernel's Python body on numpy: a case costs about a second, so the
default run draws a few, ``-m slow`` many more.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embeval
from embeval.engine import Protocol, rank_stats

try:
    from helpers.data import assert_same, sets
    from helpers.oracle import Case, int_cases
    from helpers.triton import FEW, MANY, TILES, cuda_ptx, installed_runner, interpreted, kernel  # noqa: F401 (a fixture)
    from test_ranking_relevance import draw_lists, to_relevance
except ImportError:  # tests/ imported as a package
    from tests.engine.test_ranking_relevance import draw_lists, to_relevance
    from tests.helpers.data import assert_same, sets
    from tests.helpers.oracle import Case, int_cases
    from tests.helpers.triton import FEW, MANY, TILES, cuda_ptx, installed_runner, interpreted, kernel  # noqa: F401 (a fixture)

def fused(q, g, *, tiles=TILES[0], splits=None, capacity=None, **kw):
    """rank_stats through the fused pass, with the kernel's tuning knobs set."""
    from embeval.engine import triton_pass

    with interpreted(triton_pass, "negative_pass", tiles=tiles, splits=splits, capacity=capacity):
        return rank_stats(q, g, device="cpu", backend="triton", **kw)


def check(case: Case, data, *, relevance=None, **kw) -> None:
    q, g = case.sets()
    tiles = data.draw(st.sampled_from(TILES), label="tiles")
    splits = data.draw(st.integers(1, 3), label="splits")
    capacity = data.draw(st.sampled_from([None, 1, 7]), label="capacity")
    block = data.draw(st.sampled_from([None, 1, 5, 37]), label="block_size")
    ref = rank_stats(q, g, device="cpu", backend="numba", relevance=relevance, **kw)
    got = fused(q, g, tiles=tiles, splits=splits, capacity=capacity, block_size=block,
                relevance=relevance, **kw)
    assert_same(got, ref)


def _labels_case(kernel, case, metric, cam, data):
    protocol = Protocol(exclude_same_camera=cam, exclude_self=data.draw(st.booleans(), label="self")
                        and len(case.ql) == len(case.gl))
    check(case, data, metric=metric, protocol=protocol)


def _listed_case(kernel, case, metric, cam, data):
    pos, junk = draw_lists(data, len(case.ql), len(case.gl))
    check(case, data, metric=metric, protocol=Protocol(exclude_same_camera=cam),
          relevance=to_relevance(pos, junk, len(case.gl)))


CASES = dict(case=int_cases(cameras=True, max_q=40, max_g=70, max_d=7),
             metric=st.sampled_from(list(embeval.METRICS)), cam=st.booleans(), data=st.data())
LISTED = dict(CASES, case=int_cases(cameras=True, max_q=12, max_g=30, max_d=4))


@settings(**FEW)
@given(**CASES)
def test_label_groups_equal_the_cpu_engine(kernel, case, metric, cam, data) -> None:
    _labels_case(kernel, case, metric, cam, data)


@settings(**FEW)
@given(**LISTED)
def test_relevance_lists_equal_the_cpu_engine(kernel, case, metric, cam, data) -> None:
    _listed_case(kernel, case, metric, cam, data)


@pytest.mark.slow
@settings(**MANY)
@given(**CASES)
def test_label_groups_equal_the_cpu_engine_many(kernel, case, metric, cam, data) -> None:
    _labels_case(kernel, case, metric, cam, data)


@pytest.mark.slow
@settings(**MANY)
@given(**LISTED)
def test_relevance_lists_equal_the_cpu_engine_many(kernel, case, metric, cam, data) -> None:
    _listed_case(kernel, case, metric, cam, data)


@pytest.mark.parametrize("metric", embeval.METRICS)
def test_leave_one_out_on_float_data(kernel, metric) -> None:
    """Float embeddings (no designed ties), the same set as query and gallery, --exclude-self:
    several gallery tiles and programs per query tile, a block boundary inside a tile."""
    q, _ = sets(nq=70, ng=10, d=9, classes=6, seed=3)
    ref = rank_stats(q, q, metric=metric, protocol=Protocol(exclude_self=True), device="cpu",
                     backend="numba")
    got = fused(q, q, splits=2, block_size=45, metric=metric,
                protocol=Protocol(exclude_self=True))
    assert_same(got, ref)
    assert int(got.n_neg.sum()) > 0 and torch.isfinite(got.max_neg).any()


def test_a_full_buffer_reruns_the_launch(kernel, monkeypatch) -> None:
    """Capacity 1: every launch overflows first, is rerun with the size it reported, and the
    counts are neither lost nor doubled."""
    from embeval.engine import triton_pass

    reruns = []
    block = triton_pass._Launch.block

    def spy(self, *args, **kwargs):
        out = block(self, *args, **kwargs)
        reruns.append(out is None)
        return out

    monkeypatch.setattr(triton_pass._Launch, "block", spy)
    q, g = sets(nq=40, ng=60, d=6, classes=4, integer=True)
    ref = rank_stats(q, g, metric="inner", device="cpu", backend="numba")
    assert_same(fused(q, g, capacity=1, metric="inner"), ref)
    assert any(reruns) and not reruns[-1]


def test_a_query_without_positives_and_a_tiny_gallery(kernel) -> None:
    """Three gallery items (less than a tile), a query whose label is unknown, one whose label
    the gallery lacks: no positives, every item a negative."""
    qe = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ge = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    q = embeval.EmbeddingSet(qe, torch.tensor([-1, 7, 0]))
    g = embeval.EmbeddingSet(ge, torch.tensor([0, 1, 0]))
    for metric in embeval.METRICS:
        ref = rank_stats(q, g, metric=metric, device="cpu", backend="numba")
        got = fused(q, g, metric=metric)
        assert_same(got, ref)
        assert got.n_neg.tolist() == [3, 3, 1]


@pytest.mark.parametrize("metric", embeval.METRICS)
def test_non_finite_scores_are_refused(kernel, monkeypatch, metric) -> None:
    """Defence in depth behind the overflow rule: a NaN score in the kernel is refused, not
    ranked (the loader refuses NaN rows, so one is slipped in after it)."""
    from embeval.engine import triton_pass

    init = triton_pass._Launch.__init__

    def poisoned(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.q[1, 0] = float("nan")

    monkeypatch.setattr(triton_pass._Launch, "__init__", poisoned)
    q, g = sets(nq=5, ng=8, d=3, classes=2)
    with pytest.raises(embeval.errors.InputFileError, match="not finite"):
        fused(q, g, metric=metric)


def test_the_cli_refuses_triton_on_cpu_without_the_interpreter(tmp_path) -> None:
    """Exit 2 and one line naming the way out, no traceback."""
    refused = installed_runner(tmp_path, "cmc")("triton")
    assert refused.returncode == 2, refused.stderr
    assert "TRITON_INTERPRET" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_the_cli_runs_it_under_the_interpreter(tmp_path) -> None:
    """``--backend triton`` through the installed command under TRITON_INTERPRET=1: the same
    metrics as ``--backend numba``."""
    run = installed_runner(tmp_path, "cmc")
    ref, got = run("numba"), run("triton", TRITON_INTERPRET="1")
    assert ref.returncode == 0 and got.returncode == 0, got.stderr
    assert json.loads(ref.stdout)["metrics"] == json.loads(got.stdout)["metrics"]

RANK_TYPES = {"qlab_ptr": "*i64", "glab_ptr": "*i64", "own_off_ptr": "*i64", "own_ptr": "*i64",
              "pos_off_ptr": "*i64", "hist_ptr": "*i64", "nneg_ptr": "*i64", "parg_ptr": "*i32",
              "buf_q_ptr": "*i32", "buf_c_ptr": "*i32", "cnt_ptr": "*i64", "bad_ptr": "*i64"}


@pytest.mark.slow
@pytest.mark.parametrize("mode,listed", [(1, False), (2, True)])
def test_the_kernel_compiles_for_hopper_with_tf32_tensor_cores(mode: int, listed: bool) -> None:
    """No GPU needed: Triton compiles the kernel to sm_90 PTX and cubin (ptxas ships with it),
    which the interpreter never does; the product runs on tf32 tensor cores (wgmma)."""
    from embeval.engine.fused_bound import KERNEL_PRECISION
    from embeval.engine.triton_pass import CUDA_TILES

    bq, bg, bk, warps, stages = CUDA_TILES
    const = dict(MODE=mode, EXCLUDE_SELF=True, LISTED=listed, PRECISION=KERNEL_PRECISION,
                 BQ=bq, BG=bg, BK=bk)
    ptx = cuda_ptx("rank_tiles", RANK_TYPES, const, arch=90, warps=warps, stages=stages)
    assert "wgmma.mma_async" in ptx and "tf32" in ptx


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", embeval.METRICS)
def test_the_compiled_kernel_on_cuda_equals_the_cpu_engine(metric) -> None:
    """On a GPU (with TRITON_INTERPRET unset): the compiled tf32x3 kernel, several launches
    (block_size), float and tied integer data, leave-one-out and relevance lists."""
    if importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET"):
        pytest.skip("needs triton, compiled (TRITON_INTERPRET unset)")
    for integer in (False, True):
        q, g = sets(nq=300, ng=2500, d=24, integer=integer)
        ref = rank_stats(q, g, metric=metric, device="cpu", backend="numba")
        assert_same(rank_stats(q, g, metric=metric, device="cuda", backend="triton",
                               block_size=1000), ref)
    p = Protocol(exclude_self=True)
    assert_same(rank_stats(q, q, metric=metric, protocol=p, device="cuda", backend="triton"),
                rank_stats(q, q, metric=metric, protocol=p, device="cpu", backend="numba"))
    rel = to_relevance([[1, 5, 7]] * 150 + [[]] * 150, [[2, 3]] * 300, g.n)
    assert_same(rank_stats(q, g, metric=metric, device="cuda", backend="triton", relevance=rel),
                rank_stats(q, g, metric=metric, device="cpu", backend="numba", relevance=rel))


def test_triton_with_a_top_k_runs_the_torch_pass(monkeypatch) -> None:
    """"triton" with a top-k (which the fused kernel does not keep) runs the torch pass."""
    from embeval.engine import torch_pass

    used = []
    run = torch_pass.negative_pass
    monkeypatch.setattr(torch_pass, "negative_pass", lambda *a, **k: used.append(1) or run(*a, **k))
    q, g = sets(nq=20, ng=40, d=4, classes=3)
    ref = rank_stats(q, g, metric="inner", device="cpu", backend="numba", topk=3)
    assert_same(rank_stats(q, g, metric="inner", device="cpu", backend="triton", topk=3), ref)
    assert used == [1]
