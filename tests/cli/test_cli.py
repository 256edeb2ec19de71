"""The installed `embeval` command, run as a subprocess: output, JSON schema, files, exit codes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.cli import cli_run
from safetensors.torch import load_file, save_file

import embeval

EXE = shutil.which("embeval")
pytestmark = pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(6, 8, generator=g)
    ql, gl = torch.randint(0, 6, (40,), generator=g), torch.randint(0, 6, (90,), generator=g)
    ql[0] = -1  # one query without positives
    qe = centres[ql.clamp_min(0)] + 0.8 * torch.randn(40, 8, generator=g)
    ge = centres[gl] + 0.8 * torch.randn(90, 8, generator=g)
    cams = torch.randint(0, 2, (90,), generator=g)
    return {
        "q": embeval.save(d / "q.safetensors", qe, ql, torch.randint(0, 2, (40,), generator=g)),
        "g": embeval.save(d / "g.safetensors", ge, gl, cams),
        "dir": d,
    }


EXPECTED_KEYS = {
    "score": ["accuracy", "top1_accuracy", "top5_accuracy", "hard_pos", "hard_neg"],
    "cmc": ["rank1", "rank5", "mAP", "mINP", "MRR", "MAP@R", "R-precision", "P@1", "P@5", "nDCG@1",
            "nDCG@5"],
    "pr": ["mAP", "maxF1", "P@maxF1", "R@maxF1", "T@maxF1"],
    "knn": ["knn_accuracy"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", ["score", "cmc", "pr", "knn"])
def test_json_schema_matches_python_api(files: dict[str, Path], command: str) -> None:
    ks = {"knn": ["-k", "5"], "pr": []}.get(command, ["-k", "1", "5"])
    res = run(command, files["q"], files["g"], *ks, "--json", "--exclude-same-camera")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # not a terminal: no progress, no notes
    data = json.loads(res.stdout)
    assert list(data["metrics"]) == EXPECTED_KEYS[command]
    head = (data["command"], data["metric"], data["n_query"], data["n_gallery"])
    assert head == (command, "cosine", 40, 90)
    assert data["options"]["exclude_same_camera"] is True and data["elapsed_s"] >= 0
    api = embeval.evaluate(embeval.load(files["q"]), embeval.load(files["g"]), ks=(1, 5), knn_k=5,
                           pr=True, exclude_same_camera=True, device="cpu")
    assert data["n_valid"] == api.n_valid == 39
    for key, value in data["metrics"].items():
        assert value == pytest.approx(api.metrics[key], abs=1e-12), key
    if command == "knn":
        assert data["k"] == 5


def test_table_output_on_the_sample_data() -> None:
    root = Path(__file__).resolve().parents[2]
    res = run("cmc", "sample_data/digits/query.safetensors", "sample_data/digits/gallery.safetensors",
              "-k", "1", "5", "10", cwd=root)
    assert res.returncode == 0, res.stderr
    for word in ("rank1", "rank5", "rank10", "mAP", "mINP", "237 queries"):
        assert word in res.stdout


@pytest.mark.slow
def test_result_files(files: dict[str, Path], tmp_path: Path) -> None:
    q, g = files["q"], files["g"]
    res = run("pr", q, g, "--curves", tmp_path / "c.safetensors", "--per-query", tmp_path / "pq.csv",
              "--plot", tmp_path / "pr.png", "--json")
    assert res.returncode == 0, res.stderr
    curves = load_file(tmp_path / "c.safetensors")
    api = embeval.evaluate(embeval.load(q), embeval.load(g), pr=True, device="cpu")
    for name, t in zip(("precision", "recall", "threshold", "offsets"), api.pr_curves):
        assert torch.equal(curves[name], t), name
    rows = list(csv.DictReader(open(tmp_path / "pq.csv")))
    assert len(rows) == 40 and rows[0]["ap"] == "" and rows[0]["n_pos"] == "0"
    assert float(rows[1]["ap"]) == pytest.approx(float(api.per_query["ap"][1]), abs=1e-6)
    assert (tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"

    assert run("knn", q, g, "-k", "3", "--predictions", tmp_path / "p.csv").returncode == 0
    pred = list(csv.DictReader(open(tmp_path / "p.csv")))
    api = embeval.evaluate(embeval.load(q), embeval.load(g), knn_k=3, device="cpu")
    assert [int(r["prediction"]) for r in pred] == api.per_query["knn_pred"].tolist()

    assert run("score", q, g, "--out", tmp_path / "s.safetensors", "--metric", "euclid").returncode == 0
    full = load_file(tmp_path / "s.safetensors")["scores"]
    assert torch.equal(full, embeval.scores(embeval.load(q).embeddings, embeval.load(g).embeddings, "euclid"))
    assert run("score", q, g, "--out", tmp_path / "t.safetensors", "--out-topk", "4",
               "--metric", "euclid").returncode == 0
    top = load_file(tmp_path / "t.safetensors")
    assert top["topk_indices"].shape == (40, 4)
    best = full.gather(1, top["topk_indices"])  # engine tiles (sgemm) vs torch matmul: last bits
    assert torch.allclose(best, top["topk_scores"], atol=1e-5)
    assert torch.allclose(top["topk_scores"], full.topk(4, dim=1).values, atol=1e-5)


def write_bad(d: Path) -> dict[str, Path]:
    ok = dict(embeddings=torch.randn(4, 8), labels=torch.arange(4))
    specs = {
        "not_safetensors": b"hello",
        "no_labels": dict(embeddings=torch.randn(4, 8)),
        "int_embeddings": dict(embeddings=torch.ones(4, 8, dtype=torch.int64), labels=torch.arange(4)),
        "rank1": dict(embeddings=torch.randn(4), labels=torch.arange(4)),
        "n_mismatch": dict(embeddings=torch.randn(4, 8), labels=torch.arange(5)),
        "d_mismatch": dict(embeddings=torch.randn(4, 3), labels=torch.arange(4)),
        "nan": dict(embeddings=torch.full((4, 8), float("nan")), labels=torch.arange(4)),
        "empty": dict(embeddings=torch.randn(0, 8), labels=torch.arange(0)),
        "ok": ok,
    }
    out = {}
    for name, spec in specs.items():
        p = d / f"{name}.safetensors"
        if isinstance(spec, bytes):
            p.write_bytes(spec)
        else:
            save_file(spec, str(p))
        out[name] = p
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("case", "message"), [
    ("missing", "no such file"),
    ("not_safetensors", "not a readable safetensors file"),
    ("no_labels", "missing tensor 'labels'"),
    ("int_embeddings", "must be float32, float16 or bfloat16"),
    ("rank1", "must be 2-D"),
    ("n_mismatch", "'labels' has 5 entries but embeddings have 4 rows"),
    ("d_mismatch", "has 8-dimensional embeddings but"),
    ("nan", "contains NaN or Inf"),
    ("empty", "empty set"),
])
def test_bad_input_files_exit_2_with_one_line(tmp_path: Path, case: str, message: str) -> None:
    bad = write_bad(tmp_path)
    target = bad.get(case, tmp_path / "missing.safetensors")
    out = tmp_path / "never.csv"
    res = run("cmc", bad["ok"], target, "--per-query", out)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and target.name in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (["-k", "0"], "-k 0: must be between 1 and the gallery size (90)"),
    (["-k", "91"], "-k 91: must be between 1 and the gallery size (90)"),
    (["--metric", "manhattan"], "Invalid value for '--metric'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "meta"], "unsupported device"),
    (["--memory", "lots"], "--memory: cannot read 'lots'"),
    (["--per-query", "/dev/null/dir/x.csv"], "'/dev/null' is not a folder"),
    (["--exclude-self"], "--exclude-self needs the same set"),
    (["--aggregate", "mean", "--exclude-same-camera"], "cannot be combined"),
])
def test_bad_options_exit_2_with_one_line(files: dict[str, Path], args: list[str], message: str) -> None:
    res = run("cmc", files["q"], files["g"], *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


@pytest.mark.slow
def test_camera_protocol_needs_cameras(tmp_path: Path, files: dict[str, Path]) -> None:
    p = embeval.save(tmp_path / "nocam.safetensors", torch.randn(5, 8), torch.arange(5))
    res = run("cmc", p, files["g"], "-k", "1", "--exclude-same-camera")
    assert res.returncode == 2 and "nocam.safetensors has no 'cameras' tensor" in res.stderr


@pytest.mark.slow
def test_leave_one_out_and_python_module(files: dict[str, Path]) -> None:
    import sys
    res = subprocess.run([sys.executable, "-m", "embeval", "cmc", files["g"], files["g"], "-k", "1",
                          "--exclude-self", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    g = embeval.load(files["g"])
    api = embeval.evaluate(g, g, ks=(1,), exclude_self=True, device="cpu")
    assert json.loads(res.stdout)["metrics"]["mAP"] == pytest.approx(api.metrics["mAP"], abs=1e-12)
    assert api.metrics["rank1"] < 1.0  # without exclusion every query would find itself first


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    """The exit-2 contract: nothing on stdout, one line on stderr; returns that line."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert res.stdout == "" and len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Embeddings times 1e20: their scores overflow float32 (issue 10 item 4)."""
    d = tmp_path_factory.mktemp("huge")
    g = torch.Generator().manual_seed(5)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        for side, n in (("q", 12), ("g", 30)):
            emb = (torch.randn(n, 16, generator=g) * 1e20).to(dtype)
            out[f"{side}_{name}"] = embeval.save(d / f"{side}_{name}.safetensors", emb,
                                                 torch.randint(0, 4, (n,), generator=g))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("command", ["score", "knn", "cmc", "pr"])
