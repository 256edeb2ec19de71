"""The fused verification kernel (``trial_stats(..., backend="triton")``) in Triton's interpreter,
on CPU: its impostor counts equal the compiled CPU engine's (``backend="numba"``) bit for bit, and
the counts of Python Fractions rounded by hand on float32 midpoints.

Float embeddings (scores that are not integers, at three scales), small-integer ones (exact ties
between genuine and impostor scores), unknown labels, ``--exclude-self``, query and gallery
shards, tiles of odd sizes, several programs per query tile and buffers too small (the launch is
rerun) are drawn; pairs the kernel cannot settle are forced (a widened rounding bound, a wrong
slot table), and must come back through the buffer with the same counts.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embeval
from embeval.engine import Protocol
from embeval.engine.trial_pass import trial_stats

try:
    from helpers.data import sets
    from helpers.oracle import int_cases
    from helpers.triton import FEW, MANY, TILES, cuda_ptx, installed_runner, interpreted, kernel  # noqa: F401 (a fixture)
    from test_trials import MIDPOINT_ROWS, dense_stats, exact_dot, float_cases, round_f32, same_stats
except ImportError:  # tests/ imported as a package
    from tests.helpers.data import sets
    from tests.helpers.oracle import int_cases
    from tests.helpers.triton import FEW, MANY, TILES, cuda_ptx, installed_runner, interpreted, kernel  # noqa: F401 (a fixture)
    from tests.verification.test_trials import (
        MIDPOINT_ROWS,
        dense_stats,
        exact_dot,
        float_cases,
        round_f32,
        same_stats,
    )

def fused(q, g, *, tiles=TILES[0], splits=None, capacity=None, **kw):
    """trial_stats through the fused kernel, with its tuning knobs set."""
    from embeval.engine import triton_trials

    with interpreted(triton_trials, "impostor_pass", tiles=tiles, splits=splits, capacity=capacity):
        return trial_stats(q, g, device="cpu", backend="triton", **kw)


def check(q, g, data, **kw) -> None:
    knobs = dict(tiles=data.draw(st.sampled_from(TILES), label="tiles"),
                 splits=data.draw(st.integers(1, 3), label="splits"),
                 capacity=data.draw(st.sampled_from([None, 1, 7]), label="capacity"),
                 block_size=data.draw(st.sampled_from([None, 1, 5, 37]), label="block_size"))
    ref = trial_stats(q, g, device="cpu", backend="numba", **kw)
    assert same_stats(fused(q, g, **knobs, **kw), ref)


def _shard(data, n: int) -> tuple[int, int]:
    a = data.draw(st.integers(0, n), label="lo")
    return a, data.draw(st.integers(a, n), label="hi")


def _float_case(kernel, c, data):
    kw = dict(metric=c["metric"], protocol=c["protocol"])
    if data.draw(st.booleans(), label="shard"):
        kw.update(query_range=_shard(data, c["q"].n), gallery_range=_shard(data, c["g"].n))
    check(c["q"], c["g"], data, **kw)


def _int_case(kernel, case, metric, data):
    q, g = case.sets()
    protocol = Protocol(exclude_self=data.draw(st.booleans(), label="self") and q.n == g.n)
    check(q, g, data, metric=metric, protocol=protocol)


INT = dict(case=int_cases(max_q=30, max_g=50, max_d=5), metric=st.sampled_from(list(embeval.METRICS)),
           data=st.data())


@settings(**FEW)
@given(c=float_cases(), data=st.data())
def test_float_data_equals_the_cpu_engine(kernel, c, data) -> None:
    _float_case(kernel, c, data)


@settings(**FEW)
@given(**INT)
def test_tied_integer_data_equals_the_cpu_engine(kernel, case, metric, data) -> None:
    _int_case(kernel, case, metric, data)


@pytest.mark.slow
@settings(**MANY)
@given(c=float_cases(), data=st.data())
def test_float_data_equals_the_cpu_engine_many(kernel, c, data) -> None:
    _float_case(kernel, c, data)


@pytest.mark.slow
@settings(**MANY)
@given(**INT)
def test_tied_integer_data_equals_the_cpu_engine_many(kernel, case, metric, data) -> None:
    _int_case(kernel, case, metric, data)


@pytest.mark.parametrize("metric", embeval.METRICS)
def test_leave_one_out_on_float_data(kernel, metric) -> None:
    """The same set as query and gallery with --exclude-self (each item's pair with itself is no
    trial), several programs per query tile, a block boundary inside a tile, a query shard."""
    q, _ = sets(nq=70, ng=10, d=9, classes=6, seed=3)
    kw = dict(metric=metric, protocol=Protocol(exclude_self=True), query_range=(5, 70))
    ref = trial_stats(q, q, device="cpu", backend="numba", **kw)
    got = fused(q, q, splits=2, block_size=45, **kw)
    assert same_stats(got, ref) and got.n_impostor == ref.n_impostor > 0


def test_midpoint_scores_equal_fractions_rounded_by_hand(kernel) -> None:
    """Scores on float32 midpoints that float64 cannot resolve (the kernel's interval straddles a
    rounding boundary: the buffer settles them), against the Fraction oracle's counts."""
    rows = MIDPOINT_ROWS
    labels = [2, 2, 2, 0, 0, 1, -1, 1]
    s = embeval.EmbeddingSet(torch.tensor(rows, dtype=torch.float32), torch.tensor(labels))
    scores, genuine = [], []
    for i, j in itertools.product(range(len(rows)), repeat=2):
        scores.append(round_f32(exact_dot(rows[i], rows[j])))
        genuine.append(labels[i] >= 0 and labels[i] == labels[j])
    values, counts, slots = dense_stats(scores, genuine)
    for tiles, block in itertools.product(TILES[:2], [1, 3, None]):
        got = fused(s, s, metric="inner", tiles=tiles, capacity=1, block_size=block)
        assert got.gen_values.tolist() == values and got.gen_counts.tolist() == counts
        assert got.imp_slots.tolist() == slots, (tiles, block)


