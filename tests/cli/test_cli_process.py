"""The process contract of the installed `embeval`: exit codes, signals, pipes, notes on stderr,
what --json says about where a number came from."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.cli import cli_run

import embeval

EXE = shutil.which("embeval")
pytestmark = pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")


def run(*args: object, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("process")
    g = torch.Generator().manual_seed(11)
    return {"q": embeval.save(d / "q.safetensors", torch.randn(20, 6, generator=g),
                              torch.randint(0, 4, (20,), generator=g)),
            "g": embeval.save(d / "g.safetensors", torch.randn(50, 6, generator=g),
                              torch.randint(0, 4, (50,), generator=g))}


def test_version():
    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith(f"embeval {embeval.__version__} (torch ")


def test_knn_takes_one_k(files):
    res = run("knn", files["q"], files["g"], "-k", "1", "5")
    assert res.returncode == 2
    assert res.stderr.strip() == "embeval knn: error: -k takes one number, got 1 5"


def test_out_topk_needs_out(files):
    res = run("score", files["q"], files["g"], "--out-topk", "3")
    assert res.returncode == 2 and "--out-topk: needs --out" in res.stderr


def test_json_names_version_and_inputs(files):
    data = json.loads(run("cmc", files["q"], files["g"], "--json").stdout)
    assert data["embeval"] == embeval.__version__
    (q,), (g,) = data["inputs"]["query"], data["inputs"]["gallery"]
    assert q["file"] == str(files["q"].resolve()) and g["size"] == files["g"].stat().st_size
    assert len(q["sha256"]) == 64 and q["sha256"] != g["sha256"]


def test_same_file_without_exclude_self_warns_once(capsys, files):
    res = run("cmc", files["g"], files["g"], "-k", "1", "--json")
    assert res.returncode == 0
    assert res.stderr.count("warning:") == 1 and "--exclude-self" in res.stderr
    assert cli_run(capsys, "cmc", files["g"], files["g"], "-k", "1", "--exclude-self").stderr == ""
    assert cli_run(capsys, "cmc", files["q"], files["g"], "-k", "1").stderr == ""


@pytest.mark.slow
def test_a_shard_run_says_where_its_part_went(files, tmp_path):
    part = tmp_path / "p.safetensors"
    res = run("cmc", files["q"], files["g"], "--shard", "1/2", "--out-part", part)
    assert res.returncode == 0 and part.is_file()
    assert res.stderr.strip() == (f"embeval cmc: shard 1/2 (gallery items 25:50 of 50) written to "
                                  f"{part}")


@pytest.mark.slow
def test_a_closed_stdout_exits_141_quietly(files):
    """`embeval ... | head -1`: the reader leaves early; no traceback, the SIGPIPE status."""
    proc = subprocess.Popen([EXE, "cmc", files["q"], files["g"], "--per-query", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == ""


@pytest.mark.slow
@pytest.mark.parametrize("numba_cache", ["warm", "empty"])
def test_ctrl_c_says_interrupted(tmp_path, numba_cache):
    """SIGINT during the ranking pass, or while numba compiles its kernels (a first run, with an
    empty cache): one line, exit code 130."""
    g = torch.Generator().manual_seed(0)
    big = embeval.save(tmp_path / "big.safetensors", torch.randn(20000, 64, generator=g),
                       torch.randint(0, 10000, (20000,), generator=g))
    proc = subprocess.Popen([EXE, "pr", big, big, "--exclude-self", "--block-size", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EMBEVAL_THREADS": "1",
                                 **({"NUMBA_CACHE_DIR": str(tmp_path / "nb")}
                                    if numba_cache == "empty" else {})})
    maps = Path(f"/proc/{proc.pid}/maps")
    for _ in range(600):  # until torch is loaded (not a timing assertion: a wait)
        if proc.poll() is not None or not maps.exists() or "libtorch" in maps.read_text():
            break
        time.sleep(0.1)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal came")
    assert proc.returncode == 130 and err.strip() == "embeval: interrupted", err


def test_csv_files_have_unix_line_endings_and_paths(tmp_path):
    """`grep ',0$' predictions.csv` finds the misses; rows name the query images, openable from
    where extract ran (the file's `source` folder joined to each item's path; a source that is
    not a folder, such as sklearn's digits loader, is not joined)."""
    g = torch.Generator().manual_seed(2)
    names = [f"c{i % 3}/{i:03d}.png" for i in range(12)]
    source = tmp_path / "imgs" / "query"
    source.mkdir(parents=True)
    emb, labels = torch.randn(12, 4, generator=g), torch.arange(12) % 3
    q = embeval.save(tmp_path / "q.safetensors", emb, labels, paths=names, metadata={"source": str(source)})
    loader = embeval.save(tmp_path / "digits.safetensors", emb, labels, paths=names,
                          metadata={"source": "sklearn.datasets.load_digits (query split)"})
    gal = embeval.save(tmp_path / "g.safetensors", torch.randn(30, 4, generator=g), torch.arange(30) % 3)
    pred, pq = tmp_path / "pred.csv", tmp_path / "pq.csv"
    assert run("knn", q, gal, "-k", "3", "--predictions", pred).returncode == 0
    assert run("cmc", q, gal, "--per-query", pq).returncode == 0
    for f in (pred, pq):
        assert b"\r" not in f.read_bytes()
    rows = pred.read_text().splitlines()
    assert rows[0] == "index,path,label,prediction,correct"
    assert rows[1].startswith(f"0,{source}/c0/000.png,0,")
    misses = subprocess.run(["grep", "-c", ",0$", pred], capture_output=True, text=True).stdout
    assert int(misses) == sum(r.endswith(",0") for r in rows[1:]) > 0
    header = pq.read_text().splitlines()[0]
    assert header == ("index,path,label,n_pos,first_rank,last_rank,ap,hard_pos,hard_neg,"
                      "hard_neg_index,hard_neg_label,rr,map_at_r,r_precision")  # the gallery file
    # records no paths (no hard_neg_path)
    pred2 = tmp_path / "pred2.csv"
    assert run("knn", loader, gal, "-k", "3", "--predictions", pred2).returncode == 0
    assert pred2.read_text().splitlines()[1].startswith("0,c0/000.png,0,")
