"""IJB-B / IJB-C 1:1 verification from insightface's meta files (``ijbb``, ``ijbc``).

As ``recognition/arcface_torch/eval_ijbc.py`` reads them (BENCH_ROOT = its ``image_path``):

- ``meta/<t>_name_5pts_score.txt``: one image a line, ``name x1 y1 ... x5 y5 score``
  (space-separated: the image under ``loose_crop/``, five landmarks, the detector's faceness
  score);
- ``meta/<t>_face_tid_mid.txt``: ``name template_id media_id``, line i describing the same
  image as line i of the landmarks file;
- ``meta/<t>_template_pair_label.txt``: ``template1 template2 label`` (1 genuine, 0 impostor).

``extract`` aligns each image to the ArcFace 112 x 112 template with the five landmarks
(:mod:`embeval.extract.align`) and stores its raw embedding with its faceness score: the
file holds ``templates`` / ``media`` (int64) and ``faceness`` (float32), and
``verify --templates`` (and the 1:N template files) multiply each item by its faceness
before pooling, as the script's default test mode does (``use_detector_score``;
``use_norm_score``: no normalisation before; ``use_flip_test``: image + mirror summed, here
``--flip``, whose mean differs from the sum by a factor 1/2 common to all images); the media
means of each template are pooled as the script does (a sum over media there, a mean here:
the same direction after the final L2 normalisation). Labels are template ids; the pairs sidecar
names template ids with the ``same`` column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from embeval.errors import InputFileError
from embeval.extract.images import ImageList
from embeval.layouts.base import Benchmark, as_int, fields, need_images, text_lines
from embeval.layouts.pairs_csv import pairs_csv

__all__ = ["read", "read_landmarks"]


def _float(path: Path, n: int, value: str, what: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise InputFileError(path, f"line {n}: {what} {value!r} is not a number") from None
    if not np.isfinite(v):
        raise InputFileError(path, f"line {n}: {what} {value!r} is not finite")
    return v


def read_landmarks(path: Path) -> tuple[list[str], np.ndarray, list[float], list[int]]:
    """(names, landmarks [N, 5, 2] float64, faceness scores, line numbers)."""
    names, lmk, scores, lines = [], [], [], []
    for n, text in text_lines(path):
        f = fields(path, n, text, (12,), "name, 5 landmarks x y, faceness score", sep=" ")
        names.append(f[0])
        lmk.append([_float(path, n, v, "landmark") for v in f[1:11]])
        scores.append(_float(path, n, f[11], "faceness score"))
        lines.append(n)
    if not names:
        raise InputFileError(path, "lists no images")
    return names, np.asarray(lmk, dtype=np.float64).reshape(-1, 5, 2), scores, lines


def read(name: str, root: Path) -> Benchmark:
    """The aligned images of IJB-B / IJB-C with templates, media, faceness scores, pairs."""
    t = name  # "ijbb" / "ijbc": the meta files' prefix
    meta = root / "meta"
    lmk_file = meta / f"{t}_name_5pts_score.txt"
    tid_file = meta / f"{t}_face_tid_mid.txt"
    pair_file = meta / f"{t}_template_pair_label.txt"
    names, landmarks, faceness, lines = read_landmarks(lmk_file)
    tid_rows = list(text_lines(tid_file))
    if len(tid_rows) != len(names):
        last = tid_rows[-1][0] if tid_rows else 0
        raise InputFileError(tid_file, f"line {last}: {len(tid_rows)} images, but "
                                       f"{lmk_file.name} lists {len(names)} (truncated?)")
    templates, media = [], []
    for (n, text), img in zip(tid_rows, names):
        f = fields(tid_file, n, text, (3,), "name template_id media_id", sep=" ")
        if f[0] != img:
            raise InputFileError(tid_file, f"line {n}: image {f[0]!r}, but line {n} of "
                                           f"{lmk_file.name} is {img!r}")
        templates.append(as_int(tid_file, n, f[1], "template id"))
        media.append(as_int(tid_file, n, f[2], "media id"))
    known = set(templates)
    rows = []
    for n, text in text_lines(pair_file):
        f = fields(pair_file, n, text, (3,), "template1 template2 label", sep=" ")
        a, b = (as_int(pair_file, n, v, "template id") for v in f[:2])
        label = as_int(pair_file, n, f[2], "label")
        for tid in (a, b):
            if tid not in known:
                raise InputFileError(pair_file, f"line {n}: unknown template id {tid} (not in "
                                                f"{tid_file.name})")
        if label not in (0, 1):
            raise InputFileError(pair_file, f"line {n}: label {label} is not 0 or 1")
        rows.append((a, b, label == 1))
    if not rows:
        raise InputFileError(pair_file, "lists no template pairs")
    crops = root / "loose_crop"
    files = [crops / img for img in names]
    need_images(lmk_file, files, lines)
    images = ImageList(crops, files, names, templates, landmarks=landmarks,
                       tensors={"templates": torch.tensor(templates, dtype=torch.int64),
                                "media": torch.tensor(media, dtype=torch.int64),
                                "faceness": torch.tensor(faceness, dtype=torch.float32)})
    genuine = sum(s for _, _, s in rows)
    counts = {"images": len(files), "templates": len(known), "media": len(set(media)),
              "pairs": len(rows), "genuine": genuine, "impostor": len(rows) - genuine}
    bench = Benchmark(name, {"images": images}, counts, {"pairs": pairs_csv(rows)},
                      {"benchmark": name, "aligned": "arcface-112"},
                      indexed=True)
    _one_to_n(bench, meta, t, known, tid_file.name)
    return bench


#: the 1:N lists: probe, then the two galleries (IJB-C G1 / G2, IJB-B S1 / S2)
ONE_TO_N = {"ijbc": ("probe_mixed", "gallery_G1", "gallery_G2"),
            "ijbb": ("probe_mixed", "gallery_S1", "gallery_S2")}


def read_subject_list(path: Path, known: set[int], tid_name: str) -> dict[int, int]:
    """{template id: subject id} of a 1:N list (CSV, header ``TEMPLATE_ID,SUBJECT_ID,...``)."""
    rows = list(text_lines(path))
    if not rows or not rows[0][1].upper().startswith("TEMPLATE_ID,SUBJECT_ID"):
        raise InputFileError(path, "line 1: expected the header 'TEMPLATE_ID,SUBJECT_ID,...'")
    out: dict[int, int] = {}
    for n, text in rows[1:]:
        parts = text.split(",")
        if len(parts) < 2:
            raise InputFileError(path, f"line {n}: expected TEMPLATE_ID,SUBJECT_ID,..., got "
                                       f"{len(parts)} field(s)")
        tid = as_int(path, n, parts[0].strip(), "template id")
        sid = as_int(path, n, parts[1].strip(), "subject id")
        if tid not in known:
            raise InputFileError(path, f"line {n}: unknown template id {tid} (not in {tid_name})")
        if out.setdefault(tid, sid) != sid:
            raise InputFileError(path, f"line {n}: template {tid} has subjects {out[tid]} and {sid}")
    if not out:
        raise InputFileError(path, "lists no templates")
    return out


def _one_to_n(bench: Benchmark, meta: Path, t: str, known: set[int], tid_name: str) -> None:
    """Add the 1:N probe and gallery templates when the three lists are there."""
    names = ONE_TO_N[t]
    paths = [meta / f"{t}_1N_{n}.csv" for n in names]
    if not any(p.exists() for p in paths):
        return
    for n, p in zip(names, paths):
        bench.pooled[n] = read_subject_list(p, known, tid_name)
        bench.counts[f"1N_{n}"] = len(bench.pooled[n])
    probe, g1, g2 = names
    for g in (g1, g2):
        bench.commands.append(f"embeval identify {{{probe}}} {{{g}}}")
