"""The registry of benchmark layouts: name, files read, output files, protocol command.

No torch, numpy or PIL here: the command line renders ``embeval layouts`` and recognises a
layout (``--layout auto``) from this module alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embeval.errors import InputFileError, OptionError

if TYPE_CHECKING:
    from embeval.layouts.base import Benchmark

__all__ = ["LayoutInfo", "LAYOUTS", "layout_info", "detect_layouts", "resolve_layout", "read_layout"]


@dataclass(frozen=True)
class LayoutInfo:
    """One layout. ``reads``: the files it reads under BENCH_ROOT; ``sets``: the embedding
    files it writes (one set: ``-o FILE``; query and gallery: ``-o DIR``); ``sidecars``: the
    other files (pairs, ground truth); ``command``: the protocol's metric command, with
    ``{images}``, ``{query}``, ``{gallery}``, the sidecars' names and the counts read
    (``{folds}``) as placeholders;
    ``markers``: files whose presence under BENCH_ROOT recognises it (``auto``; ``a|b``: either)."""

    name: str
    family: str
    module: str
    reads: str
    sets: tuple[str, ...]
    command: str
    markers: tuple[str, ...]
    sidecars: tuple[str, ...] = ()
    note: str = ""


_FACE = "--size 112 112 --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5"

LAYOUTS: tuple[LayoutInfo, ...] = (
    LayoutInfo("insightface-bin", "faces", "insightface_bin",
               "BENCH_ROOT is the .bin file (lfw, cfp_fp, cfp_ff, agedb_30, calfw, cplfw): a "
               "pickle of (JPEG bytes list, issame list), pairs consecutive",
               ("images",), "embeval verify {images} --folds 10 --fold-thresholds grid",
               (), ("pairs",), f"extract with --flip-sum {_FACE}"),
    LayoutInfo("lfw-pairs", "faces", "lfw",
               "pairs.txt (a 'folds count' header, 'name n1 n2' same and 'name1 n1 name2 n2' "
               "different lines) and the images name/name_0001.jpg under lfw/ (or BENCH_ROOT)",
               ("images",), "embeval verify {images} --folds {folds}",
               ("pairs.txt",), ("pairs",)),
    LayoutInfo("market1501", "re-id", "reid",
               "bounding_box_test/ (gallery) and query/ (0002_c1s1_000451_03.jpg: label 2, "
               "camera 1; junk label -1 skipped, distractors 0000 kept as torchreid does)",
               ("query", "gallery"), "embeval cmc {query} {gallery} --exclude-same-camera",
               ("bounding_box_test|Market-1501-v15.09.15/bounding_box_test",)),
    LayoutInfo("dukemtmc-reid", "re-id", "reid",
               "bounding_box_test/ and query/ (0005_c2_f0046985.jpg: label 5, camera 2); "
               "recognised by DukeMTMC-reID in BENCH_ROOT's name, else give --layout",
               ("query", "gallery"), "embeval cmc {query} {gallery} --exclude-same-camera",
               ()),
    LayoutInfo("msmt17", "re-id", "reid",
               "list_query.txt and list_gallery.txt ('0000/0000_000_01_0303morning_0015_0.jpg "
               "0': path, label; camera = third '_' field) over test/ or mask_test_v2/",
               ("query", "gallery"), "embeval cmc {query} {gallery} --exclude-same-camera",
               ("list_query.txt|MSMT17_V1/list_query.txt|MSMT17_V2/list_query.txt",)),
    LayoutInfo("veri776", "re-id", "reid",
               "name_query.txt and name_test.txt over image_query/ and image_test/ "
               "(0002_c002_00030600_0.jpg: label 2, camera 2)",
               ("query", "gallery"), "embeval cmc {query} {gallery} --exclude-same-camera",
               ("name_query.txt", "name_test.txt")),
    LayoutInfo("sop", "metric learning", "metric_learning",
               "Ebay_test.txt ('image_id class_id super_class_id path' header) and the "
               "images it names", ("images",), "embeval cmc {images} {images} --exclude-self",
               ("Ebay_test.txt",)),
    LayoutInfo("inshop", "metric learning", "metric_learning",
               "list_eval_partition.txt (count line, 'image_name item_id evaluation_status' "
               "header; query and gallery rows) under BENCH_ROOT or Eval/, images under "
               "BENCH_ROOT or Img/", ("query", "gallery"), "embeval cmc {query} {gallery}",
               ("list_eval_partition.txt|Eval/list_eval_partition.txt",)),
    LayoutInfo("cub200", "metric learning", "metric_learning",
               "images.txt, image_class_labels.txt and images/: classes 101-200 (the second 100)",
               ("images",), "embeval cmc {images} {images} --exclude-self",
               ("images.txt", "image_class_labels.txt")),
    LayoutInfo("cars196", "metric learning", "metric_learning",
               "cars_annos.mat (annotations: relative_im_path, class) and car_ims/: classes "
               "99-196 (the second 98)", ("images",),
               "embeval cmc {images} {images} --exclude-self", ("cars_annos.mat",)),
    LayoutInfo("roxford5k", "landmarks", "revisited",
               "gnd_roxford5k.pkl (imlist, qimlist, gnd: bbx, easy, hard, junk) and jpg/; "
               "query images cropped to bbx", ("query", "gallery"),
               "embeval cmc {query} {gallery} --protocol roxford --relevance {ground_truth}",
               ("gnd_roxford5k.pkl",), ("ground_truth",)),
    LayoutInfo("rparis6k", "landmarks", "revisited",
               "gnd_rparis6k.pkl and jpg/, as roxford5k", ("query", "gallery"),
               "embeval cmc {query} {gallery} --protocol rparis --relevance {ground_truth}",
               ("gnd_rparis6k.pkl",), ("ground_truth",)),
    LayoutInfo("ijbc", "faces", "ijb",
               "meta/ijbc_face_tid_mid.txt, meta/ijbc_template_pair_label.txt, "
               "meta/ijbc_name_5pts_score.txt, loose_crop/ (aligned to the ArcFace 112x112 "
               "template; faceness-weighted when pooled); 1:N: meta/ijbc_1N_probe_mixed.csv, "
               "ijbc_1N_gallery_G1.csv, ijbc_1N_gallery_G2.csv (pooled templates, then "
               "embeval identify)", ("images",),
               "embeval verify {images} --templates --far-rule nearest",
               ("meta/ijbc_face_tid_mid.txt",), ("pairs",), f"extract with --flip {_FACE}"),
    LayoutInfo("ijbb", "faces", "ijb",
               "meta/ijbb_face_tid_mid.txt, meta/ijbb_template_pair_label.txt, "
               "meta/ijbb_name_5pts_score.txt, loose_crop/ and the 1:N lists "
               "ijbb_1N_probe_mixed.csv, ijbb_1N_gallery_S1.csv, ijbb_1N_gallery_S2.csv, as "
               "ijbc", ("images",),
               "embeval verify {images} --templates --far-rule nearest",
               ("meta/ijbb_face_tid_mid.txt",), ("pairs",), f"extract with --flip {_FACE}"),
)
_BY_NAME = {info.name: info for info in LAYOUTS}


def layout_info(name: str) -> LayoutInfo:
    """The registry entry of ``name`` (raises :class:`OptionError` naming the choices)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise OptionError(f"layout: unknown benchmark layout {name!r} (choose from auto, "
                          f"{', '.join(_BY_NAME)})", param="layout") from None


