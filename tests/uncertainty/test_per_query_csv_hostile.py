"""``compare`` of two ``--per-query`` CSVs with impossible or hostile cells (issue 29): each is
one line naming the file, the line and the column; a FIFO never blocks; nothing overflows."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.cli import cli

EXE = shutil.which("embeval")
HEADER = "index,label,n_pos,first_rank,last_rank,ap,hard_pos,hard_neg,rr"
ROWS = ["0,2,2,1,3,0.833333,0.5,0.4,1", "1,3,1,2,2,0.5,0.3,0.6,0.5", "2,4,0,,,,,0.2,"]


def write(path: Path, rows: list[str], *, header: str = HEADER, end: str = "\n") -> Path:
    path.write_text(end.join([header, *rows]) + end, newline="")
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write(tmp_path / "a.csv", ROWS)


def refused(capsys, good: Path, bad: Path, *words: str, args: tuple[str, ...] = ()) -> str:  # noqa: ANN001
    rc, out, err = cli(capsys, "compare", good, bad, *args)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err and out == "", err
    for w in words:
        assert w in lines[0], err
    assert len(lines[0]) < 400
    return lines[0]


@pytest.mark.parametrize(("row", "column"), [
    ("1,3,1,2,2,5,0.3,0.6,0.5", "ap"), ("1,3,1,2,2,-1,0.3,0.6,0.5", "ap"),
    ("1,3,1,0,2,0.5,0.3,0.6,0.5", "first_rank"), ("1,3,1,2.5,3,0.5,0.3,0.6,0.5", "first_rank"),
    ("1,3,1,2,-inf,0.5,0.3,0.6,0.5", "last_rank"), ("1,3,1,2,0,0.5,0.3,0.6,0.5", "last_rank"),
    ("1,3,1,inf,2,0.5,0.3,0.6,0.5", "first_rank"), ("1,3,1,2,2,0.5,1e308,0.6,0.5", "hard_pos"),
    ("1,3,1,2,2,0.5,0.3,nan,0.5", "hard_neg"), ("1,3,1,2,2,0.5,0.3,0.6,1.5", "rr"),
    ("1,1_0,1,2,2,0.5,0.3,0.6,0.5", "label"), ("1,3," + "9" * 5000 + ",2,2,0.5,0.3,0.6,0.5", "n_pos"),
    ("1,3,1,2,2," + "1" * 5000 + ",0.3,0.6,0.5", "ap"),
])
def test_impossible_cells_name_file_line_and_column(capsys, tmp_path, good, row, column):
    bad = write(tmp_path / "b.csv", [ROWS[0], row, ROWS[2]])
    refused(capsys, good, bad, str(bad), "line 3", repr(column))


def test_inconsistent_ranks_are_refused(capsys, tmp_path, good):
    bad = write(tmp_path / "b.csv", [ROWS[0], "1,3,4,2,2,0.5,0.3,0.6,0.5", ROWS[2]])
    refused(capsys, good, bad, str(bad), "line 3", "n_pos")


@pytest.mark.parametrize("what", ["nul", "cr", "long"])
def test_nul_lone_cr_and_huge_fields_are_one_line(capsys, tmp_path, good, what):
    bad = tmp_path / "b.csv"
    if what == "nul":
        write(bad, [ROWS[0], "1,3,1,2,2,0.5\0,0.3,0.6,0.5", ROWS[2]])
    elif what == "cr":
        write(bad, ROWS, end="\r")
    else:
        write(bad, [ROWS[0], '1,3,1,2,2,0.5,0.3,0.6,"' + "x" * 200_000 + '"', ROWS[2]])
    refused(capsys, good, bad, str(bad), "line")


def test_k_beyond_any_rank_is_one_line(capsys, good):
    refused(capsys, good, good, "-k", args=("-k", str(10**30)))


@pytest.mark.slow
def test_a_fifo_csv_is_refused_without_blocking(tmp_path, good):
    fifo = tmp_path / "b.csv"
    os.mkfifo(fifo)
    try:
        res = subprocess.run([EXE, "compare", str(good), str(fifo)], capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("compare blocked on a FIFO")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "not a regular file" in lines[0], res.stderr


def test_good_csvs_still_compare(capsys, good):
    rc, out, err = cli(capsys, "compare", good, good, "--json")
    assert rc == 0 and '"mAP"' in out, err
