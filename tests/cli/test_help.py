"""What users read: every command's ``--help`` and the ``extract`` summary, through the
installed ``embeval`` command, not a terminal (as in logs), at a given width."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]  # tests/
COMMANDS = ["cmc", "score", "knn", "pr", "merge", "extract", "train"]


def embeval(*args: str, columns: int = 100, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("FORCE_COLOR", None)
    return subprocess.run(["embeval", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


@pytest.mark.slow
@pytest.mark.parametrize("columns", [100, 60])
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_reads_like_a_cli(command, columns):
    r = embeval(*([command] if command else []), "--help", columns=columns)
    assert r.returncode == 0 and r.stderr == ""
    text = r.stdout
    assert text.count("Usage: embeval") == 1
    for leak in ("{", "}", "<bool>", "<list[", "<path>", "<str>", "<int>", "<float>", "<tuple"):
        assert leak not in text, f"{leak!r} in `embeval {command} --help`"
    assert not re.search(r"--k\b", text)  # -k has one spelling
    assert "Examples:" in text and re.search(r"^\W*\$ embeval ", text, re.M)


@pytest.mark.parametrize(("command", "usage"), [
    ("cmc", "Usage: embeval cmc [OPTIONS] QUERY GALLERY..."),
    ("knn", "Usage: embeval knn [OPTIONS] QUERY GALLERY..."),
    ("merge", "Usage: embeval merge [OPTIONS] PARTS..."),
    ("extract", "Usage: embeval extract [OPTIONS] MODEL [IMAGES]"),
    ("train", "Usage: embeval train [OPTIONS] [TRAIN_DIR]"),
])
def test_usage_line_names_the_arguments_as_click_does(command, usage):
    assert usage in embeval(command, "--help").stdout


def test_options_show_their_values_and_flags_show_none():
    lines = embeval("cmc", "--help", columns=200).stdout.splitlines()
    help_column = next(line for line in lines if "Show this message" in line).index("Show this")
    rows = {}  # option -> what stands between it and its help text: the value it takes
    for line in lines:
        m = re.match(r"^\W*?(-k|--[\w-]+)", line)
        if m:
            rows[m.group(1)] = line[m.end():help_column].strip()
    assert rows["-k"] == "K..." and rows["--per-query"] == "FILE" and rows["--shard"] == "I/N"
    assert rows["--memory"] == "SIZE" and rows["--metric"] == "METRIC"
    for flag in ("--json", "--exclude-self", "--exclude-same-camera", "--help"):
        assert rows[flag] == "", flag
    train = embeval("train", "--help", columns=200).stdout
    assert "pip install 'embeval[tensorboard]'" in train  # a bracket, not Rich markup


def test_extract_summary_never_cuts_a_path(tmp_path):
    from helpers.images import image_folder

    image_folder(tmp_path / "imgs", {"a": 2, "b": 2}, size=(8, 8))
    out = tmp_path / ("a_rather_long_folder_name_for_embeddings_" * 3) / "query_embeddings.safetensors"
    out.parent.mkdir()
    r = embeval("extract", "helpers.models:tiny_net", "imgs", "-o", str(out), "--size", "8", "8",
                "--workers", "0", columns=40, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.exists()
    assert f"images: {out}" in r.stdout.splitlines()  # whole, on one line
    assert "…" not in r.stdout
