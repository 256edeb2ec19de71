"""Deep metric learning benchmarks: Stanford Online Products, In-shop Clothes, CUB-200-2011,
Cars196, as their papers' loaders (and pytorch-metric-learning's) split them.

- SOP (``Ebay_test.txt``): header ``image_id class_id super_class_id path``, then one image a
  line; every test image is a query against all the others (leave-one-out: ``--exclude-self``).
- In-shop (``list_eval_partition.txt``, under BENCH_ROOT or ``Eval/``): a count line, the
  header ``image_name item_id evaluation_status``, then rows whose status is ``train``,
  ``query`` or ``gallery``; queries against the gallery. Images under BENCH_ROOT or ``Img/``.
- CUB-200-2011 (``images.txt``: ``id path``; ``image_class_labels.txt``: ``id class``; images
  under ``images/``): the second 100 classes (101-200), leave-one-out.
- Cars196 (``cars_annos.mat``: ``annotations`` with ``relative_im_path`` and ``class``; images
  ``car_ims/``): the second 98 classes (99-196), leave-one-out; all images of those classes
  (the file's ``test`` flag is the classification split, not the retrieval one).

Labels are the benchmarks' class ids (In-shop: item ids, names kept). The metric command is
``cmc``, whose MAP@R and R-precision are Musgrave et al.'s (pytorch-metric-learning's
``AccuracyCalculator``, pessimistic ties) and rank-k the papers' Recall@K.
"""

from __future__ import annotations

from pathlib import Path

from embeval.errors import InputFileError
from embeval.extract.images import ImageList
from embeval.layouts.base import Benchmark, as_int, codes, fields, need_file, need_images, text_lines

__all__ = ["read", "read_cars_annos"]


def _sop(name: str, root: Path) -> Benchmark:
    listing = need_file(root / "Ebay_test.txt")
    rows = list(text_lines(listing))
    if not rows or rows[0][1].split()[:2] != ["image_id", "class_id"]:
        raise InputFileError(listing, "line 1: expected the header 'image_id class_id "
                                      "super_class_id path'")
    files, names, labels, lines = [], [], [], []
    for n, text in rows[1:]:
        _, cls, _, rel = fields(listing, n, text, (4,), "image_id class_id super_class_id path")
        labels.append(as_int(listing, n, cls, "class_id"))
        files.append(root / rel)
        names.append(rel)
        lines.append(n)
    if not files:
        raise InputFileError(listing, "lists no images")
    need_images(listing, files, lines)
    images = ImageList(root, files, names, labels)
    counts = {"images": len(files), "classes": len(set(labels))}
    return Benchmark(name, {"images": images}, counts, metadata={"benchmark": name})


def _inshop(name: str, root: Path) -> Benchmark:
    listing = next((p for p in (root / "list_eval_partition.txt",
                                root / "Eval" / "list_eval_partition.txt") if p.is_file()),
                   root / "list_eval_partition.txt")
    rows = list(text_lines(listing))
    if len(rows) < 2:
        raise InputFileError(listing, "expected a count line and the header "
                                      "'image_name item_id evaluation_status'")
    n0, first = rows[0]
    total = as_int(listing, n0, first, "count")
    if rows[1][1].split() != ["image_name", "item_id", "evaluation_status"]:
        raise InputFileError(listing, f"line {rows[1][0]}: expected the header "
                                      "'image_name item_id evaluation_status'")
    body = rows[2:]
    if len(body) != total:
        raise InputFileError(listing, f"line {rows[-1][0]}: {len(body)} rows, the count line "
                                      f"says {total} (truncated or extra lines)")
    base = root / "Img" if (root / "Img").is_dir() else root
    sets: dict[str, list[tuple[str, str, int]]] = {"query": [], "gallery": []}
    for n, text in body:
        rel, item, status = fields(listing, n, text, (3,), "image_name item_id evaluation_status")
        if status not in ("train", "query", "gallery"):
            raise InputFileError(listing, f"line {n}: evaluation_status {status!r} is not "
                                          "train, query or gallery")
        if status != "train":
            sets[status].append((rel, item, n))
    mapping, label_names = codes([item for s in sets.values() for _, item, _ in s])
    out = {}
    for key, items in sets.items():
        if not items:
            raise InputFileError(listing, f"has no {key} rows")
        files = [base / rel for rel, _, _ in items]
        need_images(listing, files, [n for _, _, n in items])
        out[key] = ImageList(base, files, [rel for rel, _, _ in items],
                             [mapping[item] for _, item, _ in items], label_names=label_names)
    counts = {"query": len(out["query"]), "gallery": len(out["gallery"]), "items": len(label_names)}
    return Benchmark(name, out, counts, metadata={"benchmark": name})


