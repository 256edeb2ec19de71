"""``embeval extract``: image folders -> embedding files (options in, summary out).

Importing this module does not import torch; the command loads the core once its options
are checked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from embeval._vocab import BACKBONE_NAMES, LAYOUTS
from embeval.errors import OptionError
from embeval.outputs import check_outputs

from ._app import app, interactive, stderr, stdout
from ._extract_common import images_bar, make_dir, summary_table
from .evaluate_cmds import examples

H_W = "H W"


EXTRACT_EXAMPLES = examples(
    "embeval extract run/best.safetensors --query data/query --gallery data/gallery --out-dir emb",
    "embeval extract model.pt2 photos.csv -o photos.safetensors --size 256 128 --flip",
    "embeval extract arcface.pt2 lfw.bin -o lfw.safetensors --flip-sum --size 112 112")


@app.command("extract", no_args_is_help=True, epilog=EXTRACT_EXAMPLES)
def extract(
    model: Annotated[str, typer.Argument(
        metavar="MODEL",
        help="An embeval checkpoint (.safetensors), a TorchScript file, a torch.export .pt2, "
             f"package.module:callable, or a built-in backbone ({', '.join(BACKBONE_NAMES)}).",
        show_default=False)],
    images: Annotated[Path | None, typer.Argument(
        metavar="IMAGES",
        help="One image set to embed into -o FILE (a folder, or a CSV path,label[,camera]).",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="FILE", help="Output embedding file for IMAGES.")] = None,
    query: Annotated[Path | None, typer.Option(metavar="DIR", help="Query image set.")] = None,
    gallery: Annotated[Path | None, typer.Option(metavar="DIR", help="Gallery image set.")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        metavar="DIR",
        help="Folder for query.safetensors / gallery.safetensors (created if missing).")] = None,
    size: Annotated[tuple[int, int] | None, typer.Option(
        metavar=H_W, help="Resize to H W (default: the model's own, else 224 224).")] = None,
    crop: Annotated[tuple[int, int] | None, typer.Option(
        metavar=H_W, help="Center crop to H W after the resize.")] = None,
    mean: Annotated[tuple[float, float, float] | None, typer.Option(
        metavar="R G B", help="Normalisation mean for [0, 1] pixels (default ImageNet).")] = None,
    std: Annotated[tuple[float, float, float] | None, typer.Option(
        metavar="R G B", help="Normalisation std (default ImageNet).")] = None,
    flip: Annotated[bool, typer.Option(
        "--flip", help="Average the embeddings of each image and its mirror image.")] = False,
    flip_sum: Annotated[bool, typer.Option(
        "--flip-sum", help="insightface's test embedding: image + mirror image embeddings "
                           "summed, then L2-normalised (--flip --normalize).")] = False,
    normalize: Annotated[bool, typer.Option(
        "--normalize", help="L2-normalise the embeddings.")] = False,
    layout: Annotated[str, typer.Option(
        "--layout", metavar="LAYOUT",
        help=f"Image set layout: {', '.join(LAYOUTS)} (auto: a benchmark recognised under "
             "IMAGES, else a CSV file or a class-folder tree, or regex when --label-regex is "
             "given), or a benchmark layout read as it ships (embeval layouts lists "
             "them).")] = "auto",
    label_regex: Annotated[str | None, typer.Option(
        metavar="REGEX",
        help="Regex on flat file names with named groups 'label' and optional 'camera'.")] = None,
    weights: Annotated[Path | None, typer.Option(
        metavar="FILE", help="State dict for a module:callable or built-in MODEL (safetensors, or "
             "torch.save loaded with weights_only=True).")] = None,
    layer: Annotated[str | None, typer.Option(
        metavar="NAME", help="Take the (flattened) output of this submodule as the embedding.")] = None,
    head: Annotated[str | None, typer.Option(
        "--head", metavar="HEAD",
        help="'identity': replace the classifier (fc / classifier / head) by identity.")] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE",
                                        help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(
        "--precision", metavar="PRECISION",
        help="fp32, tf32, bf16 or fp16 (autocast; reduced precisions are for CUDA).")] = "fp32",
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images per forward pass.")] = 64,
    workers: Annotated[int | None, typer.Option(
        metavar="N",
        help="Decoding processes (default min(4, CPU count); 0 decodes in this process).")] = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip images that fail to decode (listed in the metadata).")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run, reusing its finished chunks.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Embed images with a model: [bold]extract MODEL --query DIR --gallery DIR --out-dir DIR[/],
    [bold]extract MODEL IMAGES -o FILE[/] or [bold]extract MODEL BENCH_ROOT --layout NAME -o OUT[/]."""
    bench = _benchmark_layout(layout, images, query, gallery, out_dir, label_regex)
    if bench is not None:
        from .bench_cmd import run_benchmark

        assert images is not None
        run_benchmark(bench, model, images, out,
                      model_options={"weights": weights, "layer": layer, "head": head},
                      prep_options={"size": size, "crop": crop, "mean": mean, "std": std},
                      run_options={"device": device, "batch_size": batch_size, "workers": workers,
                                   "precision": precision, "flip": flip or flip_sum,
                                   "normalize": normalize or flip_sum, "skip_bad": skip_bad,
                                   "flip_sum": flip_sum},
                      resume=resume, json_out=json_out)
        return
    if flip_sum:
        flip = normalize = True
    sets = _jobs(images, out, query, gallery, out_dir)
    check_outputs({"--out" if out_dir is None else f"--out-dir ({name})": path
                   for name, _, path in sets},
                  inputs=[src for _, src, _ in sets] + [p for p in (Path(model), weights) if p])
    if out_dir is not None:  # names chosen here: a regular file or nothing (no FIFO to block on)
        from embeval.outputs import check_members

        check_members(out_dir, [path.name for _, _, path in sets], option="--out-dir")
    from embeval.engine.similarity import resolve_device
    from embeval.extract import ExtractOptions, extract_to_files  # torch loads here
    from embeval.extract.images import Preprocessing, list_image_sets
    from embeval.extract.models import load_model

    dev = resolve_device(device)
    image_lists = list_image_sets([src for _, src, _ in sets], layout=layout,
                                  label_regex=label_regex)
    loaded = load_model(model, weights=None if weights is None else str(weights), layer=layer,
                        head=head)
    base = loaded.preprocessing or Preprocessing()
    prep = Preprocessing.from_dict(base.to_dict(), size=size, crop=crop, mean=mean, std=std)
    options = ExtractOptions(prep, device=dev, batch_size=batch_size, workers=workers,
                             precision=precision, flip=flip, normalize=normalize,
                             skip_bad=skip_bad)
    if out_dir is not None:
        make_dir(out_dir)
    if model in BACKBONE_NAMES and weights is None and interactive():
        stderr.print(f"note: {model} without --weights is an untrained network (fixed seed): "
                     "a baseline, not a trained model")
    start = time.perf_counter()
    with images_bar("extracting") as update:
        results = extract_to_files(loaded, [(im, p) for im, (_, _, p) in zip(image_lists, sets)],
                                   options, resume=resume, progress=update)
    wall = time.perf_counter() - start
    rows = [{"set": name, "path": str(path), "n": ext.embeddings.shape[0],
             "dim": ext.embeddings.shape[1], "skipped": [n for n, _ in ext.skipped],
             "resumed": len(ext.images) - ext.computed, "seconds": round(ext.seconds, 3),
             "images_per_second": round(ext.images_per_second, 1)}
            for (name, _, _), (path, ext) in zip(sets, results)]
    if json_out:
        print(json.dumps({"command": "extract", "model": loaded.name, "device": str(dev),
                          "preprocessing": prep.to_dict(), "flip": flip, "normalized": normalize,
                          "seconds": round(wall, 3), "files": rows}))
        return
    stdout.print(summary_table(rows, f"extract: {loaded.name} on {dev}"))
    for r in rows:  # whole paths, never cut to the terminal's width
        print(f"{r['set']}: {r['path']}", flush=True)


