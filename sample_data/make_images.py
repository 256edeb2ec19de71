"""Write scikit-learn's handwritten digits as PNG image folders for ``embeval extract``.

``sklearn.datasets.load_digits`` ships 1797 grayscale 8x8 images of the digits 0-9
(BSD licence). Each is scaled from 0..16 to 0..255, upscaled to 32x32 (bilinear)
and saved as ``sample_data/images/{train,query,gallery}/<digit>/<index>.png``
(``<index>`` = the dataset index, 4 digits). The split is the one of
``make_embeddings.py``: per class, in dataset order, 60% train, then a third of the
rest query and the remaining two thirds gallery. Deterministic; run from anywhere:

    python sample_data/make_images.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SIZE = 32
OUT = Path(__file__).resolve().parent / "images"


def split(labels: np.ndarray) -> dict[str, list[int]]:
    """Dataset indices per split (per class: 60% train, rest 1/3 query, 2/3 gallery)."""
    parts: dict[str, list[int]] = {"train": [], "query": [], "gallery": []}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c).tolist()
        n_train = int(round(0.6 * len(idx)))
        n_query = (len(idx) - n_train) // 3
        parts["train"] += idx[:n_train]
        parts["query"] += idx[n_train:n_train + n_query]
        parts["gallery"] += idx[n_train + n_query:]
    return parts


def main() -> None:
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    if OUT.exists():
        shutil.rmtree(OUT)
    for name, indices in split(digits.target).items():
        for i in indices:
            folder = OUT / name / str(int(digits.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i]).resize((SIZE, SIZE), Image.BILINEAR)
            image.save(folder / f"{i:04d}.png", optimize=True)
        print(f"{name}: {len(indices)} images -> {OUT / name}")


if __name__ == "__main__":
    main()
