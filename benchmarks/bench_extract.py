"""Extraction throughput (images/s): ``embeval`` extract beside a plain PyTorch loop.

The plain loop is what one writes by hand: Pillow decode, the same torch
preprocessing (bilinear antialiased resize, mean/std), batches of 64, the model's
forward under ``inference_mode``, all in one process. embeval runs
``extract_to_files`` end to end (DataLoader workers, chunk files, the final
atomic safetensors write) on the same images with the same model. Both produce
the same embeddings (the script checks). Run from the repository root:

    python benchmarks/bench_extract.py                      # sample_data/images, x4
    python benchmarks/bench_extract.py --images DIR --size 256 128 --repeat 1

Prints one line per run and the ratio embeval / plain (must be >= 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from embeval.data.store import load
from embeval.extract import ExtractOptions, extract_to_files
from embeval.extract.images import ImageList, Preprocessing, list_images
from embeval.extract.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(model: torch.nn.Module, files: list[Path], prep: Preprocessing,
               batch_size: int = 64) -> torch.Tensor:
    """The hand-written baseline: decode, preprocess, forward; one process."""
    mean = torch.tensor(prep.mean).view(3, 1, 1)
    std = torch.tensor(prep.std).view(3, 1, 1)
    out = []
    with torch.inference_mode():
        for a in range(0, len(files), batch_size):
            batch = []
            for f in files[a:a + batch_size]:
                with Image.open(f) as im:
                    x = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float()
                if tuple(x.shape[1:]) != prep.size:
                    x = F.interpolate(x[None], size=prep.size, mode="bilinear",
                                      align_corners=False, antialias=True)[0]
                batch.append((x / 255.0 - mean) / std)
            out.append(model(torch.stack(batch)))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=ROOT / "sample_data" / "images",
                    help="a folder of class folders, or of train/query/gallery splits")
    ap.add_argument("--model", default="embeval-small")
    ap.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    ap.add_argument("--repeat", type=int, default=4, help="list the images this many times")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="embeval's --workers")
    args = ap.parse_args()

    images = _collect(args.images, args.repeat)
    prep = Preprocessing(size=tuple(args.size))
    model = load_model(args.model).module.eval()
    opts = ExtractOptions(prep, device="cpu", batch_size=64, workers=args.workers)
    workers = opts.workers if opts.workers is not None else min(4, os.cpu_count() or 1)
    print(f"{len(images)} images from {args.images} -> {args.model} at {args.size[0]}x"
          f"{args.size[1]}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; embeval workers={workers}")
    plain_loop(model, images.files[:64], prep)  # warm-up (oneDNN primitive caches)
    plain_t, ours_t = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "e.safetensors"
        for run in range(args.runs):
            t = time.perf_counter()
            reference = plain_loop(model, images.files, prep)
            plain_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            extract_to_files(load_model(args.model), [(images, out)], opts)
            ours_t.append(time.perf_counter() - t)
            print(f"run {run + 1}: plain loop {len(images) / plain_t[-1]:8.1f} img/s   "
                  f"embeval extract {len(images) / ours_t[-1]:8.1f} img/s")
        diff = float((load(out).embeddings - reference).abs().max())
    plain, ours = len(images) / statistics.median(plain_t), len(images) / statistics.median(ours_t)
    print(f"median: plain loop {plain:.1f} img/s, embeval extract {ours:.1f} img/s, "
          f"ratio {ours / plain:.2f}x (max |diff| of the embeddings {diff:.1e})")


def _collect(root: Path, repeat: int) -> ImageList:
    splits = [root / s for s in ("train", "query", "gallery") if (root / s).is_dir()]
    lists = [list_images(s) for s in splits] if splits else [list_images(root)]
    files = [f for im in lists for f in im.files] * repeat
    return ImageList(root, files, [str(f) for f in files], [0] * len(files))


if __name__ == "__main__":
    main()
