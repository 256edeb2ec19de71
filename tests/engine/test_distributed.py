"""A real 2-process gloo group (torchrun, spawned here) prints exactly what one process prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli import cli, without_time
from helpers.data import assert_same, sets
from safetensors.torch import load_file

import embeval
from embeval.engine import RankStats, distributed, shard_range
from embeval.evaluation import evaluation_stats

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def torchrun(*args: object, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(nproc), "-m", "embeval", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "EMBEVAL_THREADS")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**env, "COLUMNS": "120", "EMBEVAL_DIST_TIMEOUT": "120"})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dist")
    q, g = sets(nq=300, ng=2000, d=32)
    gallery = [embeval.save(d / f"g_{i}.safetensors", g.embeddings[a:b], g.labels[a:b], g.cameras[a:b])
               for i, (a, b) in enumerate(((0, 700), (700, 2000)))]
    return {"q": embeval.save(d / "q.safetensors", q.embeddings, q.labels, q.cameras),
            "g": embeval.save(d / "g.safetensors", g.embeddings, g.labels, g.cameras),
            "g0": gallery[0], "g1": gallery[1]}


@pytest.mark.slow
@pytest.mark.parametrize(("command", "opts", "output"), [
    ("cmc", ["-k", "1", "5", "10", "--exclude-same-camera"], ("--per-query", "pq.csv")),
    ("score", ["-k", "1", "5", "--metric", "euclid", "--out-topk", "4"], ("--out", "s.safetensors")),
    ("knn", ["-k", "5", "--metric", "inner"], ("--predictions", "p.csv")),
    ("pr", [], ("--curves", "c.safetensors")),
    ("verify", ["--metric", "inner", "--far", "1e-3", "1e-2", "--exclude-same-camera"],
     ("--roc", "roc.csv")),
])
def test_two_gloo_ranks_equal_one_process(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          files: dict[str, Path], command: str, opts: list[str],
                                          output: tuple[str, str]) -> None:
    option, name = output
    rc, single, err = cli(capsys, command, files["q"], files["g"], *opts, "--json",
                          option, tmp_path / f"one_{name}")
    assert rc == 0, err
    # two ranks, the gallery as two files, and out-of-core blocks far below the gallery size
    res = torchrun(command, files["q"], files["g0"], files["g1"], *opts, "--json", "--device", "cpu",
                   "--memory", "1MB", "--block-size", "37", option, tmp_path / f"dist_{name}")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 1  # rank 0 alone prints
    # the same object but for the input files' names (one gallery file there, two here)
    assert without_time(res.stdout, "inputs") == without_time(single, "inputs")
    assert f"embeval {command}: 2 ranks (gallery shards, cpu) reduced onto rank 0" in res.stderr
    a, b = tmp_path / f"one_{name}", tmp_path / f"dist_{name}"
    if name.endswith(".csv"):
        assert a.read_text() == b.read_text()
    else:
        x, y = load_file(a), load_file(b)
        assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
@pytest.mark.parametrize("metric", embeval.METRICS)
def test_tile_aligned_query_shards_concatenate_bit_for_bit(metric: str) -> None:
    """What the ranks do when queries outnumber a small gallery (split_axis == "query")."""
    q, g = sets(nq=1300, ng=500, d=16)
    assert distributed.split_axis(q.n, g.n, 2) == "query"
    opts = dict(metric=metric, knn_k=4, exclude_same_camera=True, device="cpu")
    whole = evaluation_stats(q, g, **opts).stats
    parts = []
    for i in range(2):
        a, b = shard_range(q.n, i, 2, align=distributed.QUERY_TILE)
        assert a % 512 == 0 and b - a >= 512
        sub = embeval.EmbeddingSet(q.embeddings[a:b], q.labels[a:b], q.cameras[a:b])
        parts.append(evaluation_stats(sub, g, **opts).stats)
    assert_same(RankStats.concat(parts), whole)


@pytest.mark.slow
def test_query_split_under_torchrun(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    q, g = sets(nq=1100, ng=600, d=16)
    qp = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels, q.cameras)
    gp = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels, g.cameras)
    opts = ["-k", "1", "5", "--exclude-same-camera", "--metric", "euclid", "--json", "--device", "cpu"]
    rc, single, err = cli(capsys, "cmc", qp, gp, *opts, "--per-query", tmp_path / "one.csv")
    assert rc == 0, err
    res = torchrun("cmc", qp, gp, *opts, "--per-query", tmp_path / "two.csv")
    assert res.returncode == 0, res.stderr
    assert "embeval cmc: 2 ranks (query shards, cpu) reduced onto rank 0" in res.stderr
    assert without_time(res.stdout) == without_time(single)
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()


def test_split_axis() -> None:
    assert distributed.split_axis(1_000_000, 1_000_000, 8) == "gallery"
    assert distributed.split_axis(1_000_000, 10_000, 8) == "query"
    assert distributed.split_axis(1_000_000, 10_000, 8, exclude_self=True) == "gallery"
    assert distributed.split_axis(1000, 1000, 2) == "gallery"  # too few queries for two tiles


@pytest.mark.slow
def test_a_bad_input_fails_every_rank_without_hanging(files: dict[str, Path], tmp_path: Path) -> None:
    res = torchrun("cmc", files["q"], tmp_path / "missing.safetensors", "-k", "1")
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.count("missing.safetensors: no such file") == 1  # rank 0 says it, once


def test_threads_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEVAL_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(len(os.sched_getaffinity(0))))
    assert distributed.threads_per_rank() == 1
    monkeypatch.setenv("EMBEVAL_THREADS", "3")
    assert distributed.threads_per_rank() == 3
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.requested() and distributed.is_leader()


def test_more_cuda_ranks_than_gpus_is_refused_by_every_rank() -> None:
    """torchrun --nproc-per-node 2 on a one-GPU node: exit 2 with one line (rank 0), not a CUDA
    'invalid device ordinal' traceback from rank 1."""
    distributed.check_gpus_per_rank(2, 2)
    with pytest.raises(embeval.OptionError, match=r"^device: 2 ranks on this node.*1 GPU\(s\)") as e:
        distributed.check_gpus_per_rank(2, 1)
    assert e.value.params == ("device",)


@pytest.mark.slow
def test_identify_with_relevance_under_torchrun_equals_one_process(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]) -> None:
    """identify (the open-set summary of the ranking pass) with per-query lists (positives and
    junk) on two gloo ranks prints what one process prints."""
    rows = ["query,gallery,relevance"]
    g = torch.Generator().manual_seed(5)
    for i in range(0, 300, 2):  # odd queries list nothing: non-mated
        items = torch.randperm(2000, generator=g)[:6].tolist()
        rows += [f"{i},{x},{1 if j < 3 else -1}" for j, x in enumerate(items)]
    rel = tmp_path / "rel.csv"
    rel.write_text("\n".join(rows) + "\n")
    opts = ["--fpir", "0.05", "0.2", "-k", "1", "5", "--relevance", rel, "--json"]
    rc, single, err = cli(capsys, "identify", files["q"], files["g"], *opts)
    assert rc == 0, err
    assert '"TPIR@FPIR=0.2,rank5"' in single and '"n_nonmated": 150' in single
    res = torchrun("identify", files["q"], files["g0"], files["g1"], *opts, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert without_time(res.stdout, "inputs") == without_time(single, "inputs")
