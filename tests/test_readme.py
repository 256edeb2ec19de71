"""Every example in README.md runs: each fenced ``sh``, ``console`` and ``python`` block, in README
order, in one temporary folder holding a copy of ``sample_data/`` (so a README change that
breaks an example fails CI).

The folder also holds the files the examples name besides the sample data: ``query``/``q``/``Q``
and ``gallery``/``g``/``G`` ``.safetensors`` (the sample digits), the gallery in two halves
(``g_000``, ``g_001``, ``shards/g_*``, ``g/g_*``) and the four ``--shard i/4`` parts of
``cmc`` (``cmc.part-*-of-4.safetensors``). Blocks run as written, except that a leading
``pip install ... &&`` is dropped (the package under test is installed already). A ``console``
block runs its ``$ `` lines; where it shows a JSON object, every metric it shows must equal the
command's, rounded as shown. Usage synopses (``[optional]`` flags, ``a|b`` choices) are fenced
``text``: grammar, not commands. Examples that need what CI cannot have are in :data:`SKIP`, each
with its reason. The Python blocks and the Quick start run in the quick selection; the
other shell blocks (processes importing torch; training, extraction, torchrun) are marked slow.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import embeval

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LANGS = ("sh", "console", "python")

#: block (by a phrase of it) -> why it cannot run in CI
SKIP = {
    "#SBATCH --array": "a SLURM array job (the same --shard/merge path runs in tests/results)",
    "loss.backward()": "a fragment of the user's training loop: their model, loaders and CUDA",
    "pip install -e": "the development setup: installs, this test suite itself, the benchmarks",
    'pip install ".[test]" && python -m pytest': "runs this test suite",
    "embeval extract MODEL ": "a benchmark recipe: tests/layouts/test_recipes.py runs each on a "
                              "fixture in the benchmark's own format",
}
#: a command (by a phrase of it) inside a block that runs -> why it cannot run in CI
SKIP_COMMAND = {"--rdzv-endpoint $HEAD": "a rendezvous of 4 nodes"}
#: the one command-line block of the quick selection (the Quick start's); every other shell
#: block starts processes that import torch (seconds each), and is marked slow
QUICK = "pip install . && embeval cmc"


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def readme_blocks() -> list[Block]:
    """The fenced blocks of README.md in :data:`LANGS` (fences may be indented, as in a list)."""
    blocks, lines = [], README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        i += 1
        if lang in LANGS:
            blocks.append(Block(start + 1, lang, "\n".join(body) + "\n"))
    return blocks


def _param(block: Block):  # noqa: ANN202 - a pytest ParameterSet
    marks = [pytest.mark.skip(reason=why) for key, why in SKIP.items() if key in block.text]
    if block.lang != "python" and QUICK not in block.text:
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.id, marks=marks)


BLOCKS = readme_blocks()


def test_the_readme_has_examples_of_each_kind() -> None:
    """The extraction cannot silently find nothing (a renamed fence, a moved file)."""
    kinds = {b.lang for b in BLOCKS}
    assert kinds == set(LANGS) and len(BLOCKS) >= 12, [b.id for b in BLOCKS]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "sample_data", ws / "sample_data")
    digits = ws / "sample_data" / "digits"
    q, g = embeval.load(digits / "query.safetensors"), embeval.load(digits / "gallery.safetensors")
    for name in ("query", "q", "Q"):
        shutil.copy(digits / "query.safetensors", ws / f"{name}.safetensors")
    for name in ("gallery", "g", "G"):
        shutil.copy(digits / "gallery.safetensors", ws / f"{name}.safetensors")
    half = g.n // 2
    for folder in (ws, ws / "shards", ws / "g"):
        folder.mkdir(exist_ok=True)
        for i, (a, b) in enumerate(((0, half), (half, g.n))):
            embeval.save(folder / f"g_{i:03d}.safetensors", g.rows(a, b), g.labels[a:b])
    for i in range(4):
        rc = _in_process(["cmc", str(ws / "query.safetensors"), str(ws / "gallery.safetensors"),
                          "--shard", f"{i}/4", "--out-part", str(ws / f"cmc.part-{i}-of-4.safetensors")])
        assert rc == 0
    assert q.dim == g.dim
    # `torchrun` of this interpreter (a torchrun elsewhere on PATH may not see embeval)
    shim = ws / ".bin" / "torchrun"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
    shim.chmod(0o755)
    return ws


def _in_process(args: list[str]) -> int:
    from embeval.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _env(cwd: Path) -> dict[str, str]:
    """This interpreter's scripts first on PATH (the installed ``embeval``; ``torchrun``: the
    workspace's shim running this interpreter's ``torch.distributed.run``)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(cwd / ".bin"), os.path.dirname(sys.executable),
                                   env.get("PATH", "")])
    return env


def _commands(text: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped,
    a leading ``pip install ... &&`` removed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"^pip install [^&]*&&\s*", "", line)
        if not line.startswith("pip install"):
            out.append(line)
    return out


#: appended to each command: it fails when any stage of its last pipeline failed (as pipefail),
#: except a stage stopped by SIGPIPE (141) because a later one stopped reading (``sort | head
#: -4``: whether sort is still writing when head exits depends on the machine's load)
PIPE_STATUS = """
st=("${PIPESTATUS[@]}"); n=${#st[@]}
for ((i = 0; i < n; i++)); do
  if (( st[i] != 0 )) && ! (( st[i] == 141 && i < n - 1 )); then exit "${st[i]}"; fi
done"""


def _shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    for key, why in SKIP_COMMAND.items():
        if key in command:
            print(f"skipped ({why}): {command}")
            return subprocess.CompletedProcess(command, 0, "", "")
    return subprocess.run(["bash", "-c", command + PIPE_STATUS], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True, timeout=1800)


def _shown_metrics(expected: str) -> dict[str, str]:
    """``"key": number`` pairs of a console block's JSON output, numbers as written."""
    return dict(re.findall(r'"([^"]+)": (-?\d+\.\d+|-?\d+)(?=[,}\s])', expected))


def _check_console(text: str, cwd: Path) -> None:
    chunks = re.split(r"^\$ ", text, flags=re.M)[1:]
    for chunk in chunks:
        command, _, expected = chunk.partition("\n")
        out = _shell(command, cwd)
        assert out.returncode == 0, f"$ {command}\n{out.stderr}"
        if expected.lstrip().startswith("{") and out.stdout.strip():
            got = json.loads(out.stdout)["metrics"]
            for key, shown in _shown_metrics(expected).items():
                if key in got:
                    places = len(shown.partition(".")[2])
                    assert f"{got[key]:.{places}f}" == shown, (command, key, got[key], shown)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_example_runs(block: Block, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.lang == "python":
        monkeypatch.chdir(workspace)
        torch.manual_seed(0)  # restore_globals puts the generator back
        exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "readme"})
    elif block.lang == "console":
        _check_console(block.text, workspace)
    else:
        for command in _commands(block.text):
            out = _shell(command, workspace)
            assert out.returncode == 0, f"README.md:{block.line}: {command}\n{out.stderr}"


@pytest.mark.slow
def test_the_per_query_pipe_reads_only_the_csv(workspace: Path) -> None:
    """With ``--per-query -`` the CSV alone is on stdout (the table goes to stderr): the README's
    ``| sort`` recipe sorts rows, not table lines."""
    out = _shell("embeval cmc query.safetensors gallery.safetensors --per-query -", workspace)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("index,") and len(lines) == 1 + 237
    assert all(line.count(",") == lines[0].count(",") for line in lines)
    assert "rank1" in out.stderr  # the table, on stderr
