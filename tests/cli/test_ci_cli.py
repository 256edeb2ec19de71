"""--ci, --save-result and `embeval compare` on the command line (in process and installed)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.cli import cli, without_time

import embeval
from embeval.uncertainty import intervals, load_result

EXE = shutil.which("embeval")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 'models' (b = a plus noise) embedding the same 60 queries and 150 gallery items."""
    d = tmp_path_factory.mktemp("ci")
    g = torch.Generator().manual_seed(11)
    centres = torch.randn(12, 16, generator=g)
    ql, gl = torch.arange(60) % 12, torch.arange(150) % 12
    ql[-4:] = -1  # unknown identities: their own resampling units
    q = centres[ql.clamp_min(0)] + 0.9 * torch.randn(60, 16, generator=g)
    gal = centres[gl] + 0.9 * torch.randn(150, 16, generator=g)
    paths = [f"q/{i}.png" for i in range(60)]
    out = {"qa": embeval.save(d / "qa.safetensors", q, ql, paths=paths),
           "qb": embeval.save(d / "qb.safetensors", q + 0.6 * torch.randn(60, 16, generator=g), ql,
                              paths=paths),
           "g": embeval.save(d / "g.safetensors", gal, gl)}
    out["other"] = embeval.save(d / "other.safetensors", q, ql, paths=[f"x/{i}.png" for i in range(60)])
    return out


