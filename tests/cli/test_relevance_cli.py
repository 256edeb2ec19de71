"""--relevance FILE on the command line: in this process and through the installed command."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.cli import cli, without_time

import embeval
from embeval.data.relevance import read_relevance

EXE = shutil.which("embeval")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("relevance")
    g = torch.Generator().manual_seed(5)
    q = embeval.save(d / "q.safetensors", torch.randn(12, 6, generator=g),
                     torch.randint(0, 3, (12,), generator=g))
    gal = embeval.save(d / "g.safetensors", torch.randn(40, 6, generator=g),
                       torch.randint(0, 3, (40,), generator=g))
    rows = ["query,gallery,relevance"] + [f"{i},{(7 * i + t) % 40},{1 if t % 2 else -1}"
                                          for i in range(11) for t in range(6)]
    rel = d / "rel.csv"
    rel.write_text("\n".join(rows) + "\n")
    return {"q": q, "g": gal, "rel": rel}


def test_cmc_with_relevance_equals_the_python_api(capsys, files) -> None:
    rc, out, err = cli(capsys, "cmc", files["q"], files["g"], "--relevance", files["rel"], "-k",
                       1, 5, "--json", "--device", "cpu")
    assert rc == 0, err
    data = json.loads(out)
    q, g = embeval.load(files["q"]), embeval.load(files["g"])
    want = embeval.evaluate(q, g, ks=(1, 5), device="cpu",
                            relevance=read_relevance(files["rel"], q.n, g.n))
    assert data["metrics"] == {k: want.metrics[k] for k in data["metrics"]}
    assert data["n_valid"] == 11 and data["inputs"]["relevance"][0]["file"] == str(files["rel"])
    plain = json.loads(cli(capsys, "cmc", files["q"], files["g"], "-k", 1, 5, "--json")[1])
    assert plain["metrics"] != data["metrics"]


def test_bad_relevance_exits_2_naming_file_and_line(capsys, files, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("query,gallery,relevance\n0,1,1\n0,40,1\n")
    rc, out, err = cli(capsys, "knn", files["q"], files["g"], "--relevance", bad)
    assert rc == 2 and out == ""
    assert err.strip().endswith(f"{bad}: line 3: gallery index 40 is out of range [0, 40) "
                                "(0-based row of the embedding file)"), err
    rc, _, err = cli(capsys, "pr", files["q"], files["g"], "--relevance", tmp_path / "absent.csv")
    assert rc == 2 and "absent.csv: no such file" in err
    rc, _, err = cli(capsys, "verify", files["q"], files["g"], "--relevance", bad)
    assert rc == 2 and "No such option: --relevance" in err


@pytest.mark.slow
@pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")
def test_installed_command_shards_merge_to_the_whole_run(files, tmp_path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The whole run through the installed command; the shards and merges in process."""
    base = ("score", files["q"], files["g"], "--relevance", files["rel"], "-k", 1, 3)
    whole = subprocess.run([EXE, *map(str, base), "--json"], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    parts = [tmp_path / f"part{i}.safetensors" for i in range(2)]
    for i, part in enumerate(parts):
        assert cli(capsys, *base, "--shard", f"{i}/2", "--out-part", part)[0] == 0
    rc, merged, err = cli(capsys, "merge", *parts, "--json")
    assert rc == 0, err
    assert without_time(merged) == without_time(whole.stdout)
    other = tmp_path / "other.csv"
    other.write_text(files["rel"].read_text().replace(",-1\n", ",1\n", 1))
    mixed_part = tmp_path / "other.safetensors"
    assert cli(capsys, *base[:4], other, *base[5:], "--shard", "1/2", "--out-part", mixed_part)[0] == 0
    rc, _, err = cli(capsys, "merge", parts[0], mixed_part)
    assert rc == 2 and "is from a different run" in err and "inputs.relevance" in err