def _spy_launches(monkeypatch):
    """Record (counted, appends requested) of every launch."""
    from embeval.engine import triton_trials

    log: list[tuple[bool, int]] = []
    block = triton_trials._Launch.block

    def spy(self, *args, **kwargs):
        done = block(self, *args, **kwargs)
        log.append((done, self.needed))
        return done

    monkeypatch.setattr(triton_trials._Launch, "block", spy)
    return log


def _tamper(monkeypatch, **change):
    """Launch tensors changed after they are made (``bound`` widened, the slot table's scale)."""
    from embeval.engine import triton_trials

    init = triton_trials._Launch.__init__

    def tampered(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for name, f in change.items():
            setattr(self, name, f(getattr(self, name)))

    monkeypatch.setattr(triton_trials._Launch, "__init__", tampered)


@pytest.mark.parametrize("metric", embeval.METRICS)
def test_every_pair_through_the_buffer(kernel, monkeypatch, metric) -> None:
    """A bound of 1 makes every rounding ambiguous: each impostor is counted from the buffer (at
    capacity 1, after a rerun of every launch), and the counts are neither lost nor doubled."""
    log = _spy_launches(monkeypatch)
    _tamper(monkeypatch, bound=lambda b: b + 1.0)
    q, g = sets(nq=20, ng=45, d=6, classes=3, seed=5)
    ref = trial_stats(q, g, metric=metric, device="cpu", backend="numba")
    assert same_stats(fused(q, g, metric=metric, capacity=1, block_size=30), ref)
    assert [done for done, _ in log] == [False, True, False, True]
    assert sum(n for done, n in log if done) == ref.n_impostor


def test_float_data_settles_in_the_kernel(kernel, monkeypatch) -> None:
    """The common case costs no rescoring: on float data the table's guesses hold and no rounding
    is ambiguous (about one pair in 10^6 would be), so nothing comes back through the buffer."""
    log = _spy_launches(monkeypatch)
    q, g = sets(nq=150, ng=200, d=16, classes=5, seed=2)
    for metric in embeval.METRICS:
        ref = trial_stats(q, g, metric=metric, device="cpu", backend="numba")
        assert same_stats(fused(q, g, metric=metric, tiles=(32, 32, 16, 1, 1)), ref)
    assert log and all(done and n == 0 for done, n in log)


def test_a_misjudged_slot_table_is_caught_by_the_check(kernel, monkeypatch) -> None:
    """The table's bin is only a guess bounded by the check below and above: with a wrong scale
    the guesses miss, the check sends those pairs to the buffer, and the counts stay exact."""
    log = _spy_launches(monkeypatch)
    _tamper(monkeypatch, span=lambda s: s * torch.tensor([1.0, 1.7], dtype=torch.float64))
    q, g = sets(nq=30, ng=40, d=5, classes=4, seed=6)
    ref = trial_stats(q, g, metric="cosine", device="cpu", backend="numba")
    assert same_stats(fused(q, g, metric="cosine"), ref)
    assert log and log[-1][1] > 0  # some pairs came back


def test_no_genuine_pair_and_a_tiny_gallery(kernel) -> None:
    """No genuine trial at all (every impostor in slot 0), a gallery shorter than a tile."""
    q = embeval.EmbeddingSet(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([-1, 7, 3]))
    g = embeval.EmbeddingSet(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 1, 0]))
    for metric in embeval.METRICS:
        got = fused(q, g, metric=metric)
        assert got.imp_slots.tolist() == [9] and same_stats(
            got, trial_stats(q, g, metric=metric, device="cpu", backend="numba"))


