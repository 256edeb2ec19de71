"""Image sets on disk -> (files, labels, cameras), Pillow decoding and torch preprocessing.

Layouts (``layout=``):

==============  =====================================================================
imagefolder     ``DIR/<label>/**/*.jpg``; sorted class names -> 0..C-1, names kept
regex           a flat ``DIR/*.jpg`` whose file names match a regex with named groups
                ``label`` and optionally ``camera`` (``re.search`` on the file name)
market1501      the regex preset ``0002_c1s1_000451_03.jpg`` -> label 2, camera 1;
                junk images (label -1) are skipped as torchreid does, distractors
                (label 0) are kept
csv             a ``path,label[,camera]`` file (an optional ``path,label,...`` header);
                relative paths are relative to the CSV's folder
==============  =====================================================================

Labels that are all integers (regex, market1501, csv) are kept as they are;
otherwise the sorted distinct names become 0..C-1 and the names are kept
(``label_names``). :func:`list_image_sets` builds that mapping over ALL the sets
it is given, so a class name gets the same index in the query and the gallery.

Images (JPEG, PNG, WebP, BMP; grayscale, palette and RGBA become RGB) are
decoded with Pillow and preprocessed in torch: bilinear antialiased resize to
``size``, optional center crop, ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from embeval._vocab import IMAGENET_MEAN, IMAGENET_STD, LAYOUTS  # defined without torch, for the CLI
from embeval.errors import InputFileError, OptionError

__all__ = [
    "IMAGE_EXTENSIONS", "LAYOUTS", "MARKET1501_REGEX", "IMAGENET_MEAN", "IMAGENET_STD",
    "ImageList", "Preprocessing", "ImageDataset", "list_images", "list_image_sets",
    "decode_image", "load_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MARKET1501_REGEX = r"^(?P<label>-?\d+)_c(?P<camera>\d+)"


@dataclass
class ImageList:
    """One image set: ``files[i]`` has label ``labels[i]`` (and camera ``cameras[i]``).

    ``names[i]`` is how item i is recorded in the embedding file (its path relative
    to ``source`` where possible). ``label_names[k]`` names label k, when known.
    """

    source: Path
    files: list[Path]
    names: list[str]
    labels: list[int]
    cameras: list[int] | None = None
    label_names: list[str] | None = None
    junk_skipped: int = 0
    #: benchmark layouts (:mod:`embeval.layouts`): encoded images held in memory (``files``
    #: then only name them), query crops (left, top, right, bottom in pixels, or None), five
    #: landmarks [5, 2] to align to the ArcFace template, and extra [N] tensors written to the
    #: file (templates, media, faceness)
    blobs: list[bytes] | None = None
    boxes: list[tuple[float, float, float, float] | None] | None = None
    landmarks: np.ndarray | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class Preprocessing:
    """Resize to ``size`` (H, W), then center-crop to ``crop`` (H, W) if set, then normalise.

    ``mean`` / ``std`` are per RGB channel, for pixel values scaled to [0, 1].
    """

    size: tuple[int, int] = (224, 224)
    crop: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise OptionError(f"size: expected two positive integers H W, got {self.size}",
                              param="size")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1
                                      or self.crop[0] > self.size[0]
                                      or self.crop[1] > self.size[1]):
            raise OptionError(f"crop: expected H W no larger than size {self.size}, "
                              f"got {self.crop}", param=("crop", "size"))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise OptionError("mean/std: expected three numbers each, std > 0", param=("mean", "std"))
        object.__setattr__(self, "_mean", torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1))
        object.__setattr__(self, "_std", torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1))

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop or self.size

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in checkpoints as ``preprocessing``)."""
        return {"size": list(self.size), "crop": list(self.crop) if self.crop else None,
                "mean": list(self.mean), "std": list(self.std), "interpolation": "bilinear"}

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> Preprocessing:
        """From :meth:`to_dict` output; ``overrides`` that are not None win."""
        keys = ("size", "crop", "mean", "std")
        values: dict[str, Any] = {k: d.get(k) for k in keys if d.get(k) is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: tuple(v) for k, v in values.items()})

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [3, h, w] -> float32 [3, H, W] (H, W = ``output_size``)."""
        x = image.to(torch.float32)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False,
                              antialias=True)[0]
        if self.crop is not None:
            top = (self.size[0] - self.crop[0]) // 2
            left = (self.size[1] - self.crop[1]) // 2
            x = x[:, top:top + self.crop[0], left:left + self.crop[1]]
        return ((x / 255.0 - self._mean) / self._std).contiguous()  # type: ignore[attr-defined]


def decode_image(path: str | Path, data: bytes | None = None) -> Image.Image:
    """Decode one image file (or its bytes ``data``, ``path`` naming them) with Pillow as RGB;
    raises :class:`InputFileError` if it cannot."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as opened:
            im: Image.Image = opened
            im.load()
            if im.mode == "RGB":
                return im.copy()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale PNG
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255)
                                     .astype(np.uint8))
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputFileError(path, "cannot read image (no such file)") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise InputFileError(path, f"cannot decode image ({e})") from None


