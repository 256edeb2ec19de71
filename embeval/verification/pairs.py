"""Listed verification trials (LFW / CFP / IJB style): the pairs file, templates, scores, folds.

The pairs file is CSV, UTF-8, with a header row naming its columns, one trial per line::

    query,gallery,same
    0,17,1
    3,250,0

``query`` and ``gallery`` are 0-based item indices into the two embedding files (one file may
be both), or template ids when the items are pooled into templates (:func:`pool_templates`);
the optional ``same`` (1 / 0) says whether the trial is genuine, overriding label equality.
Columns may come in any order; other columns, a missing header, a cell that is not an integer
(``[ \\t]*-?[0-9]+[ \\t]*``), an index outside [0, n), an unknown template id or a ``same``
other than 0 / 1 raise :class:`InputFileError` naming the file and the line. Blank lines are
skipped.

Reading streams the file in blocks: a block of plain ``digits,digits\\n`` lines is parsed
with numpy (tens of millions of rows per second), any other block (quotes, spaces, minus
signs, an error) with the csv module, so every message still names its line. Memory:
O(pairs) int64.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from embeval.errors import InputFileError

__all__ = ["Pairs", "TemplateIds", "read_pairs", "COLUMNS"]

COLUMNS = ("query", "gallery", "same")
_HEADER_HINT = "'query,gallery' or 'query,gallery,same' (any order)"
_CELL = re.compile(r"[ \t]*(-?[0-9]+)[ \t]*")
_BLOCK = 1 << 22  # bytes parsed at once by the numpy path
_BATCH = 1 << 16  # rows collected by the csv path before they are checked together
_INT64 = 1 << 63


@dataclass(frozen=True)
class TemplateIds:
    """The id space of a pooled set: pairs name ``ids`` (any int64), not row indices.

    ``ids``: [T] int64 ascending and distinct; id ``ids[t]`` is row t of the pooled set.
    ``file``: the embedding file they come from (named in errors).
    """

    ids: torch.Tensor
    file: str


@dataclass(frozen=True)
class Pairs:
    """Listed trials. ``query`` / ``gallery``: [P] int64 row indices into the query and gallery
    sets (template rows when templates are pooled); ``same``: [P] bool or None (no column)."""

    query: torch.Tensor
    gallery: torch.Tensor
    same: torch.Tensor | None
    path: str

    def __len__(self) -> int:
        return len(self.query)


def read_pairs(path: str | Path, n_query: int | TemplateIds, n_gallery: int | TemplateIds) -> Pairs:
    """Read and check a pairs file (see the module docstring).

    ``n_query`` / ``n_gallery``: the number of items (cells are indices in [0, n)), or the
    :class:`TemplateIds` of a pooled set (cells are template ids, mapped to template rows).
    Raises :class:`InputFileError` naming ``path`` and the line.
    """
    p = Path(path)
    _check_file(p)
    reader = _Reader(p, (n_query, n_gallery))
    try:
        with open(p, "rb") as f:
            reader.run(f)
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    return reader.result()


def _check_file(p: Path) -> None:
    if not p.exists():
        raise InputFileError(p, "no such file")
    if p.is_dir():
        raise InputFileError(p, "is a folder, expected a CSV pairs file")
    if not p.is_file():  # opening a FIFO for reading would block
        raise InputFileError(p, "is not a regular file (a FIFO, device or socket?), expected a "
                                "CSV pairs file")


class _Reader:
    """Streams one pairs file: header, then blocks of rows checked and collected as numpy."""

    def __init__(self, path: Path, spaces: tuple[int | TemplateIds, int | TemplateIds]) -> None:
        self.path = path
        self.spaces = spaces
        self.order: list[int] = []  # order[j]: the header position of COLUMNS[j]
        self.parts: list[np.ndarray] = []  # [b, k] blocks, columns in COLUMNS order
        self.last_line = 1

    def fail(self, line: int, problem: str) -> InputFileError:
        return InputFileError(self.path, f"line {line}: {problem}")

    # ------------------------------------------------------------------ header and dispatch

    def run(self, f: BinaryIO) -> None:
        first = f.readline()
        if first.startswith(b"\xef\xbb\xbf"):
            first = first[3:]
        if not first.strip():
            what = "the line is blank" if first else "empty file"
            raise self.fail(1, f"{what}: expected the header row {_HEADER_HINT}, then one pair "
                               "per line")
        self._header(_decode(self, first, 1))
        line, offset = 2, f.tell()
        while True:
            block = f.read(_BLOCK)
            if not block:
                break
            cut = len(block)
            if len(block) == _BLOCK and not block.endswith(b"\n"):
                cut = block.rfind(b"\n") + 1  # the partial last line goes to the next block
                f.seek(offset + cut)
            if not cut or not self._fast(block[:cut], line):
                f.seek(offset)
                self._slow(f, line)
                break
            line += block.count(b"\n", 0, cut)
            offset = f.tell()
        if not self.parts:
            raise self.fail(self.last_line + 1, "no pairs after the header row")

    def _header(self, text: str) -> None:
        cells = [c.strip() for c in next(csv.reader([text]), [])]
        shown = ",".join(cells)
        for c in cells:
            if c not in COLUMNS:
                raise self.fail(1, f"unknown column {c!r}: expected the header row {_HEADER_HINT}"
                                   f", got {shown!r}")
            if cells.count(c) > 1:
                raise self.fail(1, f"column {c!r} is given twice in the header row {shown!r}")
        for c in COLUMNS[:2]:
            if c not in cells:
                raise self.fail(1, f"no {c!r} column: expected the header row {_HEADER_HINT}, "
                                   f"got {shown!r}")
        self.order = [cells.index(c) for c in COLUMNS if c in cells]

    # ------------------------------------------------------------------ the two parsers

    def _fast(self, block: bytes, line: int) -> bool:
        """Parse a block of plain ``digits,digits\\n`` lines with numpy; False: not that plain."""
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        if not block.endswith(b"\n"):
            block += b"\n"
        if block.translate(None, b"0123456789,\n") or b"\n\n" in block or block[:1] == b"\n":
            return False
        k = len(self.order)
        arr = np.frombuffer(block, dtype=np.uint8)
        seps = np.flatnonzero((arr == 44) | (arr == 10))
        is_nl = arr[seps] == 10
        if len(seps) % k or not is_nl[k - 1::k].all() or np.count_nonzero(is_nl) * k != len(seps):
            return False  # not k cells on every line
        lengths = np.diff(seps, prepend=-1) - 1
        if lengths.min() < 1 or lengths.max() > 18:  # an empty cell; or beyond int64
            return False
        # the block is plain digits and separators, checked above: numpy's C parser reads it
        values = np.fromstring(block.replace(b"\n", b","), dtype=np.int64, sep=",")
        if len(values) != len(seps):  # pragma: no cover - cannot happen after the checks
            return False
        rows = values.reshape(-1, k)[:, self.order]
        self._add(rows, np.arange(line, line + len(rows), dtype=np.int64))
        return True

    def _slow(self, f: BinaryIO, line: int) -> None:
        """The csv module from ``line`` to the end (quotes, spaces, signs; precise errors)."""
        k = len(self.order)
        lines: list[int] = []
        rows: list[list[int]] = []
        reader = csv.reader(_text_lines(self, f, line))
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise self.fail(line - 1 + reader.line_num, f"not CSV ({e})") from None
            at = line - 1 + reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if len(cells) != k:
                raise self.fail(at, f"expected {k} cells ({self._names()}), got {len(cells)}")
            rows.append([self._cell(cells[h], COLUMNS[j], at) for j, h in enumerate(self.order)])
            lines.append(at)
            if len(rows) == _BATCH:
                self._add(np.array(rows, dtype=np.int64), np.array(lines, dtype=np.int64))
                rows, lines = [], []
        if rows:
            self._add(np.array(rows, dtype=np.int64), np.array(lines, dtype=np.int64))

    def _names(self) -> str:
        return ",".join(COLUMNS[j] for j in np.argsort(self.order))

    def _cell(self, cell: str, column: str, line: int) -> int:
        m = _CELL.fullmatch(cell)
        if m is None:
            shown = cell if len(cell) <= 40 else cell[:37] + "..."
            raise self.fail(line, f"{column} cell {shown!r} is not an integer")
        value = int(m.group(1))
        if not -_INT64 <= value < _INT64:  # beyond int64: out of every range, in no id list
            self._refuse(column, value, line)
        return value

    # ------------------------------------------------------------------ checks of a block

    def _add(self, rows: np.ndarray, lines: np.ndarray) -> None:
        """Check ``rows`` [b, k] (columns in COLUMNS order; row i from line ``lines[i]``), map
        template ids to rows, and keep them."""
        for j in range(2):
            space = self.spaces[j]
            col = rows[:, j]
            if isinstance(space, TemplateIds):
                ids = space.ids.numpy()
                pos = np.searchsorted(ids, col)
                found = pos < len(ids)
                found[found] = ids[pos[found]] == col[found]
                if not found.all():
                    i = int(np.argmin(found))
                    self._refuse(COLUMNS[j], int(col[i]), int(lines[i]))
                rows[:, j] = pos
            else:
                bad = (col < 0) | (col >= space)
                if bad.any():
                    i = int(np.argmax(bad))
                    self._refuse(COLUMNS[j], int(col[i]), int(lines[i]))
        if rows.shape[1] == 3:
            bad = (rows[:, 2] != 0) & (rows[:, 2] != 1)
            if bad.any():
                i = int(np.argmax(bad))
                raise self.fail(int(lines[i]), f"same must be 1 or 0, got {int(rows[i, 2])}")
        self.parts.append(rows)
        self.last_line = int(lines[-1])

    def _refuse(self, column: str, value: int, line: int) -> None:
        space = self.spaces[COLUMNS.index(column)]
        if isinstance(space, TemplateIds):
            raise self.fail(line, f"template id {value} ({column} column) is not in {space.file}")
        raise self.fail(line, f"{column} index {value} is out of range [0, {space}) (0-based "
                              "row of the embedding file)")

    def result(self) -> Pairs:
        rows = torch.from_numpy(np.concatenate(self.parts))
        same = rows[:, 2].bool() if rows.shape[1] == 3 else None
        return Pairs(rows[:, 0].contiguous(), rows[:, 1].contiguous(), same, str(self.path))


def _decode(reader: _Reader, raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise reader.fail(line, "not UTF-8 text") from None


def _text_lines(reader: _Reader, f: BinaryIO, line: int) -> Iterator[str]:
    """The file's remaining lines, decoded one by one (a bad byte names its line)."""
    for i, raw in enumerate(f):
        yield _decode(reader, raw, line + i)
