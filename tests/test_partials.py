"""Array jobs: `--shard i/n` parts merged by `embeval merge` give the single run's output, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_ranking import assert_same, sets

import embeval
from embeval.cli import main
from embeval.evaluate import evaluation_stats
from embeval.partials import Partial, load_partial, merge_partials, save_partial
from embeval.ranking import shard_range


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run the command line in this process (fast): exit code, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def without_time(text: str) -> dict:
    data = json.loads(text)
    data.pop("elapsed_s")
    return data


def job_header(metric: str = "cosine") -> dict:
    """A complete ``job`` of a part header (load_partial checks every field's type)."""
    fp = {"file": "/x.safetensors", "size": 1, "sha256": "0" * 64}
    return {"command": "cmc", "ks": [1], "knn_k": None, "pr": False, "extra": {}, "out_topk": None,
            "label_names": None, "inputs": {"query": [fp], "gallery": [fp]},
            "options": {"metric": metric, "precision": "fp32", "exclude_same_camera": False,
                        "exclude_self": False, "aggregate": "none", "no_positive": "skip"}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("parts")
    q, g = sets(nq=120, ng=900, d=16)
    return {"q": embeval.save(d / "q.safetensors", q.embeddings, q.labels, q.cameras),
            "g": embeval.save(d / "g.safetensors", g.embeddings, g.labels, g.cameras)}


@given(st.integers(1, 100_000), st.integers(1, 64), st.sampled_from([1, 16, 512, 2048]))
def test_shard_ranges_cover_the_items_once(n_items: int, count: int, align: int) -> None:
    ranges = [shard_range(n_items, i, count, align=align) for i in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_items
    assert all(a[1] == b[0] and a[0] <= a[1] for a, b in zip(ranges, ranges[1:]))
    if count * align <= n_items:  # every shard can get a whole unit: boundaries on units
        assert all(a % align == 0 for a, _ in ranges) and all(b > a for a, b in ranges)
    assert shard_range(10_000, 1, 2, align=2048) == (4096, 10_000)


@pytest.mark.parametrize("metric", embeval.METRICS)
def test_parts_merge_bit_for_bit(tmp_path: Path, metric: str) -> None:
    q, g = sets()
    opts = dict(metric=metric, knn_k=6, exclude_same_camera=True, device="cpu")
    whole = evaluation_stats(q, g, **opts)
    paths = []
    for i in (2, 0, 1):  # any order
        ev = evaluation_stats(q, g, shard=(i, 3), **opts, block_size=333)
        a, b = ev.gallery_range
        header = {"job": job_header(metric), "shard": [i, 3], "gallery_range": [a, b]}
        paths.append(save_partial(tmp_path / f"p{i}", Partial(ev.stats, g.labels[a:b], header)))
    merged = merge_partials([load_partial(p) for p in paths])
    assert_same(merged.stats, whole.stats)
    assert torch.equal(merged.gallery_labels, g.labels)


@pytest.mark.parametrize(("command", "opts", "outputs"), [
    ("cmc", ["-k", "1", "5", "--exclude-same-camera"], [("--per-query", "pq.csv")]),
    ("score", ["-k", "1", "3", "--metric", "euclid"], [("--out", "s.safetensors")]),
    ("score", ["-k", "2", "--out-topk", "7"], [("--out", "t.safetensors")]),
    ("knn", ["-k", "5"], [("--predictions", "p.csv")]),
    ("pr", ["--metric", "inner"], [("--curves", "c.safetensors"), ("--per-query", "pq.csv")]),
])
def test_shard_merge_equals_one_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    files: dict[str, Path], command: str, opts: list[str],
                                    outputs: list[tuple[str, str]]) -> None:
    q, g = files["q"], files["g"]
    (tmp_path / "one").mkdir()
    (tmp_path / "merged").mkdir()
    one_files = [x for opt, name in outputs for x in (opt, tmp_path / "one" / name)]
    rc, single, err = cli(capsys, command, q, g, *opts, "--json", *one_files)
    assert rc == 0, err
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.safetensors"
        rc, out, err = cli(capsys, command, q, g, *opts, "--shard", f"{i}/3", "--out-part", part)
        assert rc == 0 and out == "", err
        parts.append(part)
    merged_files = [x for opt, name in outputs for x in (opt, tmp_path / "merged" / name)]
    rc, merged, err = cli(capsys, "merge", *reversed(parts), "--json", *merged_files)
    assert rc == 0, err
    assert without_time(merged) == without_time(single)
    for _, name in outputs:
        a, b = tmp_path / "one" / name, tmp_path / "merged" / name
        if name.endswith(".csv"):
            assert a.read_text() == b.read_text(), name
        else:
            x, y = load_file(a), load_file(b)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    # the table too
    rc, table, _ = cli(capsys, command, q, g, *opts)
    rc2, merged_table, _ = cli(capsys, "merge", *parts)
    assert rc == rc2 == 0
    assert table.rsplit("·", 1)[0] == merged_table.rsplit("·", 1)[0]  # all but the elapsed time


def test_merge_rejects_parts_that_do_not_fit(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             files: dict[str, Path]) -> None:
    q, g = files["q"], files["g"]

    def shard(name: str, spec: str, *opts: str) -> Path:
        p = tmp_path / name
        rc, _, err = cli(capsys, "cmc", q, g, "-k", "1", "--shard", spec, "--out-part", p, *opts)
        assert rc == 0, err
        return p

    p0, p1 = shard("a0", "0/2"), shard("a1", "1/2")
    inner = shard("inner1", "1/2", "--metric", "inner")
    three = shard("b1", "1/3")
    cases = [
        ([p0], "a0", "shard(s) 1/2 missing"),
        ([p0, p1, p1], "a1", "shard 1/2 is given twice"),
        ([p0, inner], "inner1", 'options.metric: "inner" vs "cosine"'),
        ([p0, three], "b1", "is shard 1/3 but"),
        ([p0, q], "q.safetensors", "not an embeval partial-statistics file"),
        ([p0, tmp_path / "gone"], "gone", "no such file"),
    ]
    for files_given, named, message in cases:
        rc, out, err = cli(capsys, "merge", *files_given)
        assert rc == 2 and out == "", err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and named in lines[0] and message in lines[0], err
    rc, _, err = cli(capsys, "merge", p0, p1, "--predictions", tmp_path / "x.csv")
    assert rc == 2 and "--predictions: not an output of `embeval cmc`" in err
    rc, _, err = cli(capsys, "cmc", q, g, "--shard", "2/2")
    assert rc == 2 and "--shard 2/2: need 0 <= i < n" in err
    rc, _, err = cli(capsys, "cmc", q, g, "--shard", "0/2", "--per-query", tmp_path / "x.csv")
    assert rc == 2 and "give output files to `embeval merge`" in err
