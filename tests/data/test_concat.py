"""Several gallery files as one lazy gallery: same results as one merged file, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.data import assert_same, sets

import embeval
from embeval.data.concat import ConcatSet, expand_paths
from embeval.engine import rank_stats

EXE = shutil.which("embeval")


def split_files(d: Path, g: embeval.EmbeddingSet, cuts: tuple[int, ...]) -> list[Path]:
    out = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        out.append(embeval.save(d / f"g_{i}.safetensors", g.embeddings[a:b], g.labels[a:b],
                                g.cameras[a:b], paths=[f"img{j}.png" for j in range(a, b)]))
    return out


@pytest.mark.slow
def test_concatenation_equals_one_file(tmp_path: Path) -> None:
    q, g = sets()
    files = split_files(tmp_path, g, (0, 700, 701, 2500))
    many = embeval.load_many(files)
    assert isinstance(many, ConcatSet) and many.is_lazy and many.n == g.n
    assert torch.equal(many.rows(650, 760), g.embeddings[650:760])
    assert torch.equal(many.labels, g.labels) and torch.equal(many.cameras, g.cameras)
    assert many.paths[700] == "img700.png"
    ref = rank_stats(q, g, metric="cosine", topk=5, device="cpu")
    # out-of-core: blocks far smaller than the gallery, spanning file boundaries
    assert_same(rank_stats(q, many, metric="cosine", topk=5, device="cpu", block_size=97), ref)


def test_glob_expands_in_natural_order(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        embeval.save(tmp_path / f"g_{i}.safetensors", torch.full((1, 3), float(i)), [i])
    found = expand_paths([str(tmp_path / "g_*.safetensors")])
    assert [p.name for p in found] == ["g_1.safetensors", "g_2.safetensors", "g_10.safetensors"]
    assert embeval.load_many([str(tmp_path / "g_*.safetensors")]).labels.tolist() == [1, 2, 10]
    with pytest.raises(embeval.InputFileError, match="no file matches"):
        expand_paths([str(tmp_path / "nothing_*.safetensors")])


def test_files_that_differ_are_named(tmp_path: Path) -> None:
    a = embeval.save(tmp_path / "a.safetensors", torch.randn(3, 4), [0, 1, 2], [0, 0, 1])
    d3 = embeval.save(tmp_path / "d3.safetensors", torch.randn(3, 3), [0, 1, 2], [0, 0, 1])
    half = embeval.save(tmp_path / "half.safetensors", torch.randn(3, 4).half(), [0, 1, 2], [0, 0, 1])
    nocam = embeval.save(tmp_path / "nocam.safetensors", torch.randn(3, 4), [0, 1, 2])
    with pytest.raises(embeval.InputFileError, match=r"d3.safetensors: has 3-dimensional"):
        embeval.load_many([a, d3])
    with pytest.raises(embeval.InputFileError, match=r"half.safetensors: embeddings are torch.float16"):
        embeval.load_many([a, half])
    with pytest.raises(embeval.InputFileError, match=r"nocam.safetensors: has no 'cameras'"):
        embeval.load_many([a, nocam])
    bad = torch.randn(3, 4)
    bad[1, 2] = float("nan")
    nan = embeval.save(tmp_path / "nan.safetensors", torch.randn(3, 4), [0, 1, 2], [0, 0, 1])
    from safetensors.torch import save_file  # write the NaN past save()'s check
    save_file({"embeddings": bad, "labels": torch.arange(3), "cameras": torch.zeros(3, dtype=torch.int64)},
              str(nan))
    with pytest.raises(embeval.InputFileError, match=r"nan.safetensors: embedding row 1 contains NaN"):
        embeval.load_many([a, nan]).rows(2, 6)  # rows 2..5 span both files


@pytest.mark.slow
@pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")
@pytest.mark.parametrize("command", ["cmc", "score", "knn", "pr"])
def test_cli_multi_file_gallery(tmp_path: Path, command: str) -> None:
    q, g = sets(nq=60, ng=400, d=8)
    qp = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels, q.cameras)
    one = embeval.save(tmp_path / "one.safetensors", g.embeddings, g.labels, g.cameras)
    split_files(tmp_path, g, (0, 150, 400))
    opts = {"knn": ["-k", "3"], "pr": []}.get(command, ["-k", "1", "5"])

    def run(*gallery: object) -> dict:
        res = subprocess.run([EXE, command, str(qp), *map(str, gallery), *opts, "--json",
                              "--exclude-same-camera"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "COLUMNS": "120"})
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        data.pop("elapsed_s")
        data.pop("inputs")  # names the files, which differ by design
        return data

    ref = run(one)
    assert run(tmp_path / "g_0.safetensors", tmp_path / "g_[1-9].safetensors") == ref  # file + glob


def test_a_file_given_twice_is_refused(tmp_path: Path) -> None:
    """Same path, a symbolic or hard link, or an overlapping glob: the gallery would double."""
    a = embeval.save(tmp_path / "g_1.safetensors", torch.randn(3, 4), [0, 1, 2])
    b = embeval.save(tmp_path / "g_2.safetensors", torch.randn(3, 4), [0, 1, 2])
    (tmp_path / "sym.safetensors").symlink_to(a)
    os.link(b, tmp_path / "hard.safetensors")
    for given, named, first in [
        ([a, b, a], a, None),
        ([a, tmp_path / "sym.safetensors"], tmp_path / "sym.safetensors", a),
        ([b, tmp_path / "hard.safetensors"], tmp_path / "hard.safetensors", b),
        ([str(tmp_path / "g_*.safetensors"), b], b, None),
    ]:
        with pytest.raises(embeval.InputFileError) as err:
            embeval.load_many(given)
        also = f" (also given as {first})" if first else ""
        assert str(err.value).startswith(f"{named}: given twice{also}: its items would count")
    assert embeval.load_many([a, b]).n == 6
