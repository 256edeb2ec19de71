"""Start-up: the command line parses and checks its arguments before torch loads.

Each case runs a fresh interpreter (the modules a process has imported are the oracle), and
one runs the installed ``embeval`` script under ``-X importtime``. No timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "digits"
HEAVY = ("torch", "numba", "numpy", "PIL", "yaml", "safetensors")

# run embeval.cli.main(ARGS) and report its exit code and the heavy modules it imported
PROBE = f"""
import json, sys
from embeval.cli import main
try:
    main(sys.argv[2:])
    code = 0
except SystemExit as e:
    code = e.code
heavy = [m for m in {HEAVY!r} if m in sys.modules]
with open(sys.argv[1], "w") as f:
    json.dump({{"code": code, "heavy": heavy}}, f)
"""


def probe(tmp_path: Path, *args: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-c", PROBE, str(report), *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "100"})
    assert report.exists(), r.stderr
    return json.loads(report.read_text()), r


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["--help"], ["cmc", "--help"], ["score", "--help"], ["knn", "--help"], ["pr", "--help"],
    ["merge", "--help"], ["extract", "--help"], ["train", "--help"],
])
def test_help_imports_no_heavy_module(tmp_path, args):
    result, r = probe(tmp_path, *args)
    assert result == {"code": 0, "heavy": []}, r.stderr
    assert "Usage: embeval" in r.stdout


def test_a_typo_is_exit_2_without_torch(tmp_path):
    result, r = probe(tmp_path, "cmcc")
    assert result == {"code": 2, "heavy": []}
    assert "No such command 'cmcc'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("args", "line"), [
    (["cmc", "missing.safetensors", str(SAMPLE / "gallery.safetensors")],
     "embeval: error: missing.safetensors: no such file"),
    (["score", str(SAMPLE / "query.safetensors"), "g_*.safetensors", "-k", "1", "5"],
     "embeval: error: g_*.safetensors: no file matches this pattern"),
    (["knn", str(SAMPLE / "query.safetensors"), str(SAMPLE / "gallery.safetensors"), "gone.safetensors"],
     "embeval: error: gone.safetensors: no such file"),
    (["pr", ".", str(SAMPLE / "gallery.safetensors")],
     "embeval: error: .: is a folder, expected a .safetensors embedding file"),
    (["merge", "cmc.part-*-of-4.safetensors"],
     "embeval: error: cmc.part-*-of-4.safetensors: no file matches this pattern"),
    # verify builds and checks its Job (embeval.jobs.job, .verify: torch-free) before the files
    (["verify", "missing.safetensors", str(SAMPLE / "gallery.safetensors"), "--folds", "3"],
     "embeval: error: --folds: the LFW protocol splits listed trials: give --pairs too"),
    (["verify", "missing.safetensors", str(SAMPLE / "gallery.safetensors")],
     "embeval: error: missing.safetensors: no such file"),
])
def test_a_wrong_path_is_one_line_exit_2_without_torch(tmp_path, args, line):
    result, r = probe(tmp_path, *args)
    assert result == {"code": 2, "heavy": []}, r.stderr
    assert r.stderr.splitlines() == [line] and r.stdout == ""


@pytest.mark.slow
def test_a_real_run_still_loads_the_core(tmp_path):
    result, r = probe(tmp_path, "cmc", str(SAMPLE / "query.safetensors"),
                      str(SAMPLE / "gallery.safetensors"), "-k", "1", "--json")
    assert result["code"] == 0 and "torch" in result["heavy"], r.stderr
    assert json.loads(r.stdout)["metrics"]["rank1"] > 0.5


def test_installed_command_help_under_importtime(tmp_path):
    """The console script itself: ``-X importtime`` (PYTHONPROFILEIMPORTTIME) lists every import."""
    r = subprocess.run(["embeval", "--help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "embeval.cli" in imported and "typer" in imported  # the profile is there
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


LAZY_API = """
import sys
import embeval
assert "torch" not in sys.modules, "import embeval loaded torch"
assert set(embeval.__all__) <= set(dir(embeval))
ev = embeval.evaluate
assert callable(ev) and "torch" in sys.modules
from embeval.evaluation import evaluate
assert ev is evaluate and embeval.evaluate is evaluate
for name in embeval.__all__:
    getattr(embeval, name)
import embeval.metrics
assert embeval.metrics is sys.modules["embeval.metrics"]
assert embeval.data.store.load is embeval.load and embeval.data.concat.load_many is embeval.load_many
try:
    embeval.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("embeval.no_such_name did not raise")
from embeval import *  # noqa: F403
assert load_many and EmbeddingSet and METRICS  # noqa: F405
print("ok")
"""


SUBMODULE_FIRST = """
import sys, types
import embeval
assert embeval.verification is sys.modules["embeval.verification"]  # a subpackage, before any name
assert type(embeval) is types.ModuleType  # a plain module: no class guards a shadowed name
from embeval.evaluation import EvalResult  # the submodule, before embeval.evaluate
from embeval.evaluation import evaluate
assert embeval.evaluate is evaluate, embeval.evaluate
assert embeval.evaluation is sys.modules["embeval.evaluation"]
assert "torch" in sys.modules
print("ok")
"""


@pytest.mark.slow
def test_embeval_evaluate_is_the_function_and_its_submodule_a_module(tmp_path):
    r = subprocess.run([sys.executable, "-c", SUBMODULE_FIRST], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_no_public_function_shares_a_submodules_name():
    """A public name that is also a submodule's name would be shadowed when that submodule loads."""
    import importlib.util

    import embeval

    clashes = [name for name in embeval.__all__ if name != "metrics" and not name.startswith("__")
               and importlib.util.find_spec(f"embeval.{name}") is not None]
    assert clashes == []
    assert "metrics" in embeval.__all__ and "__version__" in embeval.__all__


@pytest.mark.slow
def test_import_embeval_is_lazy_and_every_public_name_resolves(tmp_path):
    r = subprocess.run([sys.executable, "-c", LAZY_API], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_the_torch_free_vocabularies_are_the_cores():
    from embeval import _vocab
    from embeval.extract import images, models
    from embeval.train import config as train_config

    assert tuple(models.BACKBONES) == _vocab.BACKBONE_NAMES
    assert images.LAYOUTS is _vocab.LAYOUTS and train_config.CHOICES["layout"] is _vocab.LAYOUTS
    assert (images.IMAGENET_MEAN, images.IMAGENET_STD) == (_vocab.IMAGENET_MEAN, _vocab.IMAGENET_STD)


@pytest.mark.slow
def test_a_metric_command_imports_only_what_it_uses(tmp_path):
    """A small cmc: the engine and torch, never Pillow, yaml, matplotlib, the model loaders or
    the training loop (the train command's help reads only its configuration's defaults)."""
    r = subprocess.run(["embeval", "cmc", str(SAMPLE / "query.safetensors"),
                        str(SAMPLE / "gallery.safetensors"), "-k", "1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported and "embeval.engine.rank" in imported
    unwanted = {"PIL", "yaml", "matplotlib", "sympy", "embeval.safe_load", "embeval.extract.loop",
                "embeval.extract.models", "embeval.extract.images", "embeval.train.loop"}
    assert not imported & unwanted, sorted(imported & unwanted)
