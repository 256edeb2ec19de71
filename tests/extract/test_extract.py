"""The extraction loop (embeval.extract) and the ``embeval extract`` command."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from helpers.cli import run_extract
from helpers.images import image_folder, write_bad_image, write_image
from helpers.models import TinyNet, tiny_net
from PIL import Image

from embeval.cli import flag_message
from embeval.data import store
from embeval.errors import InputFileError, OptionError
from embeval.extract import ExtractOptions, embed_images, extract_to_files, partial_dir
from embeval.extract.architectures import build_backbone
from embeval.extract.checkpoint import save_checkpoint
from embeval.extract.images import Preprocessing, list_image_sets, list_images, load_image
from embeval.extract.models import LoadedModel

ARCH = {"backbone": "embeval-small", "embedding_dim": 8, "widths": [4, 8]}
PREP = Preprocessing(size=(8, 8))


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def small_model() -> LoadedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        module = build_backbone(ARCH).eval()
    return LoadedModel(module, PREP, "small", fingerprint="small-1")


def options(**kwargs) -> ExtractOptions:
    return ExtractOptions(**{"preprocessing": PREP, "device": "cpu", "workers": 0, **kwargs})


# ---------------------------------------------------------------- core


def test_same_embeddings_for_any_batch_size_and_worker_count(tmp_path):
    images = list_images(image_folder(tmp_path, {"a": 40, "b": 30}, size=(9, 13)))
    model = small_model()
    runs = {(bs, w): embed_images(model, images, options(batch_size=bs, workers=w)).embeddings
            for bs, w in ((1, 0), (64, 0), (64, 2))}
    reference = runs[(1, 0)]
    assert reference.shape == (70, 8) and reference.dtype == torch.float32
    for emb in runs.values():
        torch.testing.assert_close(emb, reference, rtol=0, atol=1e-6)
    with torch.inference_mode():  # and the same as the model on the preprocessed image
        direct = model.module(PREP(load_image(images.files[5]))[None])
    torch.testing.assert_close(reference[5:6], direct, rtol=0, atol=1e-6)


def test_flip_averages_an_image_and_its_mirror(tmp_path):
    write_image(tmp_path / "x" / "a.png", seed=3)
    Image.open(tmp_path / "x" / "a.png").transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / "x" / "b.png")
    images = list_images(tmp_path)
    plain = embed_images(small_model(), images, options()).embeddings
    flipped = embed_images(small_model(), images, options(flip=True)).embeddings
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)
    torch.testing.assert_close(flipped[0], flipped[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(flipped[0], (plain[0] + plain[1]) / 2, rtol=0, atol=1e-6)


def test_normalize_gives_unit_rows(tmp_path):
    images = list_images(image_folder(tmp_path, {"a": 3}))
    emb = embed_images(small_model(), images, options(normalize=True)).embeddings
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_bad_image_stops_the_run_or_is_skipped_and_listed(tmp_path):
    root = image_folder(tmp_path / "set", {"a": 2, "b": 2})
    bad = write_bad_image(root / "a" / "001b.png")
    images = list_images(root)
    with pytest.raises(InputFileError, match="cannot decode image") as info:
        embed_images(small_model(), images, options(batch_size=2))
    assert info.value.path == str(bad)
    out = tmp_path / "e.safetensors"
    [(_, ext)] = extract_to_files(small_model(), [(images, out)], options(skip_bad=True))
    saved = store.load(out)
    assert json.loads(saved.metadata["skipped"]) == ["a/001b.png"]
    assert saved.paths == ["a/000.png", "a/001.png", "b/000.png", "b/001.png"]
    assert saved.labels.tolist() == [0, 0, 1, 1] and ext.computed == 5


def test_resume_reuses_finished_chunks(tmp_path):
    images = list_images(image_folder(tmp_path / "set", {"a": 5, "b": 5}))
    out = tmp_path / "e.safetensors"
    opts = options(batch_size=2, chunk_size=4)

    def interrupt(done: int, total: int) -> None:
        if done >= 6:  # chunk 0 (images 0-3) is on disk, chunk 1 is half done
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_to_files(small_model(), [(images, out)], opts, progress=interrupt)
    partial = partial_dir(out)
    assert not out.exists()
    assert sorted(p.name for p in partial.iterdir()) == ["chunk-000000.safetensors",
                                                         "manifest.json"]
    with pytest.raises(OptionError, match="^resume: .* another model.*without resume to") as e:
        extract_to_files(small_model(), [(images, out)], options(batch_size=2, chunk_size=4,
                                                                 normalize=True), resume=True)
    assert re.match(r"--resume: .* another model.*without --resume to", flag_message(e.value))
    seen: list[int] = []
    [(_, ext)] = extract_to_files(small_model(), [(images, out)], opts, resume=True,
                                  progress=lambda done, total: seen.append(done))
    assert ext.computed == 6 and seen[0] == 4 and not partial.exists()
    fresh = embed_images(small_model(), images, opts).embeddings
    torch.testing.assert_close(store.load(out).embeddings, fresh, rtol=0, atol=0)


def test_a_failing_gallery_leaves_no_output_file(tmp_path):
    q = image_folder(tmp_path / "q", {"a": 2})
    g = image_folder(tmp_path / "g", {"a": 2})
    write_bad_image(g / "a" / "zz.png")
    out = tmp_path / "out"
    out.mkdir()
    query, gallery = list_image_sets([q, g])
    with pytest.raises(InputFileError, match="zz.png"):
        extract_to_files(small_model(), [(query, out / "query.safetensors"),
                                         (gallery, out / "gallery.safetensors")], options())
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    assert not partial_dir(out / "gallery.safetensors").exists()


# ---------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sets")
    image_folder(root / "query", {"cat": 2, "dog": 2}, suffix=".jpg")
    image_folder(root / "gallery", {"ant": 1, "dog": 3}, seed=10)
    return root


@pytest.mark.slow
def test_cli_checkpoint_query_gallery_json(sets, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = build_backbone(ARCH).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt.safetensors", model, architecture=ARCH,
                           preprocessing=PREP)
    r = run_extract(str(ckpt), "--query", str(sets / "query"), "--gallery", str(sets / "gallery"),
                "--out-dir", "out", "--normalize", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["command"] == "extract"
    assert [(f["set"], f["n"], f["dim"]) for f in summary["files"]] == [("query", 4, 8),
                                                                         ("gallery", 4, 8)]
    q, g = store.load(tmp_path / "out" / "query.safetensors"), store.load(
        tmp_path / "out" / "gallery.safetensors")
    assert q.label_names == g.label_names == ["ant", "cat", "dog"]
    assert q.labels.tolist() == [1, 1, 2, 2] and g.labels.tolist() == [0, 2, 2, 2]
    assert q.metadata["normalized"] == "true" and q.metadata["source"] == str(sets / "query")
    assert q.paths == ["cat/000.jpg", "cat/001.jpg", "dog/000.jpg", "dog/001.jpg"]
    expected = embed_images(LoadedModel(model, PREP, "m", "m"), list_images(sets / "query"),
                            options(normalize=True)).embeddings
    torch.testing.assert_close(q.embeddings, expected, rtol=0, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gallery.safetensors",
                                                                    "query.safetensors"]


@pytest.mark.slow
def test_cli_module_callable_with_weights_on_market1501(tmp_path):
    for name in ("0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "-1_c2s1_000001_01.jpg",
                 "0000_c4s2_000002_01.jpg"):
        write_image(tmp_path / "bbox" / name)
    torch.save({f"module.{k}": v for k, v in TinyNet().state_dict().items()}, tmp_path / "w.pt")
    r = run_extract("helpers.models:tiny_net", "bbox", "-o", "e.safetensors", "--weights", "w.pt",
                "--layout", "market1501", "--size", "8", "8", "--head", "identity",
                "--workers", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "e.safetensors" in r.stdout  # the summary table
    e = store.load(tmp_path / "e.safetensors")
    assert e.labels.tolist() == [0, 2, 2] and e.cameras.tolist() == [4, 1, 3]
    assert e.dim == 4 and e.metadata["junk_skipped"] == "1"


@pytest.mark.slow
def test_cli_torchscript_with_csv_and_skip_bad(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(tiny_net(), torch.randn(2, 3, 8, 8)).save(str(tmp_path / "m.ts"))
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.webp")
    write_bad_image(tmp_path / "img" / "c.png")
    (tmp_path / "list.csv").write_text("path,label\nimg/a.png,3\nimg/c.png,4\nimg/b.webp,3\n")
    r = run_extract("m.ts", "list.csv", "-o", "e.safetensors", "--size", "8", "8", "--skip-bad",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    e = store.load(tmp_path / "e.safetensors")
    assert e.paths == ["img/a.png", "img/b.webp"] and e.labels.tolist() == [3, 3]
    assert json.loads(e.metadata["skipped"]) == ["img/c.png"] and e.dim == 6


def _wrong_keys_checkpoint(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    state = dict(build_backbone(ARCH).state_dict())
    state["stem.weight"] = state.pop("features.0.weight")
    path = tmp_path / "ckpt.safetensors"
    save_file(state, str(path), metadata={"embeval.checkpoint": "1", "architecture":
                                          json.dumps(ARCH), "preprocessing":
                                          json.dumps(PREP.to_dict())})
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad image", "missing folder", "empty folder", "wrong keys"])
def test_cli_bad_input_exits_2_with_one_line_and_no_output(sets, tmp_path, case):
    model, query = "embeval-small", str(sets / "query")
    if case == "bad image":
        query = str(image_folder(tmp_path / "q", {"a": 2}))
        named = str(write_bad_image(tmp_path / "q" / "a" / "bad.jpg"))
    elif case == "missing folder":
        query = named = str(tmp_path / "nope")
    elif case == "empty folder":
        query = named = str(tmp_path / "q")
        (tmp_path / "q" / "a").mkdir(parents=True)
    else:
        model = named = str(_wrong_keys_checkpoint(tmp_path))
    r = run_extract(model, "--query", query, "--gallery", str(sets / "gallery"), "--out-dir", "out",
                "--size", "8", "8", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embeval: error: {named}: "), r.stderr
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []



@pytest.mark.parametrize(("make", "message", "flags"), [
    (lambda: Preprocessing(size=(0, 4)),
     "size: expected two positive integers H W, got (0, 4)",
     "--size: expected two positive integers H W, got (0, 4)"),
    (lambda: Preprocessing(size=(8, 8), crop=(9, 4)),
     "crop: expected H W no larger than size (8, 8), got (9, 4)",
     "--crop: expected H W no larger than --size (8, 8), got (9, 4)"),
    (lambda: ExtractOptions(Preprocessing(), batch_size=0),
     "batch_size: must be >= 1, got 0", "--batch-size: must be >= 1, got 0"),
    (lambda: list_image_sets(["x"], layout="regex"),
     "layout regex needs label_regex (named group 'label')",
     "--layout regex needs --label-regex (named group 'label')"),
])
def test_python_errors_name_the_parameter(make, message, flags, tmp_path, monkeypatch):
    """The core names the Python parameter; the command line shows its flag in its place."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    with pytest.raises(OptionError) as e:
        make()
    assert (str(e.value), flag_message(e.value)) == (message, flags)
