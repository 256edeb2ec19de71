"""Running the command line from tests: in this process (fast), or the installed command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from embeval.cli import main

TESTS = Path(__file__).resolve().parents[1]  # tests/: helpers.models importable


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run the command line in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def cli_run(capsys: pytest.CaptureFixture[str], *args: object) -> subprocess.CompletedProcess[str]:
    """:func:`cli` with the installed command's result shape (returncode, stdout, stderr)."""
    rc, out, err = cli(capsys, *args)
    return subprocess.CompletedProcess(["embeval", *map(str, args)], rc, out, err)


def run_extract(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``embeval extract`` (the tests folder importable, for module:callable)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(["embeval", "extract", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def without_time(text: str, *drop: str) -> dict:
    """A ``--json`` object without its ``elapsed_s`` (and the keys ``drop``)."""
    data = json.loads(text)
    for key in ("elapsed_s", *drop):
        data.pop(key)
    return data


HANG_GUARD = 120  # seconds: only a guard against a command that blocks, never a timing assertion


def run_installed(*args: object) -> subprocess.CompletedProcess[str]:
    """The installed ``embeval ARGS`` in a child (one intra-op thread); a hang fails the test."""
    try:
        return subprocess.run([shutil.which("embeval") or "embeval", *map(str, args)],
                              capture_output=True, text=True, timeout=HANG_GUARD,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"embeval {' '.join(map(str, args))} blocked")


def one_error_line(res: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one stderr line of a refused command (exit 2, no traceback), containing ``words``."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], res.stderr
    return lines[0]