@pytest.mark.parametrize("metric", ["inner", "cosine", "euclid", "sq_euclid"])
def test_overflowing_norms_exit_2_naming_the_file(capsys, huge: dict[str, Path], command: str,
                                                  metric: str) -> None:
    args = (command, huge["q_float32"], huge["g_float32"], "--metric", metric, "--device", "cpu")
    # the installed command once, the other cases in this process (the same main())
    res = run(*args) if (command, metric) == ("cmc", "inner") else cli_run(capsys, *args)
    line = one_error_line(res)
    assert line.startswith("embeval: error: ") and "embedding row" in line
    assert str(huge["q_float32"]) in line or str(huge["g_float32"]) in line
    assert f"too large for --metric {metric}" in line and "normalise" in line


@pytest.mark.parametrize("metric", ["inner", "cosine", "euclid", "sq_euclid"])
def test_overflowing_bfloat16_files_exit_2(capsys, huge: dict[str, Path], metric: str) -> None:
    res = cli_run(capsys, "cmc", huge["q_bfloat16"], huge["g_bfloat16"], "--metric", metric,
                  "--device", "cpu")
    assert "bfloat16.safetensors: embedding row" in one_error_line(res)


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "-inf"])
def test_memory_must_be_a_finite_size(capsys, files: dict[str, Path], value: str) -> None:
    args = ("cmc", files["q"], files["g"], "-k", "1", f"--memory={value}")
    res = run(*args) if value == "nan" else cli_run(capsys, *args)
    assert f"--memory: {value!r} is not a finite size" in one_error_line(res)


