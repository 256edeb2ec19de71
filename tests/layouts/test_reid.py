"""Re-ID layouts: Market-1501, DukeMTMC-reID, MSMT17, VeRi-776 and their camera protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.benchmarks import GALLERY, QUERY, write_jpeg, write_market
from helpers.cli import cli

from embeval.data import store

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "helpers.models:tiny_net"
FAST = ["--size", "8", "8", "--workers", "0", "--device", "cpu"]

def write_msmt(root):
    lines = {}
    for listing, items in (("list_query.txt", QUERY), ("list_gallery.txt", GALLERY)):
        rows = []
        for i, (pid, cam) in enumerate(items):
            rel = f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg"
            write_jpeg(root / "MSMT17_V1" / "test" / rel, seed=i + 10 * len(listing))
            rows.append(f"{rel} {pid}")
        (root / "MSMT17_V1" / listing).write_text("\n".join(rows) + "\n")
        lines[listing] = rows
    return root / "MSMT17_V1"


def write_veri(root):
    for listing, folder, items in (("name_query.txt", "image_query", QUERY),
                                   ("name_test.txt", "image_test", GALLERY)):
        names = [f"{pid:04d}_c{cam:03d}_{i:08d}_0.jpg" for i, (pid, cam) in enumerate(items)]
        for i, n in enumerate(names):
            write_jpeg(root / folder / n, seed=i + len(folder))
        (root / listing).write_text("\n".join(names) + "\n")
    return root


def hand_reid(q, g):
    """rank-1 and mAP by brute force: cosine, same label and camera left out, label 0 and
    below never positive, queries without a positive skipped."""
    qe = q.embeddings.numpy().astype(np.float64)
    ge = g.embeddings.numpy().astype(np.float64)
    qe /= np.linalg.norm(qe, axis=1, keepdims=True)
    ge /= np.linalg.norm(ge, axis=1, keepdims=True)
    r1, aps = [], []
    for i in range(len(qe)):
        keep = ~((g.labels.numpy() == int(q.labels[i])) & (g.cameras.numpy() == int(q.cameras[i])))
        order = np.argsort(-(ge[keep] @ qe[i]), kind="stable")
        pos = (g.labels.numpy()[keep] == int(q.labels[i]))[order]
        if not pos.any():
            continue
        r1.append(float(pos[0]))
        hits = np.flatnonzero(pos)
        aps.append(np.mean([(k + 1) / (h + 1) for k, h in enumerate(hits)]))
    return np.mean(r1), np.mean(aps)


@pytest.mark.parametrize("layout", ["market1501", "dukemtmc-reid", "msmt17", "veri776"])
def test_items_labels_cameras_and_the_camera_protocol(tmp_path, capsys, layout):
    root = tmp_path / "bench"
    if layout in ("market1501", "dukemtmc-reid"):
        write_market(root, duke=layout == "dukemtmc-reid")
    elif layout == "msmt17":
        root = write_msmt(root)
    else:
        write_veri(root)
    out = tmp_path / "emb"
    args = ["--layout", layout] if layout == "dukemtmc-reid" else []  # the others: auto
    rc, stdout, err = cli(capsys, "extract", MODEL, root, *args, "-o", out, *FAST)
    assert rc == 0, err
    q, g = store.load(out / "query.safetensors"), store.load(out / "gallery.safetensors")
    assert sorted(zip(q.labels.tolist(), q.cameras.tolist())) == sorted(QUERY)
    assert sorted(zip(g.labels.tolist(), g.cameras.tolist())) == sorted(GALLERY)
    junk = ", junk_skipped 1" if layout == "market1501" else ""
    assert f"read: query 4, gallery 8, labels 5, cameras 3{junk}" in stdout
    command = f"embeval cmc {out / 'query.safetensors'} {out / 'gallery.safetensors'} " \
              "--exclude-same-camera"
    assert f"protocol: {command}" in stdout
    rc, text, err = cli(capsys, *command.split()[1:], "--json")
    assert rc == 0, err
    m = json.loads(text)["metrics"]
    rank1, mean_ap = hand_reid(q, g)
    assert m["rank1"] == pytest.approx(rank1, abs=1e-12)
    assert m["mAP"] == pytest.approx(mean_ap, abs=1e-6)


@pytest.mark.parametrize("layout, edit, problem", [
    ("msmt17", lambda t: t.replace(" 1\n", " 1 x\n", 1), "list_query.txt: line 1: expected 2"),
    ("msmt17", lambda t: t.replace(" 1\n", " one\n", 1), "line 1: label 'one' is not an integer"),
    ("msmt17", lambda t: t.replace("_000_01_", "_000_xx_", 1), "line 1: "),
    ("veri776", lambda t: t.replace("0001_c001", "0001_x001", 1), "name_query.txt: line 1"),
    ("veri776", lambda t: t.replace("0002_c001_00000002", "0002_c001_00000099", 1),
     "name_query.txt: line 3: image"),
])
def test_bad_lists_name_the_file_and_line(tmp_path, capsys, layout, edit, problem):
    if layout == "msmt17":
        base = write_msmt(tmp_path / "b")
        listing = base / "list_query.txt"
    else:
        base = write_veri(tmp_path / "b")
        listing = base / "name_query.txt"
    listing.write_text(edit(listing.read_text()))
    rc, _, err = cli(capsys, "extract", MODEL, base, "--layout", layout, "-o", tmp_path / "o", *FAST)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert problem in err


def test_layout_market1501_reads_the_benchmark_or_a_flat_folder(tmp_path, capsys):
    root = write_market(tmp_path / "Market")
    rc, stdout, err = cli(capsys, "extract", MODEL, root, "--layout", "market1501",
                          "-o", tmp_path / "m", *FAST)
    assert rc == 0, err
    assert "protocol: embeval cmc" in stdout
    assert store.load(tmp_path / "m" / "gallery.safetensors").n == len(GALLERY)
    # a flat folder of Market-named images: the image-set layout, as before
    rc, _, err = cli(capsys, "extract", MODEL, root / "query", "--layout", "market1501",
                     "-o", tmp_path / "q.safetensors", *FAST)
    assert rc == 0, err
    assert sorted(store.load(tmp_path / "q.safetensors").labels.tolist()) == sorted(p for p, _ in QUERY)
