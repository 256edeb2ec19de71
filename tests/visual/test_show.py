"""``embeval show`` (issue 16, part 2): ranked-result images whose frame colours follow the
ground truth of a hand-made case, placeholders for missing images, real sample images."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import cli_run
from PIL import Image

import embeval
from embeval.errors import OptionError
from embeval.visual.ranked import COLORS, PLACEHOLDER, QUERY_COLOR, Geometry, load_tile
from embeval.visual.rankings import choose_queries, query_rankings

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "sample_data" / "images"
GREEN, RED, GREY = COLORS["positive"], COLORS["negative"], COLORS["excluded"]


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# gallery item: (angle from the query [1, 0], label, camera, image colour or None: no file)
GALLERY = [(0, 1, 1, (255, 255, 0)), (10, 1, 0, (0, 255, 255)), (20, 3, 1, (255, 0, 255)),
           (30, 1, 1, (10, 20, 30)), (40, 2, 1, None), (50, 1, 1, "garbage")]
# what query 0 (label 1, camera 0) must show with --exclude-same-camera, best first
EXPECTED = [GREEN, GREY, RED, GREEN, RED, GREEN]


@pytest.fixture
def hand_made(tmp_path: Path) -> tuple[Path, Path, Path]:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (20, 10), (40, 80, 120)).save(imgs / "q0.png")
    for i, (_, _, _, colour) in enumerate(GALLERY):
        if colour == "garbage":
            (imgs / f"g{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
        elif colour is not None:
            Image.new("RGB", (16, 16), colour).save(imgs / f"g{i}.png")
    meta = {"source": str(tmp_path / "elsewhere")}  # wrong on purpose: --images-root wins
    q = embeval.save(tmp_path / "q.safetensors", torch.tensor([unit(0), unit(90)]), [1, 2],
                     cameras=[0, 0], paths=["q0.png", "q1.png"], metadata=meta)
    g = embeval.save(tmp_path / "g.safetensors", torch.tensor([unit(a) for a, *_ in GALLERY]),
                     [lab for _, lab, _, _ in GALLERY], cameras=[c for _, _, c, _ in GALLERY],
                     paths=[f"g{i}.png" for i in range(len(GALLERY))], metadata=meta)
    return q, g, imgs


def pixel(im: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return im.getpixel(xy)[:3]  # type: ignore[index]


def test_frames_follow_the_ground_truth_of_a_hand_made_case(tmp_path, hand_made, capsys):
    q, g, imgs = hand_made
    out = tmp_path / "show"
    r = cli_run(capsys, "show", q, g, "--out", out, "--queries", "0", "--top", 5,
                "--exclude-same-camera", "--images-root", imgs, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["contact-sheet.png", "query-0.png"]
    im = Image.open(out / "query-0.png").convert("RGB")
    geo = Geometry()
    assert im.size == geo.size(len(EXPECTED))
    left, top, _, _ = geo.box(0)
    assert pixel(im, (left + 1, top + 1)) == QUERY_COLOR
    assert pixel(im, (left + geo.frame + geo.tile // 2, top + geo.frame + geo.tile // 2)) == (40, 80, 120)
    for i, want in enumerate(EXPECTED, start=1):
        left, top, right, bottom = geo.box(i)
        for xy in ((left + 1, top + 1), (right - 2, bottom - 2)):
            assert pixel(im, xy) == want, f"result {i}"
        inside = pixel(im, (left + geo.frame + 2, top + geo.frame + 2))
        colour = GALLERY[i - 1][3]
        assert inside == (PLACEHOLDER if colour in (None, "garbage") else colour), f"result {i}"


def test_missing_paths_give_placeholders_and_the_sheet_holds_every_query(tmp_path, hand_made,
                                                                       capsys):
    q, g, _ = hand_made  # no --images-root: the recorded source folder does not exist
    out = tmp_path / "show"
    r = cli_run(capsys, "show", q, g, "--out", out, "--worst", 2, "--top", 3, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["contact-sheet.png", "query-0.png",
                                                     "query-1.png"]
    row = Image.open(out / "query-0.png")
    sheet = Image.open(out / "contact-sheet.png")
    assert sheet.height > 2 * row.height and sheet.width >= row.width
    tile, why = load_tile(tmp_path / "nope.png", 32)
    assert why == "missing" and tile.size == (32, 32)


def test_rankings_match_a_full_sort(tmp_path):
    gen = torch.Generator().manual_seed(0)
    q = embeval.EmbeddingSet(torch.randn(30, 8, generator=gen), torch.randint(0, 4, (30,), generator=gen))
    chosen = [3, 0, 17]
    got = query_rankings(q, q, chosen, top=6, device="cpu", exclude_self=True, metric="inner")
    scores = q.embeddings @ q.embeddings.T  # the oracle: the whole matrix, sorted
    for r, qi in zip(got, chosen):
        order = sorted(range(30), key=lambda j: (-float(scores[qi, j]), j))
        shown, kept = [], 0
        for j in order:
            if kept == 6:
                break
            shown.append(j)
            kept += j != qi
        assert [it.index for it in r.items] == shown
        assert [it.rank for it in r.items if it.kind != "excluded"] == list(range(1, 7))
        for it in r.items:
            want = ("excluded" if it.index == qi else
                    "positive" if int(q.labels[it.index]) == int(q.labels[qi]) else "negative")
            assert it.kind == want
            assert it.score == pytest.approx(float(scores[qi, it.index]), abs=1e-5)


def test_choose_queries():
    ap = torch.tensor([0.5, float("nan"), 0.1, 0.9, 0.1])
    assert choose_queries(ap, worst=3) == [2, 4, 0]
    assert choose_queries(ap, best=2) == [3, 0]
    assert choose_queries(ap, queries=[4, 1, 4]) == [4, 1]
    with pytest.raises(OptionError):
        choose_queries(ap, queries=[5])
    with pytest.raises(OptionError):
        choose_queries(ap, worst=1, best=1)


def _sample_sets(tmp_path: Path) -> tuple[Path, Path]:
    """Embedding files of real sample images (8x8 pixels as the embedding), 3 classes."""
    files = []
    for split, per_class in (("query", 2), ("gallery", 4)):
        paths = [f"{c}/{p.name}" for c in (1, 7, 9)
                 for p in sorted((IMAGES / split / str(c)).iterdir())[:per_class]]
        pixels = [np.asarray(Image.open(IMAGES / split / p).convert("L").resize((8, 8)),
                             dtype=np.float32).ravel() + 1.0 for p in paths]
        files.append(embeval.save(tmp_path / f"{split}.safetensors", np.stack(pixels),
                                  [int(p.split("/")[0]) for p in paths], paths=paths,
                                  metadata={"source": str(IMAGES / split)}))
    return files[0], files[1]


@pytest.mark.slow
def test_show_on_real_sample_images_through_the_installed_command(tmp_path):
    q, g = _sample_sets(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["embeval", "show", str(q), str(g), "--out", "out", "--worst", "2",
                        "--top", "4"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert len(files) == 3 and files[0].name == "contact-sheet.png"
    assert r.stdout.count("-> ") == 3
    query_set = embeval.load(q)
    geo = Geometry()
    for f in files[1:]:
        assert f.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        im = Image.open(f).convert("RGB")
        index = int(f.stem.split("-")[1])
        left, top, _, _ = geo.box(0)
        shown = im.crop((left + geo.frame, top + geo.frame, left + geo.frame + geo.tile,
                         top + geo.frame + geo.tile))
        want, why = load_tile(IMAGES / "query" / query_set.paths[index], geo.tile)
        assert why is None and np.array_equal(np.asarray(shown), np.asarray(want))
        assert np.asarray(im.convert("L"), dtype=float).std() > 10


def test_show_refuses_bad_options_in_one_line(tmp_path, hand_made, capsys):
    q, g, _ = hand_made
    for args, text in ((("--worst", 1, "--best", 1), "choose one"),
                       (("--queries", "1,x"), "--queries"),
                       (("--queries", "9"), "[0, 2)")):
        r = cli_run(capsys, "show", q, g, "--out", tmp_path / "o", *args, "--device", "cpu")
        assert r.returncode == 2 and text in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o").exists()


PROBE = """
import json, sys
from embeval.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "numpy", "PIL", "matplotlib", "safetensors") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("args", [["show", "--help"], ["convert", "--help"],
                                  ["show", "nope.safetensors", "g.safetensors", "--out", "o"]])
