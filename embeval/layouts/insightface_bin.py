"""insightface verification bins (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...).

As ``load_bin`` in insightface's ``recognition/arcface_torch/eval/verification.py`` reads
them: a pickle of ``(bins, issame_list)``; ``bins`` holds 2 x P encoded images (JPEG bytes,
Python 2 ``str`` in the distributed files, read as bytes), pair p is images ``2p`` and
``2p + 1``, ``issame_list[p]`` says whether they show one person. The pickle is read with
:func:`embeval.safe_load.load_plain_pickle` (no global is resolved: a payload never runs).

Output: one embedding file (item i = image i; labels: a pair's two images share a label
exactly when the pair is genuine) and the pairs sidecar ``query,gallery,same`` with rows
``2p, 2p + 1, issame[p]`` in file order, so ``verify --folds 10`` splits them as insightface's
``KFold(n_splits=10, shuffle=False)`` does.
"""

from __future__ import annotations

from pathlib import Path

from embeval.errors import InputFileError
from embeval.extract.images import ImageList
from embeval.layouts.base import Benchmark
from embeval.layouts.pairs_csv import pairs_csv
from embeval.safe_load import load_plain_pickle

__all__ = ["read", "read_bin"]


def read_bin(path: Path) -> tuple[list[bytes], list[bool]]:
    """(encoded images [2P], issame [P]) of a verification bin; raises InputFileError."""
    obj = load_plain_pickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise InputFileError(path, "not an insightface verification bin (expected a pickled "
                                   f"pair (images, issame), got {type(obj).__name__})")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise InputFileError(path, "not an insightface verification bin (images and issame "
                                   "must be lists)")
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray)):
            raise InputFileError(path, f"image {i} is a {type(b).__name__}, not encoded bytes")
    flags = []
    for p, s in enumerate(issame):
        if not isinstance(s, (bool, int)) or s not in (0, 1):
            raise InputFileError(path, f"issame[{p}] is {s!r}, not a boolean")
        flags.append(bool(s))
    if len(bins) != 2 * len(flags):
        raise InputFileError(path, f"holds {len(bins)} images for {len(flags)} pairs "
                                   f"(expected {2 * len(flags)}: truncated or not a pair list)")
    if not flags:
        raise InputFileError(path, "holds no pairs")
    return [bytes(b) for b in bins], flags


def read(name: str, root: Path) -> Benchmark:
    """The bin at ``root`` (a file) as one image set plus its pairs."""
    if not root.is_file():
        raise InputFileError(root, "insightface-bin: expected the .bin file itself")
    bins, issame = read_bin(root)
    labels: list[int] = []
    for p, same in enumerate(issame):
        labels += [2 * p, 2 * p if same else 2 * p + 1]
    names = [f"{root.name}#{i}" for i in range(len(bins))]
    images = ImageList(root, [root.parent / n for n in names], names, labels, blobs=bins)
    rows = [(2 * p, 2 * p + 1, s) for p, s in enumerate(issame)]
    counts = {"images": len(bins), "pairs": len(issame), "genuine": sum(issame),
              "impostor": len(issame) - sum(issame)}
    return Benchmark(name, {"images": images}, counts, {"pairs": pairs_csv(rows)},
                     {"benchmark": root.name}, indexed=True)
