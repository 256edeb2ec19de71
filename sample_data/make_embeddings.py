"""Build sample_data/digits/{query,gallery}.safetensors from scikit-learn's handwritten digits.

Deterministic: per class, the images in dataset order are split 60% train / 13% query /
27% gallery; a 32-dimensional PCA is fitted (float64 SVD) on the train images' pixels and
applied to query and gallery. Run from the repository root:

    python sample_data/make_embeddings.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

import embeval

DIM = 32


def split(labels: np.ndarray) -> dict[str, np.ndarray]:
    parts: dict[str, list[int]] = {"train": [], "query": [], "gallery": []}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_train = int(round(0.6 * len(idx)))
        n_query = (len(idx) - n_train) // 3
        parts["train"] += idx[:n_train].tolist()
        parts["query"] += idx[n_train:n_train + n_query].tolist()
        parts["gallery"] += idx[n_train + n_query:].tolist()
    return {k: np.array(sorted(v)) for k, v in parts.items()}


def main() -> None:
    digits = load_digits()
    x, y = digits.data.astype(np.float64) / 16.0, digits.target.astype(np.int64)
    parts = split(y)
    mean = x[parts["train"]].mean(0)
    _, _, vt = np.linalg.svd(x[parts["train"]] - mean, full_matrices=False)
    basis = vt[:DIM].T
    out = Path(__file__).parent / "digits"
    out.mkdir(exist_ok=True)
    for name in ("query", "gallery"):
        idx = parts[name]
        emb = torch.from_numpy(((x[idx] - mean) @ basis).astype(np.float32))
        embeval.save(out / f"{name}.safetensors", emb, torch.from_numpy(y[idx]),
                     metadata={"model": f"pca{DIM}-pixels", "normalized": "false",
                               "source": f"sklearn.datasets.load_digits ({name} split)",
                               "label_names": json.dumps([str(d) for d in range(10)])},
                     paths=[f"digits/{i}" for i in idx])
        print(f"{name}: {len(idx)} items -> {out / (name + '.safetensors')}")


if __name__ == "__main__":
    main()
