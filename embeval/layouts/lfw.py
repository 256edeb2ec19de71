"""LFW ``pairs.txt`` (also ``pairsDevTrain.txt`` / ``pairsDevTest.txt``) over the LFW folder.

The file's first line is ``folds count`` (``10 300``: 10 folds, each ``count`` genuine then
``count`` impostor pairs) or one count (the dev files); then one pair per line, fields
separated by tabs or spaces: ``name n1 n2`` (genuine: images n1 and n2 of ``name``) or
``name1 n1 name2 n2`` (impostor). Image n of ``name`` is ``name/name_%04d.jpg`` under
``lfw/`` (or ``lfw_funneled/``, ``lfw-deepfunneled/``, or BENCH_ROOT itself).

Output: one embedding file of the distinct images in order of first mention (labels: the
identities, names kept in ``label_names``) and the pairs sidecar in the file's order, so the
10 folds are ``verify --folds 10``'s consecutive folds.
"""

from __future__ import annotations

from pathlib import Path

from embeval.errors import InputFileError
from embeval.extract.images import ImageList
from embeval.layouts.base import Benchmark, as_int, codes, fields, need_images, text_lines
from embeval.layouts.pairs_csv import pairs_csv

__all__ = ["read", "read_pairs_txt", "IMAGE_DIRS"]

IMAGE_DIRS = ("lfw", "lfw_funneled", "lfw-deepfunneled")


def read_pairs_txt(path: Path) -> tuple[list[tuple[str, int, str, int, int]], int]:
    """[(name1, n1, name2, n2, line)] and the number of folds (1 for a one-count header)."""
    lines = list(text_lines(path))
    if not lines:
        raise InputFileError(path, "is empty (expected a 'folds count' header line)")
    n0, head = lines[0]
    parts = fields(path, n0, head, (1, 2), "the header: 'folds count' or 'count'")
    folds, count = (1, as_int(path, n0, parts[0], "count")) if len(parts) == 1 else \
        (as_int(path, n0, parts[0], "folds"), as_int(path, n0, parts[1], "count"))
    if folds < 1 or count < 1:
        raise InputFileError(path, f"line {n0}: folds and count must be positive")
    out = []
    for n, text in lines[1:]:
        f = fields(path, n, text, (3, 4), "'name n1 n2' or 'name1 n1 name2 n2'")
        if len(f) == 3:
            out.append((f[0], as_int(path, n, f[1], "image number"), f[0],
                        as_int(path, n, f[2], "image number"), n))
        else:
            out.append((f[0], as_int(path, n, f[1], "image number"), f[2],
                        as_int(path, n, f[3], "image number"), n))
    want = 2 * folds * count
    if len(out) != want:
        last = lines[-1][0]
        raise InputFileError(path, f"line {last}: {len(out)} pairs after the header "
                                   f"'{head}', expected {want} (truncated or extra lines)")
    for k, (a, _, b, _, n) in enumerate(out):
        genuine = (k // count) % 2 == 0
        if genuine != (a == b):
            what = "genuine" if genuine else "impostor"
            raise InputFileError(path, f"line {n}: expected a {what} pair here (each fold is "
                                       f"{count} genuine then {count} impostor pairs)")
    return out, folds


def read(name: str, root: Path) -> Benchmark:
    """``root/pairs.txt`` (or ``root`` itself when it is the pairs file) over the images."""
    pairs_file = root if root.is_file() else root / "pairs.txt"
    base = pairs_file.parent
    images_dir = next((base / d for d in IMAGE_DIRS if (base / d).is_dir()), base)
    pairs, folds = read_pairs_txt(pairs_file)
    index: dict[tuple[str, int], int] = {}
    first_line: list[int] = []
    rows = []
    for a, na, b, nb, n in pairs:
        ids = []
        for key in ((a, na), (b, nb)):
            if key not in index:
                index[key] = len(index)
                first_line.append(n)
            ids.append(index[key])
        rows.append((ids[0], ids[1], a == b))
    keys = list(index)
    rel = [f"{p}/{p}_{k:04d}.jpg" for p, k in keys]
    files = [images_dir / r for r in rel]
    need_images(pairs_file, files, first_line)
    mapping, label_names = codes([p for p, _ in keys])
    images = ImageList(images_dir, files, rel, [mapping[p] for p, _ in keys],
                       label_names=label_names)
    genuine = sum(s for _, _, s in rows)
    counts = {"images": len(files), "identities": len(label_names), "pairs": len(rows),
              "genuine": genuine, "impostor": len(rows) - genuine, "folds": folds}
    return Benchmark(name, {"images": images}, counts, {"pairs": pairs_csv(rows)},
                     {"benchmark": pairs_file.name}, indexed=True)
