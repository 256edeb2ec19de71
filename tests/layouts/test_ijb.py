"""IJB-B / IJB-C 1:1: meta files, 5-point alignment, faceness weights, template pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.benchmarks import similarity, write_ijb
from helpers.cli import cli
from helpers.models import tiny_net
from PIL import Image

from embeval.data import store
from embeval.extract.align import ARCFACE_112, align_face, similarity_transform
from embeval.extract.images import Preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "helpers.models:tiny_net"
FAST = ["--size", "8", "8", "--workers", "0", "--device", "cpu"]


def test_similarity_transform_is_the_least_squares_solution():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    dst = src @ similarity(0.6, 0.3, 5, -7)[:, :2].T + [5, -7] + rng.normal(0, 2, (5, 2))
    # by hand: x' = a x - b y + tx, y' = b x + a y + ty, linear least squares in (a, b, tx, ty)
    rows = []
    for (x, y) in src:
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), dst.ravel(), rcond=None)
    want = np.array([[a, -b, tx], [b, a, ty]])
    np.testing.assert_allclose(similarity_transform(src, dst), want, atol=1e-9)
    exact = src @ similarity(1.7, -0.4, 3, 9)[:, :2].T + [3, 9]  # noiseless: recovered exactly
    np.testing.assert_allclose(similarity_transform(src, exact), similarity(1.7, -0.4, 3, 9),
                               atol=1e-9)


def test_align_face_samples_where_the_inverse_transform_points():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (150, 130, 3)).astype(np.uint8)
    m = similarity(1.2, 0.2, -20, -30)
    landmarks = (ARCFACE_112 - m[:, 2]) @ np.linalg.inv(m[:, :2]).T  # mapped onto the template
    out = np.asarray(align_face(Image.fromarray(pixels), landmarks)).astype(np.float64)
    assert out.shape == (112, 112, 3)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    checked = 0
    for x, y in [(0, 0), (56, 56), (111, 3), (20, 100), (77, 41)]:
        px, py = inv[:2] @ [x, y, 1]  # cv2.warpAffine: output (x, y) <- input M^-1 (x, y)
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        fx, fy = px - x0, py - y0
        if not (0 <= x0 < 129 and 0 <= y0 < 149):
            continue
        want = ((1 - fx) * (1 - fy) * pixels[y0, x0] + fx * (1 - fy) * pixels[y0, x0 + 1]
                + (1 - fx) * fy * pixels[y0 + 1, x0] + fx * fy * pixels[y0 + 1, x0 + 1])
        np.testing.assert_allclose(out[y, x], want, atol=1.01)
        checked += 1
    assert checked >= 4


def test_templates_faceness_alignment_and_the_pairs(tmp_path, capsys):
    root = tmp_path / "IJBC"
    images, truth, pairs = write_ijb(root)
    out = tmp_path / "ijbc.safetensors"
    rc, stdout, err = cli(capsys, "extract", MODEL, root, "--flip", "-o", out, *FAST)
    assert rc == 0, err
    assert "read: images 6, templates 4, media 5, pairs 5, genuine 2, impostor 3" in stdout
    s = store.load(out)
    from embeval.data.store import read_ids, read_weights
    assert read_ids(out, "templates", 6).tolist() == [t for _, t, _ in images]
    assert read_ids(out, "media", 6).tolist() == [m for _, _, m in images]
    # by hand: mean(f(aligned), f(mirror)) on the aligned, preprocessed image, stored raw
    net, prep = tiny_net(), Preprocessing((8, 8))
    x = torch.stack([prep(torch.from_numpy(np.array(align_face(
        Image.open(root / "loose_crop" / n).convert("RGB"), lmk))).permute(2, 0, 1))
        for (n, _, _), (lmk, _) in zip(images, truth)])
    with torch.no_grad():
        emb = (net(x) + net(torch.flip(x, dims=[3]))) / 2
    torch.testing.assert_close(s.embeddings, emb, rtol=0, atol=1e-5)
    faceness = torch.tensor([sc for _, sc in truth])
    torch.testing.assert_close(read_weights(out, "faceness", 6), faceness.double())
    # insightface's template features: items x faceness, media means summed, L2-normalised
    feats = (emb * faceness[:, None]).double().numpy()
    tpl = {}
    for t in sorted({t for _, t, _ in images}):
        media = sorted({m for _, tt, m in images if tt == t})
        total = sum(feats[[i for i, (_, tt, mm) in enumerate(images) if tt == t and mm == m]]
                    .mean(0) for m in media)
        tpl[t] = total / np.linalg.norm(total)
    scores = np.array([tpl[a] @ tpl[b] for a, b, _ in pairs])
    gen = [sc for sc, (_, _, same) in zip(scores, pairs) if same]
    imp = [sc for sc, (_, _, same) in zip(scores, pairs) if not same]
    auc = np.mean([(a > b) + 0.5 * (a == b) for a in gen for b in imp])  # Mann-Whitney
    command = next(line for line in stdout.splitlines() if line.startswith("protocol: "))
    assert command.endswith(f"verify {out} --templates --far-rule nearest")
    rc, text, err = cli(capsys, *command.split()[2:], "--json")
    assert rc == 0, err
    assert json.loads(text)["metrics"]["AUC"] == pytest.approx(auc, abs=1e-9)


@pytest.mark.parametrize("file, edit, problem", [
    ("template_pair_label", lambda t: t + "1 9 0\n", "line 6: unknown template id 9"),
    ("template_pair_label", lambda t: t.replace("1 2 1", "1 2"), "line 1: expected 3 fields"),
    ("face_tid_mid", lambda t: t.rsplit("\n", 2)[0] + "\n", "line 5: 5 images, but"),
    ("face_tid_mid", lambda t: t.replace("2.jpg", "7.jpg"), "line 2: image '7.jpg'"),
    ("name_5pts_score", lambda t: t.replace(" 0.600", ""), "line 2: expected 12 fields"),
    ("name_5pts_score", lambda t: t.replace(" 0.600", " high"), "line 2: faceness score 'high'"),
])
def test_bad_meta_files_name_file_and_line(tmp_path, capsys, file, edit, problem):
    root = tmp_path / "IJBB"
    write_ijb(root, "ijbb")
    path = root / "meta" / f"ijbb_{file}.txt"
    path.write_text(edit(path.read_text()))
    rc, _, err = cli(capsys, "extract", MODEL, root, "--layout", "ijbb", "-o",
                     tmp_path / "o.safetensors", *FAST)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert path.name in err and problem in err


def test_a_missing_crop_names_the_landmarks_line(tmp_path, capsys):
    root = tmp_path / "IJBC"
    write_ijb(root)
    (root / "loose_crop" / "4.jpg").unlink()
    rc, _, err = cli(capsys, "extract", MODEL, root, "-o", tmp_path / "o.safetensors", *FAST)
    assert rc == 2 and "ijbc_name_5pts_score.txt: line 4: image" in err


def write_one_to_n(root, t="ijbc"):
    """Probe templates 1 and 4 (subjects 10, 30), galleries G1 = {2: 10, 3: 20}, G2 = {3: 20}."""
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SUBJECT_LIMBS,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"
    lists = {"probe_mixed": [(1, 10, "1.jpg"), (1, 10, "2.jpg"), (4, 30, "6.jpg")],
             "gallery_G1": [(2, 10, "3.jpg"), (3, 20, "4.jpg"), (3, 20, "5.jpg")],
             "gallery_G2": [(3, 20, "4.jpg")]}
    for name, rows in lists.items():
        (root / "meta" / f"{t}_1N_{name}.csv").write_text(
            header + "".join(f"{a},{b},img/{c},0,1,2,3,4\n" for a, b, c in rows))
    return lists


def test_one_to_n_templates_are_pooled_per_list(tmp_path, capsys):
    root = tmp_path / "IJBC"
    images, _, _ = write_ijb(root)
    lists = write_one_to_n(root)
    out = tmp_path / "ijbc.safetensors"
    rc, stdout, err = cli(capsys, "extract", MODEL, root, "--flip", "-o", out, *FAST)
    assert rc == 0, err
    assert "1N_probe_mixed 2, 1N_gallery_G1 2, 1N_gallery_G2 1" in stdout
    from embeval.data.store import read_weights
    items = (store.load(out).embeddings.double() * read_weights(out, "faceness", 6)[:, None]).numpy()
    for name, rows in lists.items():
        f = tmp_path / f"ijbc.{name}.safetensors"
        s = store.load(f)
        want_tids = sorted({a for a, _, _ in rows})
        assert s.labels.tolist() == [next(b for a, b, _ in rows if a == t) for t in want_tids]
        for k, t in enumerate(want_tids):  # insightface: items x faceness, media means summed
            media = sorted({m for _, tt, m in images if tt == t})
            total = sum(items[[i for i, (_, tt, mm) in enumerate(images) if tt == t and mm == m]]
                        .mean(0) for m in media)
            np.testing.assert_allclose(s.embeddings[k].numpy(), total / np.linalg.norm(total),
                                       atol=1e-6)
    commands = [line[len("protocol: "):] for line in stdout.splitlines()
                if line.startswith("protocol: ")]
    assert commands[1:] == [f"embeval identify {tmp_path}/ijbc.probe_mixed.safetensors "
                            f"{tmp_path}/ijbc.gallery_{g}.safetensors" for g in ("G1", "G2")]
    probe = store.load(tmp_path / "ijbc.probe_mixed.safetensors").embeddings.double().numpy()
    g1 = store.load(tmp_path / "ijbc.gallery_G1.safetensors").embeddings.double().numpy()
    top = (probe[0] @ g1.T).argmax()  # probe template 1 (subject 10) is the one mated probe
    rc, text, err = cli(capsys, *commands[1].split()[1:], "-k", "1", "--json")
    assert rc == 0, err
    assert json.loads(text)["metrics"]["rank1"] == float(top == 0)


def test_an_unknown_template_in_a_one_to_n_list_exits_2(tmp_path, capsys):
    root = tmp_path / "IJBC"
    write_ijb(root)
    write_one_to_n(root)
    path = root / "meta" / "ijbc_1N_gallery_G2.csv"
    path.write_text(path.read_text() + "99,20,img/9.jpg,0,1,2,3,4\n")
    rc, _, err = cli(capsys, "extract", MODEL, root, "-o", tmp_path / "o.safetensors", *FAST)
    assert rc == 2 and "ijbc_1N_gallery_G2.csv: line 3: unknown template id 99" in err
