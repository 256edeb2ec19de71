"""Fast, line-exact reading of CSV files of integer columns (pairs and relevance lists).

A file is UTF-8 CSV with a header row naming its columns (any order, each at most once),
then one row per line. Reading streams the file in blocks: a block of plain lines (cells of
``-?digits``, commas, newlines) is parsed with numpy (tens of millions of rows per second),
any other block (quotes, spaces, an error) with the csv module, so every message still names
its line. Blank lines are skipped. Subclasses check each block of rows (:meth:`add`) and
collect them; every error is an :class:`InputFileError` naming the file and the line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from embeval.errors import InputFileError

__all__ = ["IntCsvReader", "check_file", "parse_int", "shorten", "csv_problem", "BLOCK"]

BLOCK = 1 << 22  # bytes parsed at once by the numpy path
_CELL = re.compile(r"[ \t]*(-?[0-9]+)[ \t]*", re.ASCII)
_BATCH = 1 << 16  # rows collected by the csv path before they are checked together
_INT64 = 1 << 63


def check_file(p: Path, kind: str) -> None:
    """Refuse a missing path, a folder or a non-regular file (``kind``: "a CSV pairs file")."""
    if not p.exists():
        raise InputFileError(p, "no such file")
    if p.is_dir():
        raise InputFileError(p, f"is a folder, expected {kind}")
    if not p.is_file():  # opening a FIFO for reading would block
        raise InputFileError(p, f"is not a regular file (a FIFO, device or socket?), expected "
                                f"{kind}")


class IntCsvReader:
    """Streams one file: header, then blocks of int64 rows handed to :meth:`add`.

    ``columns``: the names a header may use, in the order rows are given to :meth:`add`
    (absent optional columns are left out); ``required``: those it must have; ``hint``: the
    expected header, for messages; ``what``: one row's name in messages ("pairs").
    """

    def __init__(self, path: Path, columns: tuple[str, ...], required: tuple[str, ...],
                 hint: str, what: str) -> None:
        self.path = path
        self.columns = columns
        self.required = required
        self.hint = hint
        self.what = what
        self.order: list[int] = []  # order[j]: the header position of the j-th present column
        self.present: list[str] = []  # the header's columns, in ``columns`` order
        self.last_line = 1
        self.n_rows = 0

    def fail(self, line: int, problem: str) -> InputFileError:
        return InputFileError(self.path, f"line {line}: {problem}")

    def add(self, rows: np.ndarray, lines: np.ndarray) -> None:
        """Check and keep ``rows`` [b, k] int64 (columns as :attr:`present`), row i read from
        line ``lines[i]``. Subclasses extend this (call it last: it counts the rows)."""
        self.n_rows += len(rows)
        if len(lines):
            self.last_line = int(lines[-1])

    def out_of_int64(self, column: str, value: str, line: int) -> None:
        """A cell beyond int64, ``value`` its digits (shortened; subclasses name the range the
        value should be in)."""
        raise self.fail(line, f"{column} cell {value} is out of range")

    # ------------------------------------------------------------------ header and dispatch

    def read(self, block_bytes: int = BLOCK) -> None:
        """:meth:`run` over the file at ``path`` (an unreadable file: :class:`InputFileError`)."""
        try:
            with open(self.path, "rb") as f:
                self.run(f, block_bytes)
        except OSError as e:
            raise InputFileError(self.path, f"cannot read ({e.strerror or e})") from None

    def run(self, f: BinaryIO, block_bytes: int = BLOCK) -> None:
        """Read the whole file ``f`` (binary), calling :meth:`add` per block of rows."""
        first = f.readline()
        if first.startswith(b"\xef\xbb\xbf"):
            first = first[3:]
        if not first.strip():
            what = "the line is blank" if first else "empty file"
            raise self.fail(1, f"{what}: expected the header row {self.hint}, then one "
                               f"{self.what[:-1]} per line")
        if b"\r" in first.rstrip(b"\r\n"):
            raise self.fail(1, csv_problem(csv.Error("new-line character")))
        self._header(decode(self, first, 1))
        line, offset = 2, f.tell()
        while True:
            block = f.read(block_bytes)
            if not block:
                break
            cut = len(block)
            if len(block) == block_bytes and not block.endswith(b"\n"):
                cut = block.rfind(b"\n") + 1  # the partial last line goes to the next block
                f.seek(offset + cut)
            if not cut or not self._fast(block[:cut], line):
                f.seek(offset)
                self._slow(f, line)
                break
            line += block.count(b"\n", 0, cut)
            offset = f.tell()
        if not self.n_rows:
            raise self.fail(self.last_line + 1, f"no {self.what} after the header row")

    def _header(self, text: str) -> None:
        cells = [c.strip() for c in next(csv.reader([text]), [])]
        shown = ",".join(cells)
        for c in cells:
            if c not in self.columns:
                raise self.fail(1, f"unknown column {c!r}: expected the header row {self.hint}"
                                   f", got {shown!r}")
            if cells.count(c) > 1:
                raise self.fail(1, f"column {c!r} is given twice in the header row {shown!r}")
        for c in self.required:
            if c not in cells:
                raise self.fail(1, f"no {c!r} column: expected the header row {self.hint}, "
                                   f"got {shown!r}")
        self.present = [c for c in self.columns if c in cells]
        self.order = [cells.index(c) for c in self.present]

    # ------------------------------------------------------------------ the two parsers

    def _fast(self, block: bytes, line: int) -> bool:
        """Parse a block of plain ``-?digits`` cells with numpy; False: not that plain."""
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        if not block.endswith(b"\n"):
            block += b"\n"
        if block.translate(None, b"0123456789,\n-") or b"\n\n" in block or block[:1] == b"\n":
            return False
        k = len(self.order)
        arr = np.frombuffer(block, dtype=np.uint8)
        minus = np.flatnonzero(arr == 45)
        if len(minus):  # a sign only opens a cell, and digits follow it
            before = arr[minus - 1] if minus[0] > 0 else np.r_[44, arr[minus[1:] - 1]]
            if not (((before == 44) | (before == 10)).all() and (arr[minus + 1] >= 48).all()):
                return False
        seps = np.flatnonzero((arr == 44) | (arr == 10))
        is_nl = arr[seps] == 10
        if len(seps) % k or not is_nl[k - 1::k].all() or np.count_nonzero(is_nl) * k != len(seps):
            return False  # not k cells on every line
        lengths = np.diff(seps, prepend=-1) - 1
        if lengths.min() < 1 or lengths.max() > 18:  # an empty cell; or beyond int64
            return False
        # plain signed digits and separators, checked above: numpy's C parser reads them
        values = np.fromstring(block.replace(b"\n", b","), dtype=np.int64, sep=",")
        if len(values) != len(seps):  # pragma: no cover - cannot happen after the checks
            return False
        rows = values.reshape(-1, k)[:, self.order]
        self.add(rows, np.arange(line, line + len(rows), dtype=np.int64))
        return True

    def _slow(self, f: BinaryIO, line: int) -> None:
        """The csv module from ``line`` to the end (quotes, spaces; precise errors). A record
        is named by the line it starts on (a quoted cell may span lines)."""
        k = len(self.order)
        lines: list[int] = []
        rows: list[list[int]] = []
        reader = csv.reader(text_lines(self, f, line), strict=True)
        while True:
            at = line + reader.line_num  # the line the next record starts on
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise self.fail(at, csv_problem(e)) from None
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if len(cells) != k:
                raise self.fail(at, f"expected {k} cells ({self._names()}), got {len(cells)}")
            rows.append([self._cell(cells[h], self.present[j], at)
                         for j, h in enumerate(self.order)])
            lines.append(at)
            if len(rows) == _BATCH:
                self.add(np.array(rows, dtype=np.int64), np.array(lines, dtype=np.int64))
                rows, lines = [], []
        if rows:
            self.add(np.array(rows, dtype=np.int64), np.array(lines, dtype=np.int64))

    def _names(self) -> str:
        return ",".join(self.present[j] for j in np.argsort(self.order))

    def _cell(self, cell: str, column: str, line: int) -> int:
        value = parse_int(cell)
        if value is None:
            raise self.fail(line, f"{column} cell {shorten(cell)!r} is not an integer (ASCII "
                                  "digits, optionally after a minus sign)")
        if isinstance(value, str) or not -_INT64 <= value < _INT64:  # beyond int64
            self.out_of_int64(column, value if isinstance(value, str) else str(value), line)
        assert isinstance(value, int)
        return value


def parse_int(cell: str) -> int | str | None:
    """The integer in ``cell`` (``[ \\t]*-?[0-9]+[ \\t]*``, ASCII digits only: not ``+1``,
    ``1_0`` nor full-width digits, which Python's ``int`` accepts); None: not an integer; a
    string: a number too long for int64, shortened for messages (never converted, so no
    digit-count limit applies)."""
    m = _CELL.fullmatch(cell)
    if m is None:
        return None
    digits = m.group(1)
    body = digits.lstrip("-").lstrip("0")
    if len(body) > 19:  # beyond int64 whatever the digits
        return shorten(digits)
    value = int(body or "0")
    return -value if digits.startswith("-") else value


def shorten(text: str, limit: int = 40) -> str:
    """``text`` for a message: at most about ``limit`` characters, its length said if cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 12]}... ({len(text)} characters)"


def csv_problem(e: csv.Error) -> str:
    """A csv module error in plain words (the record's first line is named by the caller)."""
    text = str(e)
    if "unexpected end of data" in text:
        return "a quote opened in this record is never closed"
    if "new-line character" in text:
        return ("a carriage return (CR) inside a line: lines end in LF or CR LF (CR-only line "
                "endings are not read)")
    return f"not CSV ({text})"


def decode(reader: IntCsvReader, raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise reader.fail(line, "not UTF-8 text") from None


def text_lines(reader: IntCsvReader, f: BinaryIO, line: int) -> Iterator[str]:
    """The file's remaining lines, decoded one by one (a bad byte names its line)."""
    for i, raw in enumerate(f):
        yield decode(reader, raw, line + i)