def _benchmark_layout(layout: str, images: Path | None, query: Path | None,
                      gallery: Path | None, out_dir: Path | None,
                      label_regex: str | None) -> Any:
    """The benchmark layout to read (a LayoutInfo), or None for an image-set layout."""
    from embeval.layouts.registry import detect_layouts, layout_info

    if layout == "market1501" and images is not None and images.is_dir() \
            and "market1501" in detect_layouts(images):  # the benchmark, not a flat folder
        return _check_benchmark_args(layout_info(layout), query, gallery, out_dir, label_regex)
    if layout in LAYOUTS:
        if layout != "auto" or images is None or label_regex is not None or not images.exists():
            return None
        found = detect_layouts(images)
        if not found:
            return None
        if len(found) > 1:
            raise OptionError(f"--layout auto: {images} matches the benchmark layouts "
                              f"{', '.join(found)}; give --layout NAME")
        info = layout_info(found[0])
    else:
        info = layout_info(layout)
    if images is None:
        raise OptionError(f"--layout {info.name}: give BENCH_ROOT (the benchmark's folder or file)")
    return _check_benchmark_args(info, query, gallery, out_dir, label_regex)


def _check_benchmark_args(info: Any, query: Path | None, gallery: Path | None,
                          out_dir: Path | None, label_regex: str | None) -> Any:
    if query is not None or gallery is not None or out_dir is not None or label_regex:
        raise OptionError(f"--layout {info.name}: give BENCH_ROOT -o OUT (not --query, "
                          "--gallery, --out-dir or --label-regex)")
    return info


def _jobs(images: Path | None, out: Path | None, query: Path | None, gallery: Path | None,
          out_dir: Path | None) -> list[tuple[str, Path, Path]]:
    """(set name, source, output file) for each set to embed."""
    if images is not None:
        if query is not None or gallery is not None or out_dir is not None:
            raise OptionError("give either IMAGES -o FILE or --query/--gallery with --out-dir, "
                              "not both")
        if out is None:
            raise OptionError("IMAGES needs -o/--out FILE")
        return [("images", images, out)]
    if out is not None:
        raise OptionError("-o/--out goes with IMAGES; with --query/--gallery use --out-dir")
    if query is None and gallery is None:
        raise OptionError("nothing to embed: give IMAGES -o FILE or --query/--gallery DIR")
    if out_dir is None:
        raise OptionError("--query/--gallery need --out-dir DIR")
    return [(name, src, out_dir / f"{name}.safetensors")
            for name, src in (("query", query), ("gallery", gallery)) if src is not None]
