"""Running the command line from tests: in this process (fast), or the installed command."""

from __future__ import annotations

import json
import os
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
