"""Result files: per-query CSV, kNN predictions, PR curves, score matrices (plots:
:mod:`embeval.visual.figures`).

Every writer goes through :func:`embeval.outputs.atomic_path`: a file appears under its
final name complete, or not at all.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from embeval.data.safetensors_io import plan_layout, write_safetensors
from embeval.errors import OptionError
from embeval.evaluation import EvalResult
from embeval.outputs import atomic_path

__all__ = ["write_per_query", "write_predictions", "write_curves", "write_tensor_stream",
           "interpolated_precision"]


def _fmt(x: float) -> str:
    return "" if math.isnan(x) or math.isinf(x) else (str(int(x)) if float(x).is_integer()
                                                     else f"{x:.6g}")


def write_per_query(path: str | os.PathLike[str], result: EvalResult,
                    names: Sequence[str] | None = None,
                    paths: Sequence[str] | None = None,
                    hard_neg_items: Mapping[str, Sequence[object]] | None = None) -> None:
    """CSV, one row per query: index, label, n_pos, first_rank, last_rank, ap, hard_pos,
    hard_neg (+ max_f1, threshold@maxF1 with PR), rr, map_at_r, r_precision.

    Optional columns: ``label_name`` with ``names`` (label names), ``path`` with ``paths`` (the
    query items' paths), and the hardest negative item after ``hard_neg`` with
    ``hard_neg_items``: ``{"hard_neg_index": [Q], "hard_neg_label": [Q], "hard_neg_path": [Q]}``
    (any of them; ``None``, or index ``-1``: no negative). Empty cells where a value does not
    exist (no positive, no negative).
    """
    pq = result.per_query
    items = {k: [None if x == -1 and k == "hard_neg_index" else x for x in col]
             for k, col in (hard_neg_items or {}).items()}
    values = {c: [_fmt(x) for x in pq[c].tolist()] for c in _PER_QUERY if c in pq}
    values.update({c: ["" if x is None else str(x) for x in col] for c, col in items.items()})
    cols = [c for c in _PER_QUERY if c in values]
    with _csv(path, _header(["label", *(["label_name"] if names else []), *cols], paths)) as write:
        for i, lab in enumerate(result.stats.query_labels.tolist()):
            name = [names[lab] if 0 <= lab < len(names) else ""] if names else []
            write(i, paths, [lab, *name, *(values[c][i] for c in cols)])


_PER_QUERY = ("n_pos", "first_rank", "last_rank", "ap", "hard_pos", "hard_neg", "hard_neg_index",
              "hard_neg_label", "hard_neg_path", "max_f1", "threshold@maxF1", "rr", "map_at_r",
              "r_precision")


def write_predictions(path: str | os.PathLike[str], result: EvalResult,
                      paths: Sequence[str] | None = None) -> None:
    """CSV, one row per query: index, (path,) label, prediction, correct (0/1)."""
    if "knn_pred" not in result.per_query:
        raise OptionError("result: has no k-NN predictions (evaluate(..., knn_k=K))", param="result")
    pred = result.per_query["knn_pred"].tolist()
    with _csv(path, _header(["label", "prediction", "correct"], paths)) as write:
        for i, (lab, p) in enumerate(zip(result.stats.query_labels.tolist(), pred)):
            write(i, paths, [lab, p, int(lab >= 0 and lab == p)])


def _header(columns: list[str], paths: Sequence[str] | None) -> list[str]:
    return ["index", *(["path"] if paths is not None else []), *columns]


@contextmanager
def _csv(path: str | os.PathLike[str], header: list[str]) -> Iterator[Callable[..., None]]:
    """Yield ``write(index, paths, values)`` for the rows of a CSV with ``\\n`` line endings
    (so ``grep ',0$'`` works), written through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)

        def write(i: int, paths: Sequence[str] | None, values: list[object]) -> None:
            w.writerow([i, *([paths[i]] if paths is not None else []), *values])
        yield write


def write_curves(path: str | os.PathLike[str], result: EvalResult) -> None:
    """Safetensors: ``precision``, ``recall`` [M] float64, ``threshold`` [M] float32 and
    ``offsets`` [Q+1] int64 (query i's points are ``[offsets[i]:offsets[i+1]]``)."""
    if result.pr_curves is None:
        raise OptionError("result: PR curves were not computed (evaluate(..., pr=True))", param="result")
    precision, recall, threshold, offsets = result.pr_curves
    tensors = {"precision": precision.contiguous(), "recall": recall.contiguous(),
               "threshold": threshold.contiguous(), "offsets": offsets.contiguous(),
               "labels": result.stats.query_labels.contiguous()}
    meta = {"embeval.curves": "1", "metric": result.stats.metric}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, tensors, meta)


def write_tensor_stream(path: str | os.PathLike[str],
                        specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
                        blocks: Iterator[dict[str, torch.Tensor]],
                        metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file whose tensors arrive as row blocks (bounded memory).

    ``specs``: (name, dtype, shape) of each tensor; ``blocks`` yields ``{name: rows}`` with
    consecutive rows of every tensor, in order, until each is complete. The header is
    :func:`embeval.data.safetensors_io.plan_layout`'s, so the bytes equal ``write_safetensors``'s.
    """
    layout = plan_layout(specs, metadata)
    # tensors are laid out one after another: each block's rows go to their tensor's place
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(layout.header)
        data_start = f.tell()
        written = dict.fromkeys(layout.order, 0)
        for block in blocks:
            for name, rows in block.items():
                b = rows.contiguous().numpy().tobytes()
                f.seek(data_start + layout.offsets[name][0] + written[name])
                f.write(b)
                written[name] += len(b)
        f.truncate(data_start + layout.data_size)


def interpolated_precision(result: EvalResult, levels: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Mean over queries with positives of the interpolated precision (max precision at recall ≥ r)
    at ``levels`` recall values in [0, 1]: ``(recall [L], precision [L])``."""
    precision, recall, _, offsets = (t.numpy() for t in result.pr_curves)  # type: ignore[union-attr]
    grid = np.linspace(0, 1, levels)
    total = np.zeros(levels)
    n = 0
    for a, b in zip(offsets[:-1], offsets[1:]):
        if b == a:
            continue
        p = np.maximum.accumulate(precision[a:b][::-1])[::-1]  # recall ascending along a..b
        idx = np.searchsorted(recall[a:b], grid, side="left")
        total += np.where(idx < b - a, p[np.minimum(idx, b - a - 1)], 0.0)
        n += 1
    return grid, total / max(n, 1)