@pytest.mark.slow
def test_same_gallery_file_twice_is_refused(files: dict[str, Path]) -> None:
    res = run("cmc", files["q"], files["g"], files["g"])
    assert f"{files['g']}: given twice" in one_error_line(res)
    link = files["dir"] / "g_link.safetensors"
    if not link.exists():
        link.symlink_to(files["g"])
    res = run("cmc", files["q"], files["g"], link, "-k", "1")
    assert f"{link}: given twice (also given as {files['g']})" in one_error_line(res)


@pytest.mark.slow
def test_fifo_input_is_refused_without_blocking(tmp_path: Path, files: dict[str, Path]) -> None:
    fifo = tmp_path / "q.safetensors"
    os.mkfifo(fifo)
    try:
        res = subprocess.run([EXE, "cmc", str(fifo), str(files["g"]), "-k", "1"],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("embeval blocked on a FIFO")
    assert f"{fifo}: is not a regular file" in one_error_line(res)


@pytest.mark.slow
def test_reduced_precision_is_marked_approximate(capsys, files: dict[str, Path]) -> None:
    for precision, marked in (("fp32", False), ("bf16", True), ("tf32", True)):
        args = ("cmc", files["q"], files["g"], "-k", "1", "--device", "cpu", "--precision", precision)
        res = cli_run(capsys, *args, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["approximate"] is marked
        table = run(*args) if precision == "bf16" else cli_run(capsys, *args)
        assert table.returncode == 0, table.stderr
        title = table.stdout.splitlines()[0]
        assert title.startswith("embeval cmc · cosine")
        assert (f"· {precision} (approximate)" in title) is marked, title


@pytest.mark.slow
def test_numpy_style_inputs_through_the_command(capsys, tmp_path: Path, files: dict[str, Path]) -> None:
    """float64 embeddings with int32 labels give the float32 file's numbers; [N, 1] labels
    are refused naming the file and the shape."""
    q = embeval.load(files["q"])
    raw = tmp_path / "q64.safetensors"
    save_file({"embeddings": q.embeddings.double(), "labels": q.labels.int()}, str(raw))
    a = run("cmc", raw, files["g"], "-k", "1", "--json")
    b = cli_run(capsys, "cmc", files["q"], files["g"], "-k", "1", "--json")
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["metrics"] == json.loads(b.stdout)["metrics"]
    bad = tmp_path / "q_n1.safetensors"
    save_file({"embeddings": q.embeddings, "labels": q.labels[:, None].contiguous()}, str(bad))
    line = one_error_line(cli_run(capsys, "cmc", bad, files["g"], "-k", "1"))
    assert f"{bad}: 'labels' must be 1-D [N], got shape [{q.n}, 1]" in line
