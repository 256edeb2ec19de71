"""What the commands say (issue 30, a newcomer's first hour): a re-ranked table says so, an output
on stdout leaves stdout to it, help offers only the flags a command accepts, the first compiled
run names its wait, and ``train --projector-samples`` is a flag. In-process runs of the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import cli_run, one_error_line

from embeval.cli._app import _Update

DIGITS = Path(__file__).resolve().parents[2] / "sample_data" / "digits"
Q, G = DIGITS / "query.safetensors", DIGITS / "gallery.safetensors"


def test_a_reranked_table_says_so_in_its_title(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli_run(capsys, "cmc", Q, G, "-k", "1", "--qe", "average", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "embeval cmc · cosine · re-ranked (QE average k=10)"
    plain = cli_run(capsys, "cmc", Q, G, "-k", "1", "--device", "cpu")
    assert plain.stdout.splitlines()[0] == "embeval cmc · cosine"


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_an_output_on_stdout_leaves_stdout_to_it(capsys: pytest.CaptureFixture[str],
                                                 json_flag: list[str]) -> None:
    """``--per-query - | sort``: the CSV alone on stdout, the table (or JSON) on stderr."""
    r = cli_run(capsys, "cmc", Q, G, "-k", "1", "--per-query", "-", "--device", "cpu", *json_flag)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("index,path,label") and len(lines) == 238
    assert ("rank1" in r.stderr) and ("{" in r.stderr) == bool(json_flag)
    after = cli_run(capsys, "cmc", Q, G, "-k", "1", "--device", "cpu", "--json")  # put back
    assert json.loads(after.stdout)["metrics"]["rank1"] > 0.9


@pytest.mark.parametrize("command, absent", [("verify", ["--aggregate", "--no-positive"]),
                                             ("identify", ["--no-positive"])])
def test_help_offers_only_accepted_flags(capsys: pytest.CaptureFixture[str], command: str,
                                         absent: list[str]) -> None:
    r = cli_run(capsys, command, "--help")
    assert r.returncode == 0 and "--exclude-self" in r.stdout
    assert not [flag for flag in absent if flag in r.stdout]
    r = cli_run(capsys, command, Q, G, absent[0], "skip")
    assert r.returncode == 2 and f"No such option: {absent[0]}" in r.stderr


@pytest.mark.parametrize("command", ["cmc", "pr", "verify"])
def test_plot_help_names_every_format(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = " ".join(cli_run(capsys, command, "--help").stdout.replace("│", " ").split())
    assert "PNG, SVG or PDF" in text


def test_a_stage_replaces_the_description_until_the_next_update() -> None:
    """The engine's ``progress.stage("compiling kernels (once)")`` shows in place of "ranking"
    (not "0/? items") until the pass reports progress."""
    seen: list[dict] = []
    update = _Update(lambda **kw: seen.append(kw), "ranking")
    update.stage("compiling kernels (once)")
    update(10, 100)
    update(20, 100)
    assert seen == [{"description": "compiling kernels (once)"},
                    {"completed": 10, "total": 100, "description": "ranking"},
                    {"completed": 20, "total": 100}]


def test_the_engine_names_the_compile_when_kernels_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import embeval
    from embeval.engine import kernels

    calls: list[tuple] = []

    class Progress:
        def __call__(self, done: int, total: int) -> None:
            calls.append(("update", done, total))

        def stage(self, text: str) -> None:
            calls.append(("stage", text))

    q = embeval.EmbeddingSet(torch.randn(40, 4), torch.arange(40) % 3)
    for pending in (True, False):
        calls.clear()
        monkeypatch.setattr(kernels, "pending", lambda pending=pending: pending)
        embeval.rank_stats(q, q, metric="inner", backend="numba", progress=Progress())
        assert (calls[0] == ("stage", "compiling kernels (once)")) == pending
        assert calls[-1] == ("update", 40, 40)


def test_projector_samples_is_a_train_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "--projector-samples" in cli_run(capsys, "train", "--help").stdout
    r = cli_run(capsys, "train", tmp_path, "--query", tmp_path, "--gallery", tmp_path, "--out-dir",
                tmp_path / "run", "--projector-samples", "-1")
    assert r.returncode == 2 and "projector" in r.stderr.lower() and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["cmc", "pr", "verify", "merge"])
def test_a_plot_suffix_that_names_no_format_is_refused_first(
        command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``--plot roc.txt``: one line before any work, nothing written (verify and pr used to
    compute everything, then fail in matplotlib with a traceback)."""
    args: list[object] = [Q, G]
    if command == "merge":
        part = tmp_path / "p0.part"
        assert cli_run(capsys, "verify", Q, G, "--shard", "0/1", "--out-part", part).returncode == 0
        args = [part]
    plot = tmp_path / "roc.txt"
    r = cli_run(capsys, command, *args, "--plot", plot)
    one_error_line(r, f"--plot {plot}: the file's suffix chooses the format: .png, .svg or .pdf")
    assert not plot.exists()
