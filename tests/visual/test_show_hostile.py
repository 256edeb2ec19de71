"""``embeval show`` / ``report`` against hostile output folders and image paths (issue 29):
a link at an output name is refused and its target untouched; a FIFO at an output name or
as an image never blocks; an image path longer than NAME_MAX or a huge image is a
placeholder; a 12000 x 12000 thumbnail is decoded reduced, with no warning on stderr."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.cli import one_error_line, run_installed
from PIL import Image

import embeval
from embeval.visual.ranked import MAX_PIXELS, PLACEHOLDER, load_tile, resolve_image

run, one_line = run_installed, one_error_line


@pytest.fixture
def sets(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two queries, three gallery items, with image paths relative to ``imgs``."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("q0", "q1", "g0", "g1", "g2"):
        Image.new("RGB", (12, 12), (200, 30, 30)).save(imgs / f"{name}.png")
    q = embeval.save(tmp_path / "q.safetensors", torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [1, 2],
                     paths=["q0.png", "q1.png"], metadata={"source": str(imgs)})
    g = embeval.save(tmp_path / "g.safetensors", torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]]),
                     [1, 2, 1], paths=["g0.png", "g1.png", "g2.png"], metadata={"source": str(imgs)})
    return q, g, imgs


@pytest.mark.parametrize("name", ["contact-sheet.png", "query-0.png"])
def test_a_link_at_an_output_name_is_refused_and_its_target_untouched(tmp_path, sets, name):
    q, g, _ = sets
    out, victim = tmp_path / "show", tmp_path / "precious.txt"
    out.mkdir()
    victim.write_text("keep me\n")
    (out / name).symlink_to(victim)
    res = run("show", q, g, "--out", out, "--queries", "0,1", "--device", "cpu")
    one_line(res, str(out / name), "symbolic link")
    assert victim.read_text() == "keep me\n" and (out / name).is_symlink()
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written, no temp file


def test_a_dangling_link_is_refused_too(tmp_path, sets, capsys):
    from helpers.cli import cli

    q, g, _ = sets
    out = tmp_path / "show"
    out.mkdir()
    (out / "contact-sheet.png").symlink_to(tmp_path / "elsewhere.png")
    rc, _, err = cli(capsys, "show", q, g, "--out", out, "--queries", "0", "--device", "cpu")
    assert rc == 2 and "symbolic link" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "elsewhere.png").exists()


@pytest.mark.slow
def test_an_output_name_that_is_an_input_image_is_refused(tmp_path, sets):
    q, g, imgs = sets
    before = (imgs / "q0.png").read_bytes()
    os.link(imgs / "q0.png", imgs / "query-0.png")  # the output folder is the images folder
    res = run("show", q, g, "--out", imgs, "--queries", "0", "--device", "cpu")
    one_line(res, "query-0.png", "refusing to overwrite an input")
    assert (imgs / "q0.png").read_bytes() == before


def test_a_fifo_at_an_output_name_is_refused_without_blocking(tmp_path, sets):
    q, g, _ = sets
    out = tmp_path / "show"
    out.mkdir()
    os.mkfifo(out / "contact-sheet.png")
    res = run("show", q, g, "--out", out, "--queries", "0", "--device", "cpu")
    one_line(res, str(out / "contact-sheet.png"), "not a regular file")
    assert sorted(p.name for p in out.iterdir()) == ["contact-sheet.png"]  # no temp file left


@pytest.mark.slow
@pytest.mark.parametrize("command", ["show", "report"])
def test_a_fifo_or_overlong_image_path_is_a_placeholder(tmp_path, sets, command):
    q, g, imgs = sets
    (imgs / "q0.png").unlink()
    os.mkfifo(imgs / "q0.png")  # the query's image: opening it would block
    long = "x" * 300 + ".png"  # longer than NAME_MAX (255)
    g2 = embeval.save(tmp_path / "g2.safetensors", torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]]),
                      [1, 2, 1], paths=[long, "g1.png", "g2.png"], metadata={"source": str(imgs)})
    out = tmp_path / ("show" if command == "show" else "r.html")
    extra = ["--queries", "0"] if command == "show" else ["--no-ci", "--worst", "2"]
    res = run(command, q, g2, "--out", out, *extra, "--device", "cpu")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    if command == "show":
        tile = Image.open(out / "query-0.png").convert("RGB")
        assert tile.getpixel((30, 50)) == PLACEHOLDER  # inside the query's tile
    else:
        assert "data:image/" in out.read_text()


def test_load_tile_refuses_what_would_block_or_fail(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    assert load_tile(fifo, 32)[1] == "unreadable"
    assert load_tile(tmp_path / ("y" * 300 + ".png"), 32)[1] == "unreadable"
    assert load_tile(tmp_path, 32)[1] == "unreadable"  # a folder
    assert load_tile(tmp_path / "nul\0.png", 32)[1] == "unreadable"  # a NUL in a recorded path
    assert resolve_image("nul\0.png", tmp_path) == tmp_path / "nul\0.png"


def test_a_huge_png_is_a_too_large_placeholder_without_a_warning(tmp_path, recwarn):
    side = 12000  # 144 Mpx: above Pillow's warning limit; mode "1" keeps this test light
    assert side * side > MAX_PIXELS
    Image.new("1", (side, side), 1).save(tmp_path / "huge.png")
    tile, problem = load_tile(tmp_path / "huge.png", 32)
    assert problem == "too large" and tile.size == (32, 32)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.slow
def test_a_huge_jpeg_is_decoded_reduced_with_nothing_on_stderr(tmp_path, sets):
    q, g, imgs = sets
    Image.new("L", (12000, 12000), 90).save(imgs / "g0.jpg", quality=50)
    g2 = embeval.save(tmp_path / "g2.safetensors", torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]]),
                      [1, 2, 1], paths=["g0.jpg", "g1.png", "g2.png"], metadata={"source": str(imgs)})
    tile, problem = load_tile(imgs / "g0.jpg", 96)
    assert problem is None and tile.getpixel((48, 48)) == (90, 90, 90)
    res = run("show", q, g2, "--out", tmp_path / "show", "--queries", "0", "--device", "cpu")
    assert res.returncode == 0 and res.stderr == "", res.stderr


@pytest.mark.slow
def test_report_and_compare_refuse_a_fifo_result_file_without_blocking(tmp_path, sets):
    fifo = tmp_path / "r.result"
    os.mkfifo(fifo)
    one_line(run("report", fifo, "--out", tmp_path / "r.html"), str(fifo), "not a regular file")
    one_line(run("compare", fifo, fifo), str(fifo), "not a regular file")
    assert not (tmp_path / "r.html").exists()
