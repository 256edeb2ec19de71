"""Person and vehicle re-identification: Market-1501, DukeMTMC-reID, MSMT17, VeRi-776.

As torchreid reads them (``torchreid/data/datasets/image/{market1501,dukemtmcreid,msmt17}.py``)
and fast-reid reads VeRi (``fastreid/data/datasets/veri.py``):

- Market-1501: ``query/`` and ``bounding_box_test/`` (gallery), ``0002_c1s1_000451_03.jpg``:
  label 2, camera 1; junk images (label -1) are skipped, distractors (label 0) kept as
  negatives (the :mod:`embeval.extract.images` ``market1501`` layout). BENCH_ROOT may also
  hold them under ``Market-1501-v15.09.15/``.
- DukeMTMC-reID: the same folders and names (``0005_c2_f0046985.jpg``); nothing skipped.
- MSMT17: ``list_query.txt`` / ``list_gallery.txt``, lines ``<path> <label>`` with paths under
  ``test/`` (V1) or ``mask_test_v2/`` (V2); the camera is the path's third ``_`` field
  (``0000/0000_000_01_0303morning_0015_0.jpg``: camera 1). BENCH_ROOT may be the dataset
  folder or hold ``MSMT17_V1/`` / ``MSMT17_V2/``.
- VeRi-776: ``name_query.txt`` / ``name_test.txt`` (one file name a line) over
  ``image_query/`` / ``image_test/``; ``0002_c002_00030600_0.jpg``: label 2, camera 2.

Cameras are kept as the numbers in the names (torchreid subtracts 1; only equality matters).
The protocol: ``cmc QUERY GALLERY --exclude-same-camera`` (a gallery item with the query's
label and camera is left out; rank-k and mAP over queries with a positive left).
"""

from __future__ import annotations

import re
from pathlib import Path

from embeval.errors import InputFileError
from embeval.extract.images import MARKET1501_REGEX, ImageList, list_image_sets
from embeval.layouts.base import Benchmark, as_int, fields, need_images, text_lines

__all__ = ["read"]

_VERI = re.compile(r"^(\d+)_c(\d+)")


def _counts(q: ImageList, g: ImageList) -> dict[str, int]:
    ids = {x for x in q.labels + g.labels if x >= 0}
    cams = set((q.cameras or []) + (g.cameras or []))
    counts = {"query": len(q), "gallery": len(g), "labels": len(ids), "cameras": len(cams)}
    junk = q.junk_skipped + g.junk_skipped
    return {**counts, "junk_skipped": junk} if junk else counts


def _market_like(name: str, root: Path) -> Benchmark:
    sub = root / "Market-1501-v15.09.15"
    base = sub if name == "market1501" and sub.is_dir() else root
    duke = base / "DukeMTMC-reID"
    if name == "dukemtmc-reid" and not (base / "query").is_dir() and duke.is_dir():
        base = duke
    for d in ("query", "bounding_box_test"):
        if not (base / d).is_dir():
            raise InputFileError(base / d, f"no such folder ({name} reads query/ and "
                                           "bounding_box_test/)")
    if name == "market1501":
        q, g = list_image_sets([base / "query", base / "bounding_box_test"], layout="market1501")
    else:
        q, g = list_image_sets([base / "query", base / "bounding_box_test"], layout="regex",
                               label_regex=MARKET1501_REGEX)
    return Benchmark(name, {"query": q, "gallery": g}, _counts(q, g), metadata={"benchmark": name})


def _msmt_list(listing: Path, images: Path) -> ImageList:
    files, names, labels, cameras, lines = [], [], [], [], []
    for n, text in text_lines(listing):
        rel, pid = fields(listing, n, text, (2,), "'path label'")
        parts = Path(rel).name.split("_")
        if len(parts) < 3 or not parts[2].isdigit():
            raise InputFileError(listing, f"line {n}: {rel!r} has no camera (third '_' field)")
        files.append(images / rel)
        names.append(rel)
        labels.append(as_int(listing, n, pid, "label"))
        cameras.append(int(parts[2]))
        lines.append(n)
    if not files:
        raise InputFileError(listing, "lists no images")
    need_images(listing, files, lines)
    return ImageList(images, files, names, labels, cameras)


def _msmt17(name: str, root: Path) -> Benchmark:
    base = next((root / v for v in ("MSMT17_V2", "MSMT17_V1") if (root / v).is_dir()), root)
    images = next((base / d for d in ("mask_test_v2", "test") if (base / d).is_dir()), None)
    if images is None:
        raise InputFileError(base, "no test/ or mask_test_v2/ folder (MSMT17's test images)")
    q = _msmt_list(base / "list_query.txt", images)
    g = _msmt_list(base / "list_gallery.txt", images)
    return Benchmark(name, {"query": q, "gallery": g}, _counts(q, g), metadata={"benchmark": name})


def _veri_list(listing: Path, images: Path) -> ImageList:
    files, labels, cameras, lines = [], [], [], []
    for n, text in text_lines(listing):
        (file,) = fields(listing, n, text, (1,), "one file name")
        m = _VERI.match(file)
        if m is None:
            raise InputFileError(listing, f"line {n}: {file!r} is not 'label_cNNN_...jpg'")
        files.append(images / file)
        labels.append(int(m.group(1)))
        cameras.append(int(m.group(2)))
        lines.append(n)
    if not files:
        raise InputFileError(listing, "lists no images")
    need_images(listing, files, lines)
    return ImageList(images, files, [f.name for f in files], labels, cameras)


def _veri776(name: str, root: Path) -> Benchmark:
    q = _veri_list(root / "name_query.txt", root / "image_query")
    g = _veri_list(root / "name_test.txt", root / "image_test")
    return Benchmark(name, {"query": q, "gallery": g}, _counts(q, g), metadata={"benchmark": name})


def read(name: str, root: Path) -> Benchmark:
    """The query and gallery sets of re-ID benchmark ``name`` under ``root``."""
    if name == "msmt17":
        return _msmt17(name, root)
    if name == "veri776":
        return _veri776(name, root)
    return _market_like(name, root)