def test_ci_table_and_json(capsys, files) -> None:
    rc, out, err = cli(capsys, "cmc", files["qa"], files["g"], "-k", 1, 5, "--ci", "0.9",
                       "--bootstrap", 300, "--seed", 4, "--ci-by", "label", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["options"]["ci_level"] == 0.9 and data["options"]["ci_resamples"] == 300
    assert data["options"]["ci_seed"] == 4 and data["options"]["ci_by"] == "label"
    assert data["options"]["ci_method"] == "percentile bootstrap"
    assert set(data["ci"]) == set(data["metrics"])
    q, g = embeval.load(files["qa"]), embeval.load(files["g"])
    res = embeval.evaluate(q, g, ks=(1, 5), device="cpu")
    want = intervals(res, level=0.9, n_resamples=300, seed=4, by="label")
    assert data["ci"] == {k: list(want.bounds[k]) for k in data["ci"]}  # CLI = API
    for k, (lo, hi) in data["ci"].items():
        assert lo <= data["metrics"][k] <= hi, k
    rc, table, _ = cli(capsys, "cmc", files["qa"], files["g"], "-k", 1, "--ci", "0.9")
    lo, hi = json.loads(cli(capsys, "cmc", files["qa"], files["g"], "-k", 1, "--ci", "0.9",
                            "--json")[1])["ci"]["rank1"]
    assert f"[{100 * lo:.2f}%, {100 * hi:.2f}%]" in table
    assert "90% interval: percentile bootstrap over queries, 1000 resamples, seed 0" in table
    plain = json.loads(cli(capsys, "cmc", files["qa"], files["g"], "--json")[1])
    assert "ci" not in plain and "ci_level" not in plain["options"]


@pytest.mark.parametrize("command", ["score", "knn", "pr", "identify"])
def test_every_metric_command_takes_ci(capsys, files, command) -> None:
    rc, out, err = cli(capsys, command, files["qa"], files["g"], "--ci", "0.95", "--bootstrap",
                       200, "--json", *(["--fpir", "0.5"] if command == "identify" else []))
    assert rc == 0, err
    data = json.loads(out)
    intervals_ = {k: v for k, v in data["ci"].items() if v is not None}
    assert intervals_, data
    if command == "identify":
        assert "TPIR@FPIR=0.5" in intervals_ and "threshold@FPIR=0.5" not in data["ci"]


def test_verify_says_why_it_has_no_interval(capsys, files) -> None:
    rc, out, err = cli(capsys, "verify", files["qa"], files["g"], "--ci", "0.95", "--far", "0.1")
    assert rc == 0, err
    assert "no interval: all-pairs verification keeps trial counts" in out


def test_shards_merged_give_the_whole_runs_intervals(capsys, files, tmp_path) -> None:
    parts = []
    for i in range(3):
        part = tmp_path / f"p{i}.safetensors"
        rc, _, err = cli(capsys, "cmc", files["qa"], files["g"], "--shard", f"{i}/3",
                         "--out-part", part)
        assert rc == 0, err
        parts.append(part)
    rc, merged, err = cli(capsys, "merge", *parts, "--ci", "0.95", "--json",
                          "--save-result", tmp_path / "m.safetensors")
    assert rc == 0, err
    rc, whole, _ = cli(capsys, "cmc", files["qa"], files["g"], "--ci", "0.95", "--json",
                       "--block-size", 7)
    assert without_time(merged) == without_time(whole)
    saved = load_result(tmp_path / "m.safetensors").intervals["ci"]  # every metric's, not the shown
    assert {k: saved[k] for k in json.loads(whole)["ci"]} == json.loads(whole)["ci"]


@pytest.mark.skipif(EXE is None, reason="the embeval command is not installed")
def test_save_result_then_compare_through_the_installed_command(capsys, files, tmp_path,
                                                                 monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o027)
    try:
        for name in ("qa", "qb"):
            rc, _, err = cli(capsys, "cmc", files[name], files["g"], "--save-result",
                             f"{name}.safetensors", "--per-query", f"{name}.csv")
            assert rc == 0, err
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "qa.safetensors").stat().st_mode) == 0o640
    r = subprocess.run([EXE, "compare", "qa.safetensors", "qb.safetensors", "--json",
                        "--permutations", "2000"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    a, b = load_result(tmp_path / "qa.safetensors"), load_result(tmp_path / "qb.safetensors")
    for k, m in data["metrics"].items():
        assert m["diff"] == pytest.approx(b.metrics[k] - a.metrics[k], abs=1e-15)
        assert m["ci"][0] <= m["diff"] <= m["ci"][1] or m["ci"][0] == m["ci"][1], k
        assert 0 < m["p_value"] <= 1 and m["p_holm"] >= m["p_value"]
    assert data["options"]["permutations"] == 2000

    def compare(*args: object) -> dict:
        rc, out, err = cli(capsys, "compare", *args, "--json", "--permutations", 2000)
        assert rc == 0, err
        return json.loads(out)

    swapped = compare("qb.safetensors", "qa.safetensors")
    for k, m in data["metrics"].items():
        assert swapped["metrics"][k]["diff"] == pytest.approx(-m["diff"], abs=1e-15)
        assert swapped["metrics"][k]["p_value"] == m["p_value"]
    # the per-query CSVs (values to 6 significant digits) compare as the result files do
    csv = compare("qa.csv", "qb.csv", "-k", 1, 5, 10)
    for k in ("rank1", "rank5", "mAP", "mINP", "MRR", "MAP@R", "R-precision"):
        assert csv["metrics"][k]["a"] == pytest.approx(data["metrics"][k]["a"], abs=1e-6)
        assert csv["metrics"][k]["diff"] == pytest.approx(data["metrics"][k]["diff"], abs=1e-6)
    for k in ("rank1", "rank5"):  # 0/1 values: the same test
        assert csv["metrics"][k]["p_value"] == data["metrics"][k]["p_value"]
    table = cli(capsys, "compare", "qa.safetensors", "qb.safetensors")[1]
    assert "not corrected for the" in table and "B − A" in table


def test_compare_refuses_other_queries_and_damaged_files(capsys, files, tmp_path) -> None:
    for name in ("qa", "other"):
        assert cli(capsys, "cmc", files[name], files["g"], "--save-result",
                   tmp_path / f"{name}.safetensors")[0] == 0
    rc, out, err = cli(capsys, "compare", tmp_path / "qa.safetensors", tmp_path / "other.safetensors")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "different query items" in err
    fewer = tmp_path / "fewer.safetensors"
    q = embeval.load(files["qa"])
    embeval.save(tmp_path / "q10.safetensors", q.embeddings[:10], q.labels[:10])
    assert cli(capsys, "cmc", tmp_path / "q10.safetensors", files["g"], "--save-result", fewer)[0] == 0
    rc, _, err = cli(capsys, "compare", tmp_path / "qa.safetensors", fewer)
    assert rc == 2 and "has 60 queries but" in err and str(fewer) in err
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray((tmp_path / "qa.safetensors").read_bytes())
    data[-3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    rc, _, err = cli(capsys, "compare", tmp_path / "qa.safetensors", damaged)
    assert rc == 2 and err.strip() == (f"embeval: error: {damaged}: contents do not match the "
                                       "checksum recorded when it was written (changed or "
                                       "damaged since)")
    rc, _, err = cli(capsys, "compare", files["qa"], files["qa"])
    assert rc == 2 and "not an embeval result file" in err


@pytest.mark.parametrize(("args", "message"), [
    (("--ci", "1.5"), "--ci 1.5: must be between 0 and 1 (exclusive)"),
    (("--ci", "0.9", "--bootstrap", "0"), "--bootstrap 0: must be an integer from 1 to 1,000,000"),
    (("--seed", "3"), "--seed: sets how --ci computes its intervals: give --ci LEVEL too"),
    (("--ci", "0.9", "--ci-by", "camera"), "Invalid value for '--ci-by'"),
])
def test_bad_interval_flags_exit_2_with_one_line(capsys, files, args, message) -> None:
    rc, out, err = cli(capsys, "cmc", files["qa"], files["g"], *args)
    assert rc == 2 and out == "" and message in err, err


def test_save_result_is_an_output_like_the_others(capsys, files, tmp_path) -> None:
    rc, _, err = cli(capsys, "cmc", files["qa"], files["g"], "--save-result", files["g"])
    assert rc == 2 and "--save-result: is the input" in err and "refusing to overwrite" in err
    rc, _, err = cli(capsys, "cmc", files["qa"], files["g"], "--shard", "0/2", "--save-result",
                     tmp_path / "r.safetensors")
    assert rc == 2 and "--save-result: a --shard run writes only its partial statistics" in err
    assert not (tmp_path / "r.safetensors").exists()


def test_cmc_plot_band_is_the_interval_of_every_rank(files) -> None:
    from embeval.uncertainty.confidence import cmc_band

    q, g = embeval.load(files["qa"]), embeval.load(files["g"])
    res = embeval.evaluate(q, g, ks=(1, 2, 3, 4, 5, 6), device="cpu")
    lower, upper = cmc_band(res, 6, level=0.9, n_resamples=300, by="label")
    ci = intervals(res, level=0.9, n_resamples=300, by="label")
    assert [(lo, hi) for lo, hi in zip(lower, upper)] == [ci.bounds[f"rank{k}"] for k in range(1, 7)]
    assert all(a <= b for a, b in zip(lower, lower[1:])) and all(a <= b for a, b in zip(upper, upper[1:]))


def test_verify_listed_pairs_get_intervals(capsys, files, tmp_path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("query,gallery\n" + "".join(f"{i},{(5 * i + k) % 150}\n"
                                                 for i in range(60) for k in range(4)))
    rc, out, err = cli(capsys, "verify", files["qa"], files["g"], "--pairs", pairs, "--far", "0.1",
                       "--ci", "0.9", "--bootstrap", 200, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert set(data["ci"]) == {"TAR@FAR=0.1", "EER", "AUC"}
    for k, (lo, hi) in data["ci"].items():
        assert lo <= data["metrics"][k] <= hi
    rc, table, _ = cli(capsys, "verify", files["qa"], files["g"], "--pairs", pairs, "--far", "0.1",
                       "--ci", "0.9", "--ci-by", "label")
    assert "percentile bootstrap over query-side labels" in table