def load_image(path: str | Path) -> torch.Tensor:
    """Decode one image file as a uint8 [3, H, W] tensor."""
    arr = np.array(decode_image(path), dtype=np.uint8)  # [H, W, 3], a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1)


class ImageDataset(torch.utils.data.Dataset):
    """``ds[i] -> (i, image [3, H, W] float32 or None, error message or None)``.

    Decoding errors come back as values (never raised in a worker process), so
    the caller decides between stopping and skipping. Use :func:`collate` with it.
    """

    def __init__(self, files: Sequence[Path], preprocessing: Preprocessing, *,
                 blobs: Sequence[bytes] | None = None,
                 boxes: Sequence[tuple[float, float, float, float] | None] | None = None,
                 landmarks: np.ndarray | None = None) -> None:
        self.files = list(files)
        self.preprocessing = preprocessing
        self.blobs, self.boxes, self.landmarks = blobs, boxes, landmarks

    @classmethod
    def of(cls, images: ImageList, preprocessing: Preprocessing) -> ImageDataset:
        """The dataset of an :class:`ImageList` (with its blobs, crops and landmarks)."""
        return cls(images.files, preprocessing, blobs=images.blobs, boxes=images.boxes,
                   landmarks=images.landmarks)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            im = decode_image(self.files[i], None if self.blobs is None else self.blobs[i])
            box = None if self.boxes is None else self.boxes[i]
            if box is not None:
                im = im.crop(box)  # Pillow rounds the box, as cirtorch's imcrop does
            if self.landmarks is not None:
                from embeval.extract.align import align_face

                im = align_face(im, self.landmarks[i])
            arr = np.array(im, dtype=np.uint8)
            return i, self.preprocessing(torch.from_numpy(arr).permute(2, 0, 1)), None
        except InputFileError as e:
            return i, None, e.problem

    @staticmethod
    def collate(
        items: list[tuple[int, torch.Tensor | None, str | None]],
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]:
        """-> (indices [B'] int64 of decoded items, images [B', 3, H, W] or None, errors)."""
        good = [(i, x) for i, x, _ in items if x is not None]
        errors = [(i, err) for i, x, err in items if x is None]
        index = torch.tensor([i for i, _ in good], dtype=torch.int64)
        batch = torch.stack([x for _, x in good]) if good else None
        return index, batch, errors  # type: ignore[return-value]


# ---------------------------------------------------------------- layouts


@dataclass
class _Raw:
    source: Path
    files: list[Path]
    names: list[str]
    labels: list[str]
    cameras: list[str] | None
    folder_labels: bool  # imagefolder: labels are always names
    junk: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def list_images(source: str | Path, *, layout: str = "auto",
                label_regex: str | None = None) -> ImageList:
    """The images of one set with their labels; see the module docstring for layouts."""
    return list_image_sets([source], layout=layout, label_regex=label_regex)[0]


def list_image_sets(sources: Sequence[str | Path], *, layout: str = "auto",
                    label_regex: str | None = None) -> list[ImageList]:
    """Several sets (query, gallery) with ONE label mapping shared by all of them.

    Raises :class:`InputFileError` for a missing or empty folder / CSV and
    :class:`OptionError` for a bad layout or regex.
    """
    if layout not in LAYOUTS:
        raise OptionError(f"layout: unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})",
                          param="layout")
    if label_regex is not None and layout not in ("auto", "regex"):
        raise OptionError(f"label_regex cannot be used with layout {layout}",
                          param=("label_regex", "layout"))
    raws = [_list_raw(Path(s), layout, label_regex) for s in sources]
    return _assign_labels(raws)