def detect_layouts(root: str | Path) -> list[str]:
    """The layouts whose marker files are all under ``root`` (a ``.bin`` file: insightface)."""
    p = Path(root)
    if p.is_file():
        return ["insightface-bin"] if p.suffix.lower() == ".bin" else []
    found = [i.name for i in LAYOUTS if i.markers and all(
        any((p / alt).exists() for alt in m.split("|")) for m in i.markers)]
    if found == ["market1501"] and "duke" in p.resolve().name.lower():
        found = ["dukemtmc-reid"]
    if "msmt17" in found or "veri776" in found:  # their own lists win over a folder match
        found = [f for f in found if f != "market1501"]
    return found


def resolve_layout(name: str, root: str | Path) -> LayoutInfo:
    """``name``'s entry, or for ``auto`` the one layout recognised under ``root``."""
    if name != "auto":
        return layout_info(name)
    if not Path(root).exists():
        raise InputFileError(root, "no such file or folder")
    found = detect_layouts(root)
    if len(found) != 1:
        what = f"matches {', '.join(found)}" if found else "matches no benchmark layout"
        raise OptionError(f"layout: auto: {root} {what}; name the layout (`embeval layouts` "
                          "lists them)", param="layout")
    return _BY_NAME[found[0]]


def read_layout(info: LayoutInfo, root: str | Path) -> Benchmark:
    """Read the benchmark under ``root`` with ``info``'s module (imports torch)."""
    module = importlib.import_module(f"embeval.layouts.{info.module}")
    p = Path(root)
    if not p.exists():
        raise InputFileError(p, "no such file or folder")
    bench: Benchmark = module.read(info.name, p)
    return bench