def test_show_and_convert_check_arguments_before_loading_the_core(tmp_path, args):
    r = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], r.stderr
    assert report["code"] == (0 if "--help" in args else 2)
    if "--help" in args:
        assert "Examples:" in r.stdout
    else:
        assert r.stderr.count("\n") == 1 and "nope.safetensors: no such file" in r.stderr


def test_a_wrong_images_root_is_refused_and_a_partial_one_counted(tmp_path, hand_made, capsys):
    """None of the images under --images-root: exit 2 naming where it looked; some missing: a
    warning with the count (issue 30: every tile a placeholder, exit 0, no word)."""
    q, g, imgs = hand_made
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli_run(capsys, "show", q, g, "--out", tmp_path / "a", "--queries", "0", "--top", 5,
                "--images-root", empty, "--device", "cpu")
    assert r.returncode == 2 and not (tmp_path / "a").exists()
    assert f"none of the 6 images to show was found under --images-root {empty}" in r.stderr
    r = cli_run(capsys, "show", q, g, "--out", tmp_path / "b", "--queries", "0", "--top", 5,
                "--images-root", imgs, "--device", "cpu")
    assert r.returncode == 0, r.stderr  # q0 and 4 of the 5 results exist: g4.png does not
    assert f"warning: 1 of 6 images not found under --images-root {imgs}" in r.stderr


def test_titles_say_one_query_and_space_their_dots(tmp_path, hand_made, capsys, monkeypatch):
    from PIL import ImageDraw

    import embeval.visual.ranked as ranked

    q, g, imgs = hand_made
    texts: list[str] = []
    real_text, real_sheet = ImageDraw.ImageDraw.text, ranked.contact_sheet
    def text(self, xy, text, *a, **k):  # noqa: ANN001, ANN202 - ImageDraw.text, recorded
        texts.append(text)
        return real_text(self, xy, text, *a, **k)

    def sheet(rows, title=""):  # noqa: ANN001, ANN202 - contact_sheet, recorded
        texts.append("SHEET " + title)
        return real_sheet(rows, title=title)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    monkeypatch.setattr(ranked, "contact_sheet", sheet)
    r = cli_run(capsys, "show", q, g, "--out", tmp_path / "s", "--worst", 1, "--top", 3,
                "--images-root", imgs, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    title = next(t for t in texts if t.startswith("SHEET "))
    assert title.startswith("SHEET 1 worst query by AP  ·  ")
    header = next(t for t in texts if t.startswith("query ") and "AP" in t)
    assert header.startswith("query 1  ·  label 2  ·  AP 0.500  ·  first hit at rank 2")
