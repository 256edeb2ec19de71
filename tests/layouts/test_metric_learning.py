"""SOP, In-shop, CUB-200-2011 and Cars196 read as they ship; MAP@R and R-precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.benchmarks import write_jpeg, write_sop
from helpers.cli import cli

from embeval.data import store
from embeval.errors import InputFileError

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "helpers.models:tiny_net"
FAST = ["--size", "8", "8", "--workers", "0", "--device", "cpu"]


def write_inshop(root):
    rows = []
    spec = [("train", 1), ("query", 2), ("gallery", 2), ("gallery", 2), ("query", 3),
            ("gallery", 3), ("gallery", 4), ("query", 4), ("gallery", 5)]
    for i, (status, item) in enumerate(spec):
        rel = f"img/WOMEN/Dresses/id_{item:08d}/{i:02d}_1_front.jpg"
        write_jpeg(root / "Img" / rel, seed=i)
        rows.append(f"{rel}           id_{item:08d}     {status}")
    text = [str(len(rows)), "image_name item_id evaluation_status", *rows]
    (root / "Eval").mkdir(parents=True)
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(text) + "\n")
    return root, spec


def write_cub(root):
    images, classes = [], []
    spec = [1, 1, 100, 101, 101, 101, 150, 150, 200, 200]
    for i, c in enumerate(spec, 1):
        rel = f"{c:03d}.Bird_{c}/Bird_{c}_{i:04d}_{i}.jpg"
        write_jpeg(root / "images" / rel, seed=i)
        images.append(f"{i} {rel}")
        classes.append(f"{i} {c}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(classes) + "\n")
    return root, spec


def write_cars(root):
    scipy_io = pytest.importorskip("scipy.io")
    spec = [(1, 0), (98, 1), (99, 0), (99, 1), (99, 1), (150, 0), (150, 1), (196, 0), (196, 1)]
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    ann = np.zeros((1, len(spec)), dtype=dtype)
    for i, (c, test) in enumerate(spec):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_jpeg(root / rel, seed=i)
        ann[0, i] = (rel, 1, 1, 10, 10, c, test)
    scipy_io.savemat(str(root / "cars_annos.mat"),
                     {"annotations": ann, "class_names": np.array([["a"]], dtype=object)})
    return root, [c for c, _ in spec]


def hand_map_at_r(q, g, exclude_self):
    """MAP@R and R-precision by brute force (cosine; R = the query's positives)."""
    qe = q.embeddings.numpy().astype(np.float64)
    ge = g.embeddings.numpy().astype(np.float64)
    qe /= np.linalg.norm(qe, axis=1, keepdims=True)
    ge /= np.linalg.norm(ge, axis=1, keepdims=True)
    maps, rps = [], []
    for i in range(len(qe)):
        keep = np.ones(len(ge), bool)
        if exclude_self:
            keep[i] = False
        rel = (g.labels.numpy()[keep] == int(q.labels[i]))[np.argsort(-(ge[keep] @ qe[i]),
                                                                        kind="stable")]
        r = int(rel.sum())
        if r == 0:
            continue
        top = rel[:r]
        rps.append(top.sum() / r)
        maps.append(sum(top[:k + 1].sum() / (k + 1) for k in range(r) if top[k]) / r)
    return np.mean(maps), np.mean(rps)


@pytest.mark.parametrize("layout", ["sop", "inshop", "cub200", "cars196"])
def test_splits_labels_and_map_at_r(tmp_path, capsys, layout):
    root = tmp_path / "bench"
    root.mkdir()
    writer = {"sop": write_sop, "inshop": write_inshop, "cub200": write_cub,
              "cars196": write_cars}[layout]
    root, spec = writer(root)
    out = tmp_path / ("emb" if layout == "inshop" else "emb.safetensors")
    rc, stdout, err = cli(capsys, "extract", MODEL, root, "-o", out, *FAST)  # auto
    assert rc == 0, err
    if layout == "inshop":
        q = store.load(out / "query.safetensors")
        g = store.load(out / "gallery.safetensors")
        names = json.loads(q.metadata["label_names"])
        assert [names[x] for x in q.labels.tolist()] == [f"id_{i:08d}" for s, i in spec
                                                         if s == "query"]
        assert [names[x] for x in g.labels.tolist()] == [f"id_{i:08d}" for s, i in spec
                                                         if s == "gallery"]
        assert "read: query 3, gallery 5, items 4" in stdout
        exclude = False
    else:
        q = g = store.load(out)
        want = {"sop": spec, "cub200": [c for c in spec if c > 100],
                "cars196": [c for c in spec if c >= 99]}[layout]
        assert q.labels.tolist() == want
        assert f"read: images {len(want)}, classes {len(set(want))}" in stdout
        exclude = True
    command = next(line for line in stdout.splitlines() if line.startswith("protocol: "))
    assert command.endswith("--exclude-self") == exclude
    rc, text, err = cli(capsys, *command.split()[2:], "--json")
    assert rc == 0, err
    m = json.loads(text)["metrics"]
    map_r, r_prec = hand_map_at_r(q, g, exclude)
    assert m["MAP@R"] == pytest.approx(map_r, abs=1e-6)
    assert m["R-precision"] == pytest.approx(r_prec, abs=1e-6)


@pytest.mark.parametrize("layout, file, edit, problem", [
    ("sop", "Ebay_test.txt", lambda t: t.replace("image_id", "id"), "line 1: expected the header"),
    ("sop", "Ebay_test.txt", lambda t: t.replace(" 1 bicycle", " bicycle", 1),
     "line 2: expected 4 fields"),
    ("inshop", "Eval/list_eval_partition.txt", lambda t: t.rsplit("\n", 2)[0] + "\n",
     "8 rows, the count line says 9"),
    ("inshop", "Eval/list_eval_partition.txt", lambda t: t.replace("query", "probe", 1),
     "evaluation_status 'probe'"),
    ("cub200", "image_class_labels.txt", lambda t: t + "11 150\n", "line 11: image id 11 is not"),
    ("cub200", "images.txt", lambda t: t.replace("10 200.Bird", "10 200.Nobird"), "line 10: image"),
])
def test_bad_lists_name_the_file_and_line(tmp_path, capsys, layout, file, edit, problem):
    root = tmp_path / "bench"
    root.mkdir()
    {"sop": write_sop, "inshop": write_inshop, "cub200": write_cub}[layout](root)
    (root / file).write_text(edit((root / file).read_text()))
    rc, _, err = cli(capsys, "extract", MODEL, root, "--layout", layout, "-o", tmp_path / "o",
                     *FAST)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert file.split("/")[-1] in err and problem in err


def test_a_broken_mat_file_exits_2(tmp_path, capsys):
    root = tmp_path / "cars"
    root.mkdir()
    (root / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 50)
    rc, _, err = cli(capsys, "extract", MODEL, root, "-o", tmp_path / "o.safetensors", *FAST)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "cars_annos.mat" in err


@pytest.mark.parametrize("compressed", [False, True])
def test_the_builtin_mat_reader_reads_what_scipy_reads(tmp_path, monkeypatch, compressed):
    scipy_io = pytest.importorskip("scipy.io")
    from embeval.layouts.matfile import read_mat
    from embeval.layouts.metric_learning import read_cars_annos

    root, _ = write_cars(tmp_path)
    mat = root / "cars_annos.mat"
    data = scipy_io.loadmat(str(mat), squeeze_me=True, struct_as_record=True)
    scipy_io.savemat(str(mat), {"annotations": data["annotations"][None, :]},
                     do_compression=compressed)
    with_scipy = read_cars_annos(mat)
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)  # as if not installed
    assert read_cars_annos(mat) == with_scipy
    assert [c for _, c in with_scipy] == [1, 98, 99, 99, 99, 150, 150, 196, 196]
    assert read_mat(mat)["annotations"][0]["relative_im_path"] == "car_ims/000001.jpg"
    mat.write_bytes(mat.read_bytes()[:200])  # truncated
    with pytest.raises(InputFileError, match="cars_annos.mat: not a readable MAT-file"):
        read_cars_annos(mat)
