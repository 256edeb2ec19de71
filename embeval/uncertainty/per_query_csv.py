"""A ``--per-query`` CSV (``cmc``, ``pr``) read back as a :class:`SavedResult` for ``compare``.

The CSV has no options and no input fingerprints: queries without positives (empty ``ap``)
are skipped, as ``--no-positive skip``; ``compare`` can check only the count and the labels.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch

from embeval.errors import InputFileError
from embeval.metrics import exact_mean

from .saved import SavedResult
from .terms import Terms

__all__ = ["read_per_query_csv"]

_REQUIRED = ("label", "n_pos", "first_rank", "last_rank", "ap")
#: metric → the column of its per-query value, where present
_COLUMNS = {"mAP": "ap", "MRR": "rr", "MAP@R": "map_at_r", "R-precision": "r_precision",
            "maxF1": "max_f1"}


def _number(path: Path, line: int, column: str, text: str) -> float:
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise InputFileError(path, f"line {line}: column {column!r}: {text[:40]!r} is not a "
                                   "number") from None
    if math.isnan(value) or (math.isinf(value) and column not in ("first_rank", "last_rank")):
        raise InputFileError(path, f"line {line}: column {column!r}: {text!r} is not a finite "
                                   "number")
    return value


def read_per_query_csv(path: str | os.PathLike[str], ks: list[int]) -> SavedResult:
    """Read a ``--per-query`` CSV: rank-k for ``ks``, mAP, mINP and the other columns' means."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputFileError(p, "empty file (expected a per-query CSV, as cmc and pr write)")
            missing = [c for c in _REQUIRED if c not in header]
            if missing:
                raise InputFileError(p, f"line 1: not a per-query CSV (no column {missing[0]!r}; "
                                        f"header: {','.join(header)[:80]})")
            where = {c: header.index(c) for c in header}
            wanted = [c for c in ("label", "n_pos", "first_rank", "last_rank", "ap", "hard_pos",
                                  "hard_neg", "rr", "map_at_r", "r_precision", "max_f1")
                      if c in where]
            cols: dict[str, list[float]] = {c: [] for c in wanted}
            for line, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise InputFileError(p, f"line {line}: {len(row)} cells, the header has "
                                            f"{len(header)}")
                for c in wanted:
                    cols[c].append(_number(p, line, c, row[where[c]]))
    except UnicodeDecodeError:
        raise InputFileError(p, "not a text (UTF-8) CSV file") from None
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    t = {c: torch.tensor(v, dtype=torch.float64) for c, v in cols.items()}
    if not len(t["label"]):
        raise InputFileError(p, "no query rows")
    labels = t["label"].to(torch.int64)
    valid = t["n_pos"] > 0
    first = t["first_rank"].nan_to_num(nan=math.inf)
    terms: dict[str, Terms] = {}

    def add(name: str, values: torch.Tensor, include: torch.Tensor) -> None:
        terms[name] = Terms(torch.where(include, values.nan_to_num(nan=0.0), 0.0), include)

    for k in ks:
        add(f"rank{k}", (first <= k).double(), valid)
    add("mAP", t["ap"], valid)
    add("mINP", t["n_pos"] / t["last_rank"].nan_to_num(nan=math.inf), valid)
    for name, column in _COLUMNS.items():
        if name != "mAP" and column in t:
            add(name, t[column], valid)
    for column in ("hard_pos", "hard_neg"):
        if column in t:
            add(column, t[column], ~torch.isnan(t[column]))
    metrics = {k: exact_mean(v[inc]) for k, (v, inc) in terms.items()}
    return SavedResult("per-query CSV", {k: None if math.isnan(v) else v for k, v in metrics.items()},
                       {"no_positive": "skip"}, {}, len(labels), -1, labels, terms, path=p)
