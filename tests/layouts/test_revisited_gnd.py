"""Revisited Oxford / Paris: gnd_*.pkl read safely, query crops, the three settings' mAP."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from helpers.benchmarks import GND, write_roxford
from helpers.cli import cli
from helpers.models import tiny_net
from PIL import Image

from embeval.data import store
from embeval.extract.images import Preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "helpers.models:tiny_net"
FAST = ["--size", "8", "8", "--workers", "0", "--device", "cpu"]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def revisitop_map(q, g, positives, junk):
    """revisitop's compute_map: junk removed from the ranking, trapezoid AP, queries without
    positives skipped."""
    qe = torch.nn.functional.normalize(q.embeddings.double(), dim=1).numpy()
    ge = torch.nn.functional.normalize(g.embeddings.double(), dim=1).numpy()
    aps = []
    for i in range(len(qe)):
        if not positives[i]:
            continue
        ranking = [j for j in np.argsort(-(ge @ qe[i]), kind="stable") if j not in junk[i]]
        pos = [r for r, j in enumerate(ranking) if j in positives[i]]
        ap = 0.0
        for k, r in enumerate(pos):
            p0 = 1.0 if r == 0 else k / r
            ap += (p0 + (k + 1) / (r + 1)) / len(positives[i]) / 2
        aps.append(ap)
    return float(np.mean(aps))


@pytest.mark.parametrize("as_numpy", [False, True])
def test_crops_ground_truth_and_the_three_settings(tmp_path, capsys, as_numpy):
    root, imlist, qimlist = write_roxford(tmp_path / "roxford5k", as_numpy)
    out = tmp_path / "emb"
    rc, stdout, err = cli(capsys, "extract", MODEL, root, "-o", out, *FAST)  # auto
    assert rc == 0, err
    assert "read: queries 3, database 8, easy 3, hard 3, junk 3, cropped 3" in stdout
    q, g = store.load(out / "query.safetensors"), store.load(out / "gallery.safetensors")
    assert q.paths == [f"{n}.jpg" for n in qimlist] and g.paths == [f"{n}.jpg" for n in imlist]
    # by hand: query 0 is its image cropped to bbx (Pillow rounds 1.4, 2.6, 9.5, 11.2)
    im = Image.open(root / "jpg" / f"{qimlist[0]}.jpg").convert("RGB").crop((1, 3, 10, 11))
    x = Preprocessing((8, 8))(torch.from_numpy(np.array(im)).permute(2, 0, 1))
    with torch.no_grad():
        torch.testing.assert_close(q.embeddings[0], tiny_net()(x[None])[0], rtol=0, atol=1e-5)
    rows = (out / "ground_truth.csv").read_text().splitlines()
    assert rows[0] == "query,gallery,kind"
    assert sorted(rows[1:]) == sorted(f"{i},{j},{k}" for i, gt in enumerate(GND)
                                      for k in ("easy", "hard", "junk") for j in gt[k])
    command = next(line for line in stdout.splitlines() if line.startswith("protocol: "))
    assert "--protocol roxford --relevance" in command
    rc, text, err = cli(capsys, *command.split()[2:], "--json")
    assert rc == 0, err
    m = json.loads(text)["metrics"]
    for setting, pos_kinds, junk_kinds in (("easy", ("easy",), ("junk", "hard")),
                                           ("medium", ("easy", "hard"), ("junk",)),
                                           ("hard", ("hard",), ("junk", "easy"))):
        pos = [{j for k in pos_kinds for j in gt[k]} for gt in GND]
        junk = [{j for k in junk_kinds for j in gt[k]} for gt in GND]
        assert m[f"mAP@{setting}"] == pytest.approx(revisitop_map(q, g, pos, junk), abs=1e-6)


@pytest.mark.parametrize("gnd, problem", [
    ([{"bbx": [0, 0, 5], "easy": [], "hard": [], "junk": []}] * 3, "gnd[0]['bbx'] is not 4"),
    ([{"bbx": [0, 0, 5, 5], "easy": [8], "hard": [], "junk": []}] * 3, "index 8 outside"),
    (GND[:2], "gnd has 2 entries for 3 queries"),
])
def test_bad_ground_truth_exits_2(tmp_path, capsys, gnd, problem):
    root, _, _ = write_roxford(tmp_path / "r", gnd=gnd)
    rc, _, err = cli(capsys, "extract", MODEL, root, "--layout", "roxford5k", "-o", tmp_path / "o",
                     *FAST)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "gnd_roxford5k.pkl" in err
    assert problem in err


def test_a_payload_in_the_ground_truth_never_runs(tmp_path, capsys):
    root, _, _ = write_roxford(tmp_path / "r")
    marker = tmp_path / "marker"
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"gnd": [Payload(marker)],
                                                           "imlist": [], "qimlist": []}))
    rc, _, err = cli(capsys, "extract", MODEL, root, "-o", tmp_path / "o", *FAST)
    assert rc == 2 and "refused global" in err and not marker.exists()
