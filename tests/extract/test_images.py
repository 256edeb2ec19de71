"""Image-set layouts, decoding and preprocessing (embeval.extract.images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.images import image_folder, write_bad_image, write_image
from PIL import Image

from embeval.errors import InputFileError, OptionError
from embeval.extract.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDataset,
    Preprocessing,
    list_image_sets,
    list_images,
    load_image,
)

# ---------------------------------------------------------------- layouts


def test_imagefolder_labels_are_shared_between_query_and_gallery(tmp_path):
    q = image_folder(tmp_path / "q", {"cat": 2, "dog": 1})
    g = image_folder(tmp_path / "g", {"ant": 1, "dog": 2, "empty": 0})
    query, gallery = list_image_sets([q, g])
    assert query.label_names == gallery.label_names == ["ant", "cat", "dog", "empty"]
    assert query.labels == [1, 1, 2]
    assert gallery.labels == [0, 2, 2]
    assert query.names == ["cat/000.png", "cat/001.png", "dog/000.png"]
    assert query.cameras is None and query.source == q


def test_imagefolder_walks_nested_folders_and_ignores_other_files(tmp_path):
    write_image(tmp_path / "a" / "sub" / "x.JPG")
    write_image(tmp_path / "a" / "y.webp")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "b" / "z.bmp")
    images = list_images(tmp_path)
    assert images.names == ["a/sub/x.JPG", "a/y.webp", "b/z.bmp"]
    assert images.labels == [0, 0, 1]


def test_regex_layout_numeric_labels_and_cameras(tmp_path):
    for name in ("id7_cam2_a.png", "id12_cam1_b.png", "id7_cam1_c.png"):
        write_image(tmp_path / name)
    images = list_images(tmp_path, label_regex=r"id(?P<label>\d+)_cam(?P<camera>\d+)")
    assert images.names == ["id12_cam1_b.png", "id7_cam1_c.png", "id7_cam2_a.png"]
    assert images.labels == [12, 7, 7]
    assert images.cameras == [1, 1, 2]
    assert images.label_names is None


def test_regex_layout_text_labels_get_one_mapping_for_all_sets(tmp_path):
    write_image(tmp_path / "q" / "zebra_1.png")
    write_image(tmp_path / "g" / "apple_1.png")
    write_image(tmp_path / "g" / "zebra_2.png")
    q, g = list_image_sets([tmp_path / "q", tmp_path / "g"], layout="regex",
                           label_regex=r"^(?P<label>[a-z]+)_")
    assert q.label_names == ["apple", "zebra"]
    assert q.labels == [1] and g.labels == [0, 1]


def test_market1501_preset_skips_junk_and_keeps_distractors(tmp_path):
    for name in ("0002_c1s1_000451_03.jpg", "-1_c3s2_000100_01.jpg", "0000_c6s1_000001_02.jpg",
                 "1501_c2s3_071552_01.jpg"):
        write_image(tmp_path / name)
    images = list_images(tmp_path, layout="market1501")
    assert images.names == ["0000_c6s1_000001_02.jpg", "0002_c1s1_000451_03.jpg",
                            "1501_c2s3_071552_01.jpg"]
    assert images.labels == [0, 2, 1501]
    assert images.cameras == [6, 1, 2]
    assert images.junk_skipped == 1


def test_market1501_all_junk_is_an_error(tmp_path):
    write_image(tmp_path / "-1_c1s1_000001_01.jpg")
    with pytest.raises(InputFileError, match="no images left after skipping 1 junk"):
        list_images(tmp_path, layout="market1501")


def test_csv_layout_paths_relative_to_the_csv(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    absolute = write_image(tmp_path / "elsewhere" / "b.jpg")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "set.csv").write_text(f"path,label,camera\n../imgs/a.png,5,1\n{absolute},3,2\n")
    images = list_images(lists / "set.csv")  # auto-detected from the file
    assert images.files == [lists / "../imgs/a.png", absolute]
    assert images.labels == [5, 3] and images.cameras == [1, 2]
    assert load_image(images.files[0]).shape == (3, 10, 12)


def test_csv_layout_text_labels_without_header_or_camera(tmp_path):
    (tmp_path / "set.csv").write_text("x.png,dog\ny.png,cat\n\n")
    images = list_images(tmp_path / "set.csv", layout="csv")
    assert images.labels == [1, 0] and images.label_names == ["cat", "dog"]
    assert images.cameras is None


def test_csv_layout_bad_line_names_the_line(tmp_path):
    (tmp_path / "set.csv").write_text("x.png,1\ny.png\n")
    with pytest.raises(InputFileError, match=r"set\.csv: line 2: expected 'path,label'"):
        list_images(tmp_path / "set.csv")


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda p: None, {}, "no such folder"),
    (lambda p: p.mkdir(), {}, "no class sub-folders"),
    (lambda p: (p / "a").mkdir(parents=True), {}, "no images found"),
    (lambda p: write_image(p / "x.png"), {}, "use label_regex or layout market1501"),
    (lambda p: p.mkdir(), {"layout": "market1501"}, "no images found"),
    (lambda p: (p.mkdir(), write_image(p / "x.png")),
     {"label_regex": r"(?P<label>\d+)"}, "x.png: file name does not match"),
])
def test_missing_and_empty_sets_name_the_folder(tmp_path, make, kwargs, message):
    root = tmp_path / "set"
    make(root)
    with pytest.raises(InputFileError, match=message) as info:
        list_images(root, **kwargs)
    assert str(root) in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"label_regex": r"(?P<id>\d+)"}, "no named group 'label'"),
    ({"label_regex": r"(?P<label>\d+"}, "invalid regular expression"),
    ({"layout": "regex"}, "needs label_regex"),
    ({"layout": "market1501", "label_regex": "x"}, "cannot be used"),
    ({"layout": "coco"}, "unknown layout"),
])
def test_bad_layout_options(tmp_path, kwargs, message):
    write_image(tmp_path / "1_a.png")
    with pytest.raises(OptionError, match=message):
        list_images(tmp_path, **kwargs)


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("suffix, mode", [
    (suffix, mode) for suffix in (".jpg", ".png", ".webp", ".bmp") for mode in ("RGB", "L", "RGBA", "P")
    if not (suffix == ".jpg" and mode in ("RGBA", "P"))  # JPEG has neither alpha nor palettes
])
def test_every_format_and_mode_decodes_to_rgb(tmp_path, suffix, mode):
    path = write_image(tmp_path / f"x{suffix}", mode=mode)
    x = load_image(path)
    assert x.dtype == torch.uint8 and x.shape == (3, 10, 12)
    expected = np.array(Image.open(path).convert("RGB"))
    assert torch.equal(x, torch.from_numpy(expected).permute(2, 0, 1))


def test_undecodable_image_names_the_file(tmp_path):
    bad = write_bad_image(tmp_path / "bad.png")
    with pytest.raises(InputFileError, match="cannot decode image") as info:
        load_image(bad)
    assert info.value.path == str(bad)


def test_dataset_returns_decoding_errors_as_values(tmp_path):
    good = write_image(tmp_path / "good.png")
    bad = write_bad_image(tmp_path / "bad.png")
    ds = ImageDataset([good, bad, tmp_path / "gone.png"], Preprocessing(size=(4, 6)))
    index, batch, errors = ImageDataset.collate([ds[0], ds[1], ds[2]])
    assert index.tolist() == [0] and batch.shape == (1, 3, 4, 6)
    assert [i for i, _ in errors] == [1, 2]
    assert "cannot decode image" in errors[0][1] and "no such file" in errors[1][1]


# ---------------------------------------------------------------- preprocessing


def test_preprocessing_normalises_with_imagenet_defaults():
    x = torch.full((3, 5, 7), 51, dtype=torch.uint8)
    y = Preprocessing(size=(5, 7))(x)
    expected = (torch.tensor([0.2] * 3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(y, expected.view(3, 1, 1).expand(3, 5, 7), atol=1e-6)


def test_preprocessing_resizes_antialiased_then_center_crops():
    x = torch.arange(3 * 20 * 30, dtype=torch.float32).reshape(3, 20, 30).remainder(256)
    prep = Preprocessing(size=(10, 12), crop=(6, 8), mean=(0, 0, 0), std=(1, 1, 1))
    y = prep(x.to(torch.uint8))
    resized = F.interpolate(x.to(torch.uint8).float()[None], size=(10, 12), mode="bilinear",
                            antialias=True, align_corners=False)[0] / 255
    assert y.shape == (3, 6, 8) and prep.output_size == (6, 8)
    assert torch.allclose(y, resized[:, 2:8, 2:10], atol=1e-6)


def test_preprocessing_round_trips_through_dict_and_overrides():
    prep = Preprocessing(size=(64, 32), crop=(60, 30), mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4))
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert Preprocessing.from_dict(prep.to_dict(), size=(70, 40), crop=None).size == (70, 40)


@pytest.mark.parametrize("kwargs", [{"size": (0, 4)}, {"size": (4, 4), "crop": (5, 4)},
                                    {"std": (1.0, 0.0, 1.0)}])
def test_preprocessing_rejects_bad_values(kwargs):
    with pytest.raises(OptionError):
        Preprocessing(**kwargs)
