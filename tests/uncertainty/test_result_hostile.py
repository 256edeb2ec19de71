"""Result files re-signed after an edit (issue 29), through the installed command: every number
is recomputed on load or refused, in one line naming the file once; compare's counts and seeds
are bounded and named by their flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.cli import one_error_line, run_installed
from safetensors.torch import load_file

import embeval
from embeval.data.safetensors_io import tensor_digest, write_safetensors

run, one_line = run_installed, one_error_line


def resign(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    """``src`` with its JSON header edited by ``edit`` and a new, matching digest."""
    with open(src, "rb") as f:
        meta = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    tensors = {k: v.clone() for k, v in load_file(src).items()}
    header = json.loads(meta["result"])
    edit(header)
    meta["result"] = json.dumps(header, separators=(",", ":"))
    meta["sha256"] = tensor_digest(tensors, prefix=meta["result"].encode("utf-8"))
    with open(dst, "wb") as f:
        write_safetensors(f, tensors, meta)
    return dst


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("resigned")
    g = torch.Generator().manual_seed(3)
    q = embeval.save(d / "q.safetensors", torch.randn(24, 6, generator=g),
                     torch.randint(0, 4, (24,), generator=g))
    gal = embeval.save(d / "g.safetensors", torch.randn(40, 6, generator=g),
                       torch.randint(0, 4, (40,), generator=g))
    out = {"dir": d, "cmc": d / "cmc.result", "verify": d / "verify.result"}
    assert run("cmc", q, gal, "--ci", "0.9", "--bootstrap", "200", "--save-result",
               out["cmc"]).returncode == 0
    assert run("verify", q, gal, "--save-result", out["verify"]).returncode == 0
    return out


def set_(key: str, value: object):  # noqa: ANN201
    def edit(h: dict) -> None:
        h[key] = value
    return edit


def set_metric(key: str, value: float):  # noqa: ANN201
    def edit(h: dict) -> None:
        h["metrics"][key] = value
    return edit


def forge_interval(h: dict) -> None:
    h["intervals"]["ci"]["mAP"] = [0.0, 1.0]


def drop_interval_options(h: dict) -> None:
    h["intervals"] = {"ci": {"mAP": [0.1, 0.2]}}


CASES = [  # (result kind, edit, command, words of the one error line)
    ("verify", set_metric("AUC", 0.99), "report", "metric AUC"),
    ("verify", set_metric("EER", 0.01), "report", "metric EER"),
    ("verify", set_("n_gallery", 41), "compare", "n_gallery 41"),
    ("cmc", set_("n_gallery", 3), "compare", "n_gallery 3"),
    ("cmc", forge_interval, "report", "interval of mAP"),
    ("cmc", drop_interval_options, "report", "interval block"),
    ("cmc", set_("options", [1, 2]), "report", "'options'"),
    ("cmc", set_("inputs", ["a"]), "report", "'inputs'"),
    ("cmc", set_("n_query", "24"), "compare", "'n_query'"),
]


@pytest.mark.parametrize(("kind", "edit", "command", "words"), CASES[:1] + [
    pytest.param(*c, marks=pytest.mark.slow) for c in CASES[1:]])
def test_a_resigned_edit_is_refused_in_one_line_naming_the_file_once(saved, tmp_path, kind, edit,
                                                                      command, words):
    bad = resign(saved[kind], tmp_path / "edited.result", edit)
    args = ["--out", tmp_path / "r.html"] if command == "report" else [saved[kind]]
    res = run(command, bad, *args)
    line = one_line(res, words)
    assert line.count(str(bad)) == 1, line
    assert not (tmp_path / "r.html").exists()


def test_an_unedited_file_still_loads(saved, tmp_path):
    same = resign(saved["verify"], tmp_path / "same.result", lambda h: None)
    assert run("report", same, "--out", tmp_path / "v.html").returncode == 0


@pytest.mark.slow
def test_cmc_against_verify_is_refused_in_one_line(saved):
    one_line(run("compare", saved["cmc"], saved["verify"]), "cmc result", "verify result")


@pytest.mark.slow
@pytest.mark.parametrize(("args", "words"), [
    (["--seed", str(10**23)], ["--seed", f"{2**63 - 1:,}"]),
    (["--seed", "-1"], ["--seed"]),
    (["--permutations", "0"], ["--permutations"]),
    (["--permutations", str(10**12)], ["--permutations", "1,000,000"]),
    (["--permutations", str(2**63)], ["--permutations"]),
    (["--bootstrap", str(10**9)], ["--bootstrap", "1,000,000"]),
])
def test_compare_bounds_its_counts_and_names_its_flags(saved, args, words):
    line = one_line(run("compare", saved["cmc"], saved["cmc"], *args), *words)
    assert "--n-permutations" not in line and len(line) < 300


def test_cmc_ci_bootstrap_beyond_the_limit_is_refused(saved):
    d = saved["dir"]
    line = one_line(run("cmc", d / "q.safetensors", d / "g.safetensors", "--ci", "0.95",
                        "--bootstrap", str(10**9)), "--bootstrap", "1,000,000")
    assert len(line) < 300


@pytest.mark.slow
def test_a_larger_n_gallery_under_exclude_self_is_refused_in_one_line(saved, tmp_path):
    q = saved["dir"] / "q.safetensors"
    good = tmp_path / "self.result"
    assert run("cmc", q, q, "--exclude-self", "--save-result", good).returncode == 0
    bad = resign(good, tmp_path / "edited.result", set_("n_gallery", 25))
    line = one_line(run("compare", bad, good), "n_gallery 25", "exclude_self")
    assert line.count(str(bad)) == 1, line
