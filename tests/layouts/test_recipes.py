"""The README's Benchmarks recipes, run as written on fixtures in each benchmark's format.

Every code block of the section is two commands: ``embeval extract MODEL BENCH_ROOT ...``
then the metric command, which must be exactly the ``protocol:`` line extract prints (the
registry's command) and must run. MODEL becomes the tiny test model and sizes shrink to
16 x 16 (the recipes' own 112 / 224 / 1024 only cost time here).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from helpers.benchmarks import fixture_bin, lfw_root, write_ijb, write_market, write_roxford, write_sop
from helpers.cli import cli

from embeval.layouts import LAYOUTS, detect_layouts

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parents[2] / "README.md"


def recipes() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [tuple(b.strip().splitlines()) for b in blocks]  # type: ignore[misc]


FIXTURES = {
    "lfw.bin": lambda tmp: fixture_bin(tmp, issame=(True, False) * 10),
    "LFW": lambda tmp: lfw_root(tmp, folds=10, count=1),
    "IJBC": lambda tmp: write_ijb(tmp / "IJBC"),
    "Market-1501-v15.09.15": lambda tmp: write_market(tmp / "Market-1501-v15.09.15"),
    "Stanford_Online_Products": lambda tmp: write_sop(tmp / "Stanford_Online_Products"),
    "roxford5k": lambda tmp: write_roxford(tmp / "roxford5k"),
}


def test_the_section_has_a_recipe_for_every_family(tmp_path):
    roots = [shlex.split(extract)[3] for extract, _ in recipes()]
    assert roots == list(FIXTURES)
    covered = set()
    for root in roots:  # the layout each recipe's BENCH_ROOT is recognised as
        FIXTURES[root](tmp_path) if root != "Stanford_Online_Products" else \
            write_sop((tmp_path / root).mkdir() or tmp_path / root)
        (name,) = detect_layouts(tmp_path / root)
        covered.add(next(i.family for i in LAYOUTS if i.name == name))
    assert covered == {i.family for i in LAYOUTS}


def test_layouts_lists_every_layout_with_its_command(capsys):
    rc, out, _ = cli(capsys, "layouts", "--json")
    assert rc == 0
    assert [(d["name"], d["command"]) for d in json.loads(out)] == [(i.name, i.command)
                                                                    for i in LAYOUTS]
    rc, out, _ = cli(capsys, "layouts")
    assert rc == 0 and all(i.name in out for i in LAYOUTS)


def test_unknown_or_ambiguous_layouts_exit_2(tmp_path, capsys):
    rc, _, err = cli(capsys, "extract", "helpers.models:tiny_net", tmp_path, "--layout", "lfw2",
                     "-o", tmp_path / "o")
    assert rc == 2 and "unknown" in err and "insightface-bin" in err
    (tmp_path / "pairs.txt").write_text("1 1\n")
    (tmp_path / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n")
    rc, _, err = cli(capsys, "extract", "helpers.models:tiny_net", tmp_path, "-o", tmp_path / "o")
    assert rc == 2 and "matches the benchmark layouts lfw-pairs, sop" in err


@pytest.mark.parametrize("extract, metric", recipes(), ids=lambda v: v.split()[3] if
                         v.startswith("embeval extract") else "")
def test_readme_recipe_runs_on_its_fixture(tmp_path, capsys, monkeypatch, extract, metric):
    monkeypatch.chdir(tmp_path)
    args = shlex.split(extract)
    root = args[3]
    if root in ("Stanford_Online_Products",):
        (tmp_path / root).mkdir()
    FIXTURES[root](tmp_path)
    args = [a if a != "MODEL" else "helpers.models:tiny_net" for a in args[1:]]
    if "--size" in args:
        k = args.index("--size")
        args[k + 1:k + 3] = ["16", "16"]
    rc, out, err = cli(capsys, *args, "--workers", "0", "--device", "cpu")
    assert rc == 0, err
    assert any(line.startswith("read: ") for line in out.splitlines())
    assert f"protocol: {metric}" in out.splitlines()
    rc, out, err = cli(capsys, *shlex.split(metric)[1:])
    assert rc == 0, err
