"""LFW pairs.txt over the LFW folder: the header, the two line shapes, the folds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers.benchmarks import lfw_root
from helpers.cli import cli

from embeval.data import store

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "helpers.models:tiny_net"
FAST = ["--size", "8", "8", "--workers", "0", "--device", "cpu"]
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "digits"


def test_pairs_items_labels_and_the_recipe(tmp_path, capsys):
    root, lines = lfw_root(tmp_path)
    out = tmp_path / "lfw.safetensors"
    rc, stdout, err = cli(capsys, "extract", MODEL, root, "-o", out, *FAST)  # auto: pairs.txt
    assert rc == 0, err
    read = next(line for line in stdout.splitlines() if line.startswith("read: "))
    s = store.load(out)
    assert read == f"read: images {s.n}, identities 4, pairs 8, genuine 4, impostor 4, folds 2"
    s = store.load(out)
    # by hand: the distinct images in order of first mention
    mentioned = []
    for line in lines[1:]:
        f = line.split("\t")
        for name, k in ((f[0], f[1]), (f[0], f[2])) if len(f) == 3 else ((f[0], f[1]), (f[2], f[3])):
            rel = f"{name}/{name}_{int(k):04d}.jpg"
            if rel not in mentioned:
                mentioned.append(rel)
    assert s.paths == mentioned
    names = json.loads(s.metadata["label_names"])
    assert names == sorted({m.split("/")[0] for m in mentioned})
    assert [names[x] for x in s.labels.tolist()] == [m.split("/")[0] for m in mentioned]
    rows = list(csv.reader((tmp_path / "lfw.pairs.csv").open()))[1:]
    for line, (q, g, same) in zip(lines[1:], rows):
        f = line.split("\t")
        a = (f[0], f[1])
        b = (f[0], f[2]) if len(f) == 3 else (f[2], f[3])
        assert s.paths[int(q)] == f"{a[0]}/{a[0]}_{int(a[1]):04d}.jpg"
        assert s.paths[int(g)] == f"{b[0]}/{b[0]}_{int(b[1]):04d}.jpg"
        assert same == str(int(len(f) == 3))
    pairs = tmp_path / "lfw.pairs.csv"
    assert f"protocol: embeval verify {out} --folds 2" in stdout
    rc, text, err = cli(capsys, "verify", out, out, "--pairs", pairs, "--folds", "2", "--json")
    assert rc == 0, err
    listed = json.loads(text)["metrics"]
    assert 0 <= listed["accuracy"] <= 1
    # one file: its own gallery, with the pairs file it names (beside it)
    rc, text, err = cli(capsys, "verify", out, "--folds", "2", "--json")
    assert rc == 0, err
    assert json.loads(text)["metrics"] == listed
    pairs.rename(tmp_path / "moved.csv")
    rc, _, err = cli(capsys, "verify", out, "--folds", "2")
    assert rc == 2 and err.strip() == (f"embeval: error: {out}: the file of listed trials it names "
                                       "is not beside it: give --pairs CSV (it names "
                                       "'lfw.pairs.csv')")


def test_one_file_without_a_named_pairs_file_asks_for_the_gallery(tmp_path, capsys):
    sample = tmp_path / "q.safetensors"
    store.save(sample, store.load(SAMPLE / "query.safetensors").embeddings[:4], [0, 0, 1, 1])
    rc, _, err = cli(capsys, "verify", sample)
    assert rc == 2 and err.strip() == ("embeval: error: GALLERY: missing; give the gallery file(s), "
                                       f"or --pairs CSV: {sample} names no file of listed trials")


@pytest.mark.parametrize("edit, problem", [
    (lambda ls: ls[:-1], "line 8: 7 pairs after the header '2\t2', expected 8"),
    (lambda ls: ls[:3] + ["Zico\t1"] + ls[4:], "line 4: expected 3 or 4 fields"),
    (lambda ls: ["2 x"] + ls[1:], "line 1: count 'x' is not an integer"),
    (lambda ls: ls[:1] + [ls[3]] + ls[2:3] + [ls[1]] + ls[4:], "line 2: expected a genuine pair"),
    (lambda ls: ls[:1] + ["Nobody\t1\t2"] + ls[2:], "line 2: image"),
])
def test_bad_pairs_files_name_the_line(tmp_path, capsys, edit, problem):
    root, lines = lfw_root(tmp_path)
    (root / "pairs.txt").write_text("\n".join(edit(lines)) + "\n")
    rc, _, err = cli(capsys, "extract", MODEL, root, "--layout", "lfw-pairs",
                     "-o", tmp_path / "o.safetensors", *FAST)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "pairs.txt" in err and problem in err
    assert not (tmp_path / "o.safetensors").exists()