def _list_raw(src: Path, layout: str, label_regex: str | None) -> _Raw:
    if not src.exists():
        raise InputFileError(src, "no such folder or file")
    if layout == "auto":
        if src.is_file():
            layout = "csv"
        elif label_regex is not None:
            layout = "regex"
        else:
            layout = "imagefolder"
    if layout == "csv":
        raw = _list_csv(src)
    elif src.is_file():
        raise InputFileError(src, f"is a file; layout {layout} expects a folder", param="layout")
    elif layout == "imagefolder":
        raw = _list_imagefolder(src)
    else:
        pattern = MARKET1501_REGEX if layout == "market1501" else label_regex
        if pattern is None:
            raise OptionError("layout regex needs label_regex (named group 'label')",
                              param=("layout", "label_regex"))
        raw = _list_flat(src, _compile(pattern), junk=layout == "market1501")
    if not raw.files:
        if raw.junk:
            raise InputFileError(src, f"no images left after skipping {raw.junk} junk image(s)")
        if layout == "csv":
            raise InputFileError(src, "lists no images")
        raise InputFileError(src, "no images found (looked for "
                                  f"{', '.join(IMAGE_EXTENSIONS)})")
    return raw


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _list_imagefolder(root: Path) -> _Raw:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        if any(_is_image(p) for p in root.iterdir()):
            raise InputFileError(root, "has images but no class sub-folders; for a flat folder "
                                       "use label_regex or layout market1501",
                                 param=("label_regex", "layout"))
        raise InputFileError(root, "no class sub-folders with images (expected DIR/<label>/*.jpg)")
    files: list[Path] = []
    labels: list[str] = []
    for c in classes:
        found = sorted(p for p in (root / c).rglob("*") if _is_image(p) and p.is_file())
        files += found
        labels += [c] * len(found)
    names = [p.relative_to(root).as_posix() for p in files]
    return _Raw(root, files, names, labels, None, folder_labels=True,
                extra={"classes": classes})


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise OptionError(f"label_regex: invalid regular expression {pattern!r} ({e})",
                          param="label_regex") from None
    if "label" not in rx.groupindex:
        raise OptionError(f"label_regex: {pattern!r} has no named group 'label' "
                          "(write it as (?P<label>...))", param="label_regex")
    return rx


def _list_flat(root: Path, rx: re.Pattern[str], *, junk: bool) -> _Raw:
    files, labels, cameras = [], [], []
    skipped = 0
    has_camera = "camera" in rx.groupindex
    for p in sorted(p for p in root.iterdir() if p.is_file() and _is_image(p)):
        m = rx.search(p.name)
        if m is None or m.group("label") is None:
            raise InputFileError(p, f"file name does not match the label regex {rx.pattern!r}")
        if junk and m.group("label") == "-1":
            skipped += 1
            continue
        files.append(p)
        labels.append(m.group("label"))
        if has_camera:
            cameras.append(m.group("camera") or "-1")  # no camera in the name: unknown
    return _Raw(root, files, [p.name for p in files], labels, cameras if has_camera else None,
                folder_labels=False, junk=skipped)


def _list_csv(path: Path) -> _Raw:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(n, r) for n, r in enumerate(csv.reader(f), 1) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise InputFileError(path, f"cannot read CSV ({e})") from None
    if rows and rows[0][1][0].strip().lower() == "path":
        rows = rows[1:]
    widths = {len(r) for _, r in rows}
    if rows and (widths - {2, 3} or len(widths) > 1):
        n, r = next((n, r) for n, r in rows if len(r) != len(rows[0][1]) or len(r) not in (2, 3))
        raise InputFileError(path, f"line {n}: expected 'path,label' or 'path,label,camera' on "
                                   f"every line, got {len(r)} field(s)")
    base = path.parent
    files, names, labels, cameras = [], [], [], []
    for _, r in rows:
        rel = r[0].strip()
        files.append(Path(rel) if Path(rel).is_absolute() else base / rel)
        names.append(rel)
        labels.append(r[1].strip())
        if len(r) == 3:
            cameras.append(r[2].strip())
    has_cam = bool(rows) and len(rows[0][1]) == 3
    return _Raw(base, files, names, labels, cameras if has_cam else None, folder_labels=False)


def _is_int(s: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", s) is not None


def _codes(values: list[list[str]], force_names: bool) -> tuple[list[list[int]], list[str] | None]:
    """Map string labels of all sets to ints: kept when all are integers, else sorted names."""
    if not force_names and all(_is_int(v) for vs in values for v in vs):
        return [[int(v) for v in vs] for vs in values], None
    names = sorted({v for vs in values for v in vs})
    index = {n: i for i, n in enumerate(names)}
    return [[index[v] for v in vs] for vs in values], names


def _assign_labels(raws: list[_Raw]) -> list[ImageList]:
    folder = any(r.folder_labels for r in raws)
    label_values = [r.labels for r in raws]
    if folder:  # include empty class folders so that indices follow the folder names
        label_values = label_values + [r.extra.get("classes", []) for r in raws]
    codes, label_names = _codes(label_values, force_names=folder)
    cam_sets = [r.cameras for r in raws if r.cameras is not None]
    cam_codes, _ = _codes(cam_sets, force_names=False) if cam_sets else ([], None)
    out, k = [], 0
    for r, labels in zip(raws, codes):
        cameras = None
        if r.cameras is not None:
            cameras, k = cam_codes[k], k + 1
        out.append(ImageList(r.source, r.files, r.names, labels, cameras, label_names, r.junk))
    return out
