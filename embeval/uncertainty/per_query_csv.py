"""A ``--per-query`` CSV (``cmc``, ``pr``) read back as a :class:`SavedResult` for ``compare``.

The CSV has no options and no input fingerprints: queries without positives (empty ``ap``)
are skipped, as ``--no-positive skip``; ``compare`` can check only the count and the labels.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from embeval.data.int_csv import check_file
from embeval.errors import InputFileError, OptionError
from embeval.metrics import exact_mean
from embeval.options import short_repr

from .saved import SavedResult
from .terms import Terms

__all__ = ["read_per_query_csv"]

_REQUIRED = ("label", "n_pos", "first_rank", "last_rank", "ap")
#: metric → the column of its per-query value, where present
_COLUMNS = {"mAP": "ap", "MRR": "rr", "MAP@R": "map_at_r", "R-precision": "r_precision",
            "maxF1": "max_f1"}


_INT = re.compile(r"-?[0-9]{1,18}")
_FRACTIONS = ("ap", "rr", "map_at_r", "r_precision", "max_f1")  # values in [0, 1]
_RANKS = ("first_rank", "last_rank")  # positive integers (empty: no positive)
_SCORES = ("hard_pos", "hard_neg")  # finite float32 scores
_FLOAT32_MAX = 3.4028234663852886e38
_MAX_RANK = 1 << 53  # exact in float64
_MAX_K = 1 << 53


def _number(path: Path, line: int, column: str, text: str) -> float:
    """One cell of ``column``, checked against its column's type and range (empty: nan)."""
    def bad(why: str) -> InputFileError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        return InputFileError(path, f"line {line}: column {column!r}: {shown!r} {why}")

    if text == "":
        if column in ("label", "n_pos"):
            raise bad("is empty, expected an integer")
        return math.nan
    if column in ("label", "n_pos") or column in _RANKS:
        if not _INT.fullmatch(text):
            raise bad("is not an integer" if column in ("label", "n_pos") else
                      "is not a rank (a positive integer)")
        whole = int(text)
        if column == "n_pos" and whole < 0:
            raise bad("is negative, expected a count")
        if column in _RANKS and not 1 <= whole <= _MAX_RANK:
            raise bad("is not a rank (a positive integer)")
        return float(whole)
    try:
        value = float(text) if len(text) <= 64 else math.nan
    except ValueError:
        raise bad("is not a number") from None
    if not math.isfinite(value):
        raise bad("is not a finite number")
    if column in _FRACTIONS and not 0.0 <= value <= 1.0:
        raise bad("is not in [0, 1]")
    if column in _SCORES and abs(value) > _FLOAT32_MAX:
        raise bad("is not a score (beyond the float32 range)")
    return value


def _lines(path: Path, f: Any) -> Iterator[str]:
    """The file's lines, refusing a NUL byte and lines that end in a lone CR (naming the line)."""
    for n, line in enumerate(f, start=1):
        if "\0" in line:
            raise InputFileError(path, f"line {n}: holds a NUL byte: not a per-query CSV")
        if "\r" in line.rstrip("\r\n") or line.endswith("\r") and not line.endswith("\r\n"):
            raise InputFileError(path, f"line {n}: a carriage return without a line feed (lines "
                                       "end in \\n or \\r\\n): not a per-query CSV")
        yield line


def read_per_query_csv(path: str | os.PathLike[str], ks: list[int]) -> SavedResult:
    """Read a ``--per-query`` CSV: rank-k for ``ks``, mAP, mINP and the other columns' means.

    Every cell is checked (``label``, ``n_pos`` integers; ranks positive integers; ``ap`` and
    the other per-query fractions in [0, 1]; scores finite float32), naming file, line and
    column; a FIFO or device is refused before it is opened.
    """
    p = Path(path)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= _MAX_K:
            raise OptionError(f"ks {short_repr(k)}: ranks must be integers from 1 to 2^53",
                              param="ks")
    check_file(p, "a per-query CSV")
    line = 1
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.reader(_lines(p, f))
            header = next(reader, None)
            if header is None:
                raise InputFileError(p, "empty file (expected a per-query CSV, as cmc and pr write)")
            missing = [c for c in _REQUIRED if c not in header]
            if missing:
                raise InputFileError(p, f"line 1: not a per-query CSV (no column {missing[0]!r}; "
                                        f"header: {','.join(header)[:80]!r})")
            where = {c: header.index(c) for c in header}
            wanted = [c for c in ("label", "n_pos", "first_rank", "last_rank", "ap", "hard_pos",
                                  "hard_neg", "rr", "map_at_r", "r_precision", "max_f1")
                      if c in where]
            cols: dict[str, list[float]] = {c: [] for c in wanted}
            for row in reader:
                line = reader.line_num
                if len(row) != len(header):
                    raise InputFileError(p, f"line {line}: {len(row)} cells, the header has "
                                            f"{len(header)}")
                got: dict[str, float] = {c: _number(p, line, c, row[where[c]]) for c in wanted}
                _consistent(p, line, got)
                for c in wanted:
                    cols[c].append(got[c])
    except csv.Error as e:
        raise InputFileError(p, f"line {line + 1}: not a CSV row ({e})") from None
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


def _consistent(p: Path, line: int, got: dict[str, float]) -> None:
    """A query with positives has its ranks (first <= last, last >= n_pos) and its AP."""
    n_pos, first, last, ap = got["n_pos"], got["first_rank"], got["last_rank"], got["ap"]
    if n_pos > 0 and (math.isnan(first) or math.isnan(last) or math.isnan(ap)):
        raise InputFileError(p, f"line {line}: n_pos {n_pos:g} but no first_rank, last_rank or ap")
    if n_pos > 0 and not (first <= last and last >= n_pos):
        raise InputFileError(p, f"line {line}: first_rank {first:g}, last_rank {last:g} and n_pos "
                                f"{n_pos:g} do not fit (first <= last, last >= n_pos)")
