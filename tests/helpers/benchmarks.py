"""Tiny benchmarks in their exact distributed formats, written at test time (Pillow images)."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from embeval.extract.align import ARCFACE_112


def jpeg_bytes(seed: int, size: tuple[int, int] = (12, 12)) -> bytes:
    """A random RGB image of ``size`` (H, W) encoded as JPEG."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def py2_bin_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """``(bins, issame_list)`` as Python 2's cPickle protocol 2 writes it: images as
    ``str`` (SHORT_BINSTRING / BINSTRING), flags as NEWTRUE / NEWFALSE (what the
    distributed insightface bins hold)."""
    out = [b"\x80\x02", b"]", b"("]
    for b in bins:
        out.append(b"U" + bytes([len(b)]) + b if len(b) < 256 else
                   b"T" + struct.pack("<i", len(b)) + b)
    out += [b"e", b"]", b"("]
    out += [b"\x88" if s else b"\x89" for s in issame]
    out += [b"e", b"\x86", b"."]
    return b"".join(out)


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (12, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed, size))
    return path


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    """The 2 x 3 similarity transform (rotation ``angle`` in radians, then shift)."""
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def write_ijb(root: Path, t: str = "ijbc") -> tuple[list, list, list]:
    """An IJB-B/C root (``t``: ijbb, ijbc) of 4 templates: t1 (2 images, one medium),
    t2 (1), t3 (2 images, two media), t4 (1)."""
    rng = np.random.default_rng(2)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    images = [("1.jpg", 1, 100), ("2.jpg", 1, 100), ("3.jpg", 2, 200), ("4.jpg", 3, 300),
              ("5.jpg", 3, 301), ("6.jpg", 4, 400)]
    lmk_lines, tid_lines, truth = [], [], []
    for k, (name, tid, mid) in enumerate(images):
        Image.fromarray(rng.integers(0, 256, (90, 80, 3)).astype(np.uint8)).save(
            root / "loose_crop" / name, quality=95)
        m = similarity(1.0 + 0.1 * k, 0.05 * k, 3 + k, 2)
        lmk = (ARCFACE_112 - m[:, 2]) @ np.linalg.inv(m[:, :2]).T
        score = 0.5 + 0.1 * k
        lmk_lines.append(" ".join([name, *(f"{v:.4f}" for v in lmk.ravel()), f"{score:.3f}"]))
        tid_lines.append(f"{name} {tid} {mid}")
        truth.append((lmk.round(4), score))
    (root / "meta" / f"{t}_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")
    (root / "meta" / f"{t}_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    pairs = [(1, 2, 1), (1, 3, 0), (2, 4, 0), (3, 4, 1), (1, 4, 0)]
    (root / "meta" / f"{t}_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {s}\n" for a, b, s in pairs))
    return images, truth, pairs


def fixture_bin(tmp_path: Path, issame: tuple[bool, ...] = (True, False, True, False, False, True)
                ) -> tuple[Path, list[bytes], list[bool]]:
    """An insightface ``lfw.bin``: genuine pairs are one image twice (score 1), impostors two
    different images."""
    bins = []
    for p, same in enumerate(issame):
        a = jpeg_bytes(10 * p)
        bins += [a, a if same else jpeg_bytes(10 * p + 1)]
    path = tmp_path / "lfw.bin"
    path.write_bytes(py2_bin_pickle(bins, list(issame)))
    return path, bins, list(issame)


def lfw_root(tmp_path: Path, folds: int = 2, count: int = 2) -> tuple[Path, list[str]]:
    """An LFW root: ``folds`` folds of ``count`` genuine then ``count`` impostor lines (tabs, as shipped)."""
    root = tmp_path / "LFW"
    people = ["Aaron_Peirsol", "Abel_Pacheco", "Zico", "Zoe_Ball"]
    seed = 0
    for p in people:
        for k in (1, 2, 3):
            write_jpeg(root / "lfw" / p / f"{p}_{k:04d}.jpg", seed)
            seed += 1
    lines = [f"{folds}\t{count}"]
    for f in range(folds):
        for c in range(count):
            p = people[(f + c) % 4]
            lines.append(f"{p}\t1\t{2 + c % 2}")
        for c in range(count):
            a, b = people[(f + c) % 4], people[(f + c + 1) % 4]
            lines.append(f"{a}\t{1 + c % 3}\t{b}\t3")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root, lines


def write_sop(root: Path) -> tuple[Path, list[int]]:
    """A Stanford Online Products root: 8 images of 3 classes in ``Ebay_test.txt``."""
    lines = ["image_id class_id super_class_id path"]
    labels = [11319, 11319, 11319, 11320, 11320, 11321, 11321, 11321]
    for i, c in enumerate(labels):
        rel = f"bicycle_final/{c}{i:05d}_{i % 3}.JPG"
        write_jpeg(root / rel, seed=i)
        lines.append(f"{i + 1} {c} 1 {rel}")
    (root / "Ebay_test.txt").write_text("\n".join(lines) + "\n")
    return root, labels


#: (label, camera) of the query and gallery images of every fixture
QUERY = [(1, 1), (1, 2), (2, 1), (3, 3)]
GALLERY = [(1, 1), (1, 3), (2, 1), (2, 2), (3, 3), (0, 2), (4, 1), (1, 2)]


def market_names(items: list[tuple[int, int]], duke: bool = False) -> list[str]:
    """Market-1501 (or DukeMTMC-reID) file names of (label, camera) items."""
    return [f"{pid:04d}_c{cam}_f{i:07d}.jpg" if duke else f"{pid:04d}_c{cam}s1_{i:06d}_01.jpg"
            for i, (pid, cam) in enumerate(items)]


def write_market(root: Path, duke: bool = False) -> Path:
    """A Market-1501 (or DukeMTMC-reID) root: :data:`QUERY` and :data:`GALLERY` (+ one junk image)."""
    for folder, items in (("query", QUERY), ("bounding_box_test", GALLERY)):
        for i, name in enumerate(market_names(items, duke)):
            write_jpeg(root / folder / name, seed=hash((folder, i)) % 1000)
    if not duke:  # junk (-1) is skipped as torchreid does
        write_jpeg(root / "bounding_box_test" / "-1_c1s1_000000_00.jpg", seed=5)
    return root


#: the ground truth of :func:`write_roxford`'s 3 queries over its 8 database images
GND = [{"bbx": [1.4, 2.6, 9.5, 11.2], "easy": [0, 3], "hard": [5], "junk": [1]},
       {"bbx": [0, 0, 12, 12], "easy": [], "hard": [2, 6], "junk": [4, 7]},
       {"bbx": [3, 3, 10, 9], "easy": [7], "hard": [], "junk": []}]


def write_roxford(root: Path, as_numpy: bool = False, gnd: list[dict] = GND
                  ) -> tuple[Path, list[str], list[str]]:
    """A revisited Oxford root: 8 database and 3 query images, ``gnd`` pickled (numpy arrays
    with ``as_numpy``)."""
    imlist = [f"all_souls_{i:06d}" for i in range(8)]
    qimlist = ["all_souls_q1", "ashmolean_q2", "bodleian_q3"]
    for i, n in enumerate(imlist + qimlist):
        write_jpeg(root / "jpg" / f"{n}.jpg", seed=i, size=(14, 16))
    if as_numpy:
        gnd = [{"bbx": np.array(g["bbx"], dtype=np.float64),
                **{k: np.array(g[k], dtype=np.int64) for k in ("easy", "hard", "junk")}}
               for g in gnd]
    (root / "gnd_roxford5k.pkl").write_bytes(
        pickle.dumps({"gnd": gnd, "imlist": imlist, "qimlist": qimlist}))
    return root, imlist, qimlist