@pytest.mark.parametrize("metric", embeval.METRICS)
def test_non_finite_scores_are_refused(kernel, monkeypatch, metric) -> None:
    """A NaN score in the kernel is refused, not counted (the loader refuses NaN rows, so one is
    slipped in after it)."""
    def poison(x):
        x = x.clone()
        x[1, 0] = float("nan")
        return x

    _tamper(monkeypatch, q=poison)
    q, g = sets(nq=5, ng=8, d=3, classes=2)
    with pytest.raises(embeval.errors.InputFileError, match="not finite"):
        fused(q, g, metric=metric)


def test_reduced_precisions_count_on_the_torch_pass() -> None:
    """--precision tf32/bf16/fp16 stay the torch pass's approximate filters, with or without
    Triton."""
    q, g = sets(nq=20, ng=40, d=4, classes=3)
    for precision in ("bf16", "fp16"):
        a = trial_stats(q, g, metric="cosine", device="cpu", backend="torch", precision=precision)
        b = trial_stats(q, g, metric="cosine", device="cpu", backend="triton", precision=precision)
        assert same_stats(a, b)


@pytest.mark.slow
def test_verify_cli_under_the_interpreter(tmp_path: Path) -> None:
    """``embeval verify --backend triton`` through the installed command under
    TRITON_INTERPRET=1: the same JSON as ``--backend numba``."""
    run = installed_runner(tmp_path, "verify")
    ref, got = run("numba"), run("triton", TRITON_INTERPRET="1")
    assert ref.returncode == 0 and got.returncode == 0, got.stderr
    assert json.loads(ref.stdout)["metrics"] == json.loads(got.stdout)["metrics"]


TRIAL_TYPES = {"qlab_ptr": "*i64", "glab_ptr": "*i64", "bound_ptr": "*fp64", "table_ptr": "*i64",
               "slots_ptr": "*i64", "keys_ptr": "*i64", "buf_q_ptr": "*i32", "buf_c_ptr": "*i32",
               "cnt_ptr": "*i64", "bad_ptr": "*i64", "span_ptr": "*fp64"}


@pytest.mark.slow
@pytest.mark.parametrize("mode,arch", [(1, 90), (2, 80)])
def test_the_kernel_compiles_to_fp64_tensor_cores(mode: int, arch: int) -> None:
    """No GPU needed: Triton compiles the kernel to sm_80 / sm_90 PTX and cubin; the float64
    products run on DMMA tensor cores (``mma.sync...f64``), and nothing spills to local memory."""
    from embeval.engine.triton_trials import CUDA_TILES

    bq, bg, bk, warps, stages = CUDA_TILES
    const = dict(MODE=mode, EXCLUDE_SELF=True, BQ=bq, BG=bg, BK=bk)
    ptx = cuda_ptx("trial_tiles", TRIAL_TYPES, const, arch=arch, warps=warps, stages=stages)
    assert "mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64" in ptx and ".local" not in ptx


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", embeval.METRICS)
def test_the_compiled_kernel_on_cuda_equals_the_cpu_engine(metric) -> None:
    """On a GPU (TRITON_INTERPRET unset): the compiled kernel, several launches, float and tied
    integer data, leave-one-out, a query shard."""
    if importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET"):
        pytest.skip("needs triton, compiled (TRITON_INTERPRET unset)")
    for integer in (False, True):
        q, g = sets(nq=300, ng=2500, d=24, integer=integer)
        ref = trial_stats(q, g, metric=metric, device="cpu", backend="numba")
        assert same_stats(trial_stats(q, g, metric=metric, device="cuda", backend="triton",
                                      block_size=1000), ref)
    p = Protocol(exclude_self=True)
    kw = dict(metric=metric, protocol=p, query_range=(10, 250))
    assert same_stats(trial_stats(q, q, device="cuda", backend="triton", **kw),
                      trial_stats(q, q, device="cpu", backend="numba", **kw))