def _two_columns(path: Path, what: str) -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    for n, text in text_lines(path):
        key, value = fields(path, n, text, (2,), what)
        k = as_int(path, n, key, "image id")
        if k in out:
            raise InputFileError(path, f"line {n}: image id {k} listed twice")
        out[k] = (value, n)
    return out


def _cub200(name: str, root: Path) -> Benchmark:
    paths = _two_columns(root / "images.txt", "'image_id path'")
    labels_file = root / "image_class_labels.txt"
    classes = _two_columns(labels_file, "'image_id class_id'")
    for k, (_, n) in classes.items():
        if k not in paths:
            raise InputFileError(labels_file, f"line {n}: image id {k} is not in images.txt")
    files, names, labels, lines = [], [], [], []
    for k, (rel, n) in paths.items():
        if k not in classes:
            raise InputFileError(root / "images.txt", f"line {n}: image id {k} has no class in "
                                                      "image_class_labels.txt")
        label = as_int(labels_file, classes[k][1], classes[k][0], "class_id")
        if label > 100:
            files.append(root / "images" / rel)
            names.append(rel)
            labels.append(label)
            lines.append(n)
    if not files:
        raise InputFileError(labels_file, "no image of classes 101-200 (the test classes)")
    need_images(root / "images.txt", files, lines)
    images = ImageList(root / "images", files, names, labels)
    counts = {"images": len(files), "classes": len(set(labels)), "train_images_left": len(paths) - len(files)}
    return Benchmark(name, {"images": images}, counts, metadata={"benchmark": name})


def read_cars_annos(path: Path) -> list[tuple[str, int]]:
    """(relative_im_path, class) of every annotation of ``cars_annos.mat``: scipy's MAT reader
    when scipy is installed, else :func:`embeval.layouts.matfile.read_mat` (both pure parsing:
    no pickle, no code)."""
    need_file(path)
    try:
        from scipy.io import loadmat
    except ImportError:
        return _annos_builtin(path)
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except Exception as e:  # scipy raises many types for a corrupt file
        raise InputFileError(path, f"not a readable MAT file ({type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:120]})") from None
    try:
        ann = mat["annotations"]
        rels, cls = ann["relative_im_path"], ann["class"]
        return [(str(r), int(c)) for r, c in zip(rels.ravel(), cls.ravel())]
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise InputFileError(path, f"annotations lack relative_im_path / class as "
                                   f"cars_annos.mat has them ({type(e).__name__}: {e})") from None


def _annos_builtin(path: Path) -> list[tuple[str, int]]:
    from embeval.layouts.matfile import read_mat

    ann = read_mat(path).get("annotations")
    if not isinstance(ann, list) or not all(isinstance(a, dict) for a in ann):
        raise InputFileError(path, "no 'annotations' struct array (cars_annos.mat's)")
    out = []
    for i, a in enumerate(ann, 1):
        rel, cls = a.get("relative_im_path"), a.get("class")
        if not isinstance(rel, str) or not isinstance(cls, (int, float)) or cls != int(cls):
            raise InputFileError(path, f"annotation {i}: no relative_im_path / integer class")
        out.append((rel, int(cls)))
    return out


def _cars196(name: str, root: Path) -> Benchmark:
    mat = root / "cars_annos.mat"
    annos = read_cars_annos(mat)
    files, names, labels, where = [], [], [], []
    for i, (rel, c) in enumerate(annos):
        if not 1 <= c <= 196:
            raise InputFileError(mat, f"annotation {i + 1}: class {c} outside 1-196")
        if c >= 99:
            files.append(root / rel)
            names.append(rel)
            labels.append(c)
            where.append(i + 1)
    for f, i in zip(files, where):
        if not f.is_file():
            raise InputFileError(mat, f"annotation {i}: image {f} does not exist")
    if not files:
        raise InputFileError(mat, "no image of classes 99-196 (the test classes)")
    images = ImageList(root, files, names, labels)
    counts = {"images": len(files), "classes": len(set(labels)),
              "train_images_left": len(annos) - len(files)}
    return Benchmark(name, {"images": images}, counts, metadata={"benchmark": name})


def read(name: str, root: Path) -> Benchmark:
    """The evaluation sets of metric-learning benchmark ``name`` under ``root``."""
    if not root.is_dir():
        raise InputFileError(root, f"{name}: expected the dataset's folder")
    return {"sop": _sop, "inshop": _inshop, "cub200": _cub200, "cars196": _cars196}[name](name, root)


