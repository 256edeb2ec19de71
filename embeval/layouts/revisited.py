"""Revisited Oxford / Paris (``roxford5k``, ``rparis6k``) as revisitop distributes them.

``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` (beside ``jpg/``) hold a dict: ``imlist`` (the
database image names, without ``.jpg``), ``qimlist`` (the query image names) and ``gnd``, one
dict per query with ``bbx`` (the query region: left, top, right, bottom in pixels) and the
0-based database indices ``easy``, ``hard`` and ``junk`` (revisitop ``python/dataset.py``;
cirtorch's test loop crops each query image to ``bbx`` with Pillow before embedding). The
pickle is read with :func:`embeval.safe_load.load_plain_pickle`: no global is resolved except
numpy's array reconstruction (lists may be stored as numpy arrays); Python 2 strings are
accepted as bytes.

Output: ``query.safetensors`` (the cropped queries), ``gallery.safetensors`` (the database)
and ``ground_truth.csv`` (``query,gallery,kind`` rows, kind easy / hard / junk), which
``cmc --protocol roxford|rparis --relevance`` reads (mAP and mP@k in the easy, medium and hard
settings, revisitop's trapezoid AP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embeval.errors import InputFileError
from embeval.extract.images import ImageList
from embeval.layouts.base import Benchmark
from embeval.safe_load import load_plain_pickle

__all__ = ["read", "read_gnd"]

_KINDS = ("easy", "hard", "junk")


def _text(x: Any) -> str | None:
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    return x if isinstance(x, str) else None


def _plain(obj: Any) -> Any:
    """bytes keys / strings -> str (a Python 2 pickle), numpy arrays -> lists."""
    if isinstance(obj, dict):
        return {(_text(k) or k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (int, float)):
        return _plain(obj.tolist())
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return obj


def read_gnd(path: Path) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(imlist, qimlist, gnd) of a revisitop ground-truth pickle, checked."""
    cfg = _plain(load_plain_pickle(path, numpy_arrays=True))
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("imlist", "qimlist", "gnd")):
        raise InputFileError(path, "not a revisitop ground truth (expected a dict with "
                                   "imlist, qimlist and gnd)")
    imlist, qimlist, gnd = cfg["imlist"], cfg["qimlist"], cfg["gnd"]
    for key, names in (("imlist", imlist), ("qimlist", qimlist)):
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputFileError(path, f"{key} is not a list of image names")
    if not isinstance(gnd, list) or len(gnd) != len(qimlist):
        raise InputFileError(path, f"gnd has {len(gnd) if isinstance(gnd, list) else 'no'} "
                                   f"entries for {len(qimlist)} queries")
    for i, g in enumerate(gnd):
        if not isinstance(g, dict):
            raise InputFileError(path, f"gnd[{i}] is not a dict")
        box = g.get("bbx")
        if box is not None and (not isinstance(box, list) or len(box) != 4
                                or not all(isinstance(v, (int, float)) for v in box)):
            raise InputFileError(path, f"gnd[{i}]['bbx'] is not 4 numbers")
        for kind in _KINDS:
            ids = g.get(kind, [])
            if not isinstance(ids, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                    for v in ids):
                raise InputFileError(path, f"gnd[{i}][{kind!r}] is not a list of indices")
            bad = [v for v in ids if not 0 <= v < len(imlist)]
            if bad:
                raise InputFileError(path, f"gnd[{i}][{kind!r}]: index {bad[0]} outside the "
                                           f"{len(imlist)} database images")
    return imlist, qimlist, gnd


def read(name: str, root: Path) -> Benchmark:
    """The cropped queries, the database and the ground truth of ``roxford5k`` / ``rparis6k``."""
    gnd_file = root / f"gnd_{name}.pkl"
    if not gnd_file.is_file():
        raise InputFileError(gnd_file, "no such file (revisitop's ground truth)")
    imlist, qimlist, gnd = read_gnd(gnd_file)
    jpg = root / "jpg"
    qfiles = [jpg / f"{n}.jpg" for n in qimlist]
    gfiles = [jpg / f"{n}.jpg" for n in imlist]
    for what, files in (("qimlist", qfiles), ("imlist", gfiles)):
        for i, f in enumerate(files):
            if not f.is_file():
                raise InputFileError(gnd_file, f"{what}[{i}]: image {f} does not exist")
    boxes = [tuple(float(v) for v in g["bbx"]) if g.get("bbx") is not None else None for g in gnd]
    query = ImageList(jpg, qfiles, [f"{n}.jpg" for n in qimlist], list(range(len(qfiles))),
                      boxes=boxes)  # type: ignore[arg-type]
    gallery = ImageList(jpg, gfiles, [f"{n}.jpg" for n in imlist], [-1] * len(gfiles))
    rows = ["query,gallery,kind"]
    counts = {"queries": len(qfiles), "database": len(gfiles)}
    for kind in _KINDS:
        n = 0
        for i, g in enumerate(gnd):
            for j in g.get(kind, []):
                rows.append(f"{i},{j},{kind}")
                n += 1
        counts[kind] = n
    counts["cropped"] = sum(b is not None for b in boxes)
    return Benchmark(name, {"query": query, "gallery": gallery}, counts,
                     {"ground_truth": "\n".join(rows) + "\n"}, {"benchmark": name}, indexed=True)
