"""Hostile CSV files (pairs, templates, relevance, revisited ground truth) through the installed
command: exit 2 and one short line naming the file, the line the record starts on and the cell.

Index cells are ASCII digits only (Python's ``int`` would take ``1_0``, ``+1`` and full-width
digits); a 5,000-digit cell is out of range without meeting the int-string limit, and the
message does not echo it; CR-only line endings and unterminated quotes are one line each.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import embeval
from embeval.data.safetensors_io import write_safetensors

EXE = shutil.which("embeval")
pytestmark = pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")

HUGE = "1" * 5000


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line_error(res: subprocess.CompletedProcess[str], path: Path, *parts: str) -> str:
    """The run failed with exit 2 and one line naming ``path`` and every one of ``parts``."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [x for x in res.stderr.splitlines() if "warning" not in x]
    assert len(lines) == 1, res.stderr[-2000:]
    line = lines[0]
    assert "Traceback" not in res.stderr and str(path.name) in line, line
    for part in parts:
        assert part in line, line
    assert len(line) < 400, line  # no cell is echoed whole
    return line


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("csv")
    g = torch.Generator().manual_seed(3)
    return embeval.save(d / "e.safetensors", torch.randn(12, 4, generator=g),
                        torch.arange(12) % 3)


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


PAIRS = [  # body after the header 'query,gallery', what the line must say
    ("1_0,2\n", ["line 2", "query cell '1_0' is not an integer"]),
    ("+1,2\n", ["line 2", "query cell '+1' is not an integer"]),
    ("0,\uff11\n", ["line 2", "gallery cell '\uff11' is not an integer"]),
    ("0,1\n٣,2\n", ["line 3", "query cell '٣' is not an integer"]),  # Arabic-Indic digit
    (f"0,1\n{HUGE},2\n", ["line 3", "query index 111", "(5000 characters) is out of range"]),
    (f"0,{'0' * 5000}1\n0,{HUGE}\n", ["line 3", "gallery index 111", "out of range"]),
    ('0,1\n"2,3\n4,5\n6,7\n', ["line 3", "quote", "never closed"]),
]


@pytest.mark.parametrize(("body", "parts"), PAIRS[:3])
def test_pairs_cells_are_ascii_digits(emb: Path, tmp_path: Path, body: str, parts: list[str]) -> None:
    p = _write(tmp_path / "pairs.csv", "query,gallery\n" + body)
    one_line_error(run("verify", emb, emb, "--pairs", p), p, *parts)


@pytest.mark.slow
@pytest.mark.parametrize(("body", "parts"), PAIRS[3:])
def test_pairs_hostile_cells(emb: Path, tmp_path: Path, body: str, parts: list[str]) -> None:
    p = _write(tmp_path / "pairs.csv", "query,gallery\n" + body)
    one_line_error(run("verify", emb, emb, "--pairs", p), p, *parts)


def test_cr_only_line_endings_are_one_line(emb: Path, tmp_path: Path) -> None:
    p = _write(tmp_path / "pairs.csv", "query,gallery\r0,1\r2,3\r")
    one_line_error(run("verify", emb, emb, "--pairs", p), p, "line 1", "CR-only")


@pytest.mark.slow
def test_cr_after_the_header(emb: Path, tmp_path: Path) -> None:
    p = _write(tmp_path / "pairs.csv", "query,gallery\n0,1\r2,3\r")
    one_line_error(run("verify", emb, emb, "--pairs", p), p, "line 2", "CR-only")


def test_a_folder_as_pairs_names_the_real_problem(emb: Path, tmp_path: Path) -> None:
    line = one_line_error(run("verify", emb, emb, "--pairs", tmp_path), tmp_path,
                          "is a folder, expected a CSV pairs file")
    assert ".safetensors" not in line


@pytest.mark.slow
def test_template_ids_too_long_for_int64(tmp_path: Path) -> None:
    f = tmp_path / "t.safetensors"
    with open(f, "wb") as out:
        write_safetensors(out, {"embeddings": torch.randn(4, 3), "labels": torch.tensor([0, 0, 1, 1]),
                                "templates": torch.tensor([5, 5, 7, 7])}, {"embeval.format": "1"})
    p = _write(tmp_path / "pairs.csv", f"query,gallery\n5,7\n{HUGE},7\n")
    one_line_error(run("verify", f, f, "--templates", "--pairs", p), p,
                   "line 3", "template id 111", "(5000 characters)")
    p = _write(tmp_path / "pairs.csv", "query,gallery\n5,7\n+5,7\n")
    one_line_error(run("verify", f, f, "--templates", "--pairs", p), p,
                   "line 3", "query cell '+5' is not an integer")


@pytest.mark.slow
@pytest.mark.parametrize(("body", "parts"), [
    (f"0,1,1\n0,{HUGE},1\n", ["line 3", "gallery index 111", "(5000 characters)"]),
    ("0,1,1\n1_0,1,1\n", ["line 3", "query cell '1_0' is not an integer"]),
    ('0,1,1\n"0,2,1\n', ["line 3", "never closed"]),
])
def test_relevance_cells(emb: Path, tmp_path: Path, body: str, parts: list[str]) -> None:
    p = _write(tmp_path / "rel.csv", "query,gallery,relevance\n" + body)
    one_line_error(run("cmc", emb, emb, "--relevance", p), p, *parts)


GROUND_TRUTH = [
    ("0,\uff11,easy\n", ["line 2", "gallery '\uff11' is not an integer"]),
    ("0,1,easy\n1_0,2,hard\n", ["line 3", "query '1_0' is not an integer"]),
    ("0,+1,easy\n", ["line 2", "gallery '+1' is not an integer"]),
    (f"0,1,easy\n{HUGE},2,easy\n", ["line 3", "query index 111", "(5000 characters)"]),
    ('0,1,easy\n"2,3,easy\n4,5,hard\n', ["line 3", "never closed"]),
    ("0,1,easy\n\n0,1,hard\n", ["line 4", "'hard' here but 'easy' on line 2"]),
]


def test_ground_truth_full_width_digit(emb: Path, tmp_path: Path) -> None:
    body, parts = GROUND_TRUTH[0]
    p = _write(tmp_path / "gt.csv", "query,gallery,kind\n" + body)
    one_line_error(run("cmc", emb, emb, "--protocol", "roxford", "--relevance", p), p, *parts)


@pytest.mark.slow
@pytest.mark.parametrize(("body", "parts"), GROUND_TRUTH[1:])
def test_ground_truth_cells(emb: Path, tmp_path: Path, body: str, parts: list[str]) -> None:
    p = _write(tmp_path / "gt.csv", "query,gallery,kind\n" + body)
    one_line_error(run("cmc", emb, emb, "--protocol", "roxford", "--relevance", p), p, *parts)
