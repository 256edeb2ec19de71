"""k-reciprocal re-ranking in gallery shards (``--shard i/n``, torchrun ranks): the shards'
statistics merge into the whole run's bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import cli, without_time
from safetensors import safe_open
from safetensors.torch import save_file

import embeval
from embeval.engine import RankStats
from embeval.rerank.kreciprocal import reranked_stats
from embeval.rerank.options import RerankOptions
from embeval.results import partials

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "digits"
FIELDS = ("pos_offsets", "pos_scores", "neg_hist", "n_neg", "max_neg", "topk_scores",
          "topk_indices")


def _same_set(seed: int, n: int, dim: int, classes: int) -> embeval.EmbeddingSet:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32))
    return embeval.EmbeddingSet(x, torch.from_numpy(rng.integers(0, classes, n)),
                                torch.from_numpy(rng.integers(0, 2, n)))


def _merged(parts: list[RankStats]) -> RankStats:
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def _assert_equal(a: RankStats, b: RankStats) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.slow
@pytest.mark.parametrize("case", ["labels", "exclude_self+camera", "relevance"])
def test_gallery_ranges_merge_to_the_whole_run(case: str) -> None:
    q = _same_set(1, 40, 6, 5)
    g = q if case != "labels" else _same_set(2, 50, 6, 5)
    protocol = embeval.Protocol(exclude_same_camera=case == "exclude_self+camera",
                                exclude_self=case != "labels")
    rel = None
    if case == "relevance":  # listed positives, some junk, a query without a list
        pairs = [(i, (3 * i + d) % 40, lab) for i in range(1, 40) for d, lab in
                 ((1, 1), (5, 1), (11, -1))]
        qi, gi, lab = (torch.tensor(c) for c in zip(*pairs))
        rel = embeval.Relevance.from_pairs(qi, gi, lab, n_query=40, n_gallery=40)
    opts = RerankOptions(method="k-reciprocal", k1=6, k2=3, lam=0.3)
    run = dict(metric="euclid", topk=7, device="cpu", protocol=protocol, relevance=rel)
    whole = reranked_stats(q, g, opts, **run)
    assert int(whole.n_neg.sum()) > 0
    bounds = (0, 7, 7, 23, g.n)  # an empty shard too
    parts = [reranked_stats(q, g, opts, gallery_range=(a, b), **run)
             for a, b in zip(bounds[:-1], bounds[1:])]
    # every shard ranks some C negatives of its own: the restriction is exercised
    assert all(int(p.n_neg.sum()) > 0 for i, p in enumerate(parts) if bounds[i] < bounds[i + 1])
    _assert_equal(_merged(parts), whole)
    _assert_equal(_merged(parts[::-1]), whole)  # the merge does not depend on the order


def test_shards_through_evaluation_stats() -> None:
    q, g = _same_set(3, 30, 8, 4), _same_set(4, 45, 8, 4)
    opts = RerankOptions(method="k-reciprocal", k1=5, k2=2)
    kw = dict(rerank=opts, device="cpu", metric="cosine", knn_k=5, exclude_same_camera=True)
    whole = embeval.evaluation_stats(q, g, **kw).stats
    parts = [embeval.evaluation_stats(q, g, shard=(i, 3), **kw) for i in range(3)]
    assert [p.gallery_range for p in parts] == [(0, 15), (15, 30), (30, 45)]
    _assert_equal(_merged([p.stats for p in parts]), whole)


@pytest.mark.slow
def test_cli_shards_merge_to_the_whole_run(capsys, tmp_path) -> None:
    q = SAMPLE / "query.safetensors"
    flags = ["--rerank", "k-reciprocal", "--k1", "8", "--k2", "3", "--exclude-self"]
    rc, whole, err = cli(capsys, "knn", q, q, "-k", "5", *flags, "--predictions",
                         tmp_path / "whole.csv", "--json")
    assert rc == 0, err
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"p{i}.safetensors")
        rc, _, err = cli(capsys, "knn", q, q, "-k", "5", *flags, "--shard", f"{i}/3",
                         "--out-part", parts[-1])
        assert rc == 0, err
    rc, merged, err = cli(capsys, "merge", *parts, "--predictions", tmp_path / "merged.csv",
                          "--json")
    assert rc == 0, err
    assert without_time(merged) == without_time(whole)
    assert (tmp_path / "merged.csv").read_text() == (tmp_path / "whole.csv").read_text()
    # the parts hold float64 scores (−r); a part mixing float32 in is refused, checksum forged
    with safe_open(str(parts[0]), framework="pt") as f:
        meta, t = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    assert t["pos_scores"].dtype == t["max_neg"].dtype == torch.float64
    t["max_neg"] = t["max_neg"].float()
    meta["sha256"] = partials._digest(meta, t)
    save_file(t, str(tmp_path / "x.safetensors"), metadata=meta)
    rc, _, err = cli(capsys, "merge", tmp_path / "x.safetensors", *parts[1:])
    assert rc == 2 and "max_neg is torch.float32, not torch.float64" in err, err


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_gloo_ranks_equal_one_process(capsys, tmp_path) -> None:
    # 1024 queries and a small gallery: plain runs would share out queries; re-ranking
    # shares out the gallery (its neighbour graph needs every query)
    x = _same_set(5, 1024 + 300, 8, 30)
    q = embeval.save(tmp_path / "q.safetensors", x.embeddings[:1024], x.labels[:1024])
    g = embeval.save(tmp_path / "g.safetensors", x.embeddings[1024:], x.labels[1024:])
    flags = ["-k", "1", "5", "--rerank", "k-reciprocal", "--k1", "8", "--k2", "3", "--json"]
    rc, single, err = cli(capsys, "cmc", q, g, *flags, "--per-query", tmp_path / "one.csv")
    assert rc == 0, err
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "EMBEVAL_THREADS")}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "embeval", "cmc", q, g, *flags, "--device", "cpu", "--memory", "1MB",
         "--per-query", tmp_path / "two.csv"],
        capture_output=True, text=True, timeout=240,
        env={**env, "COLUMNS": "120", "EMBEVAL_DIST_TIMEOUT": "120"})
    assert res.returncode == 0, res.stderr
    assert "2 ranks (gallery shards, cpu) reduced onto rank 0" in res.stderr
    assert without_time(res.stdout) == without_time(single)
    assert (tmp_path / "two.csv").read_text() == (tmp_path / "one.csv").read_text()
