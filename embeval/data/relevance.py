"""Per-query relevance: which gallery items are each query's positives and its junk.

With a relevance list, labels no longer decide positives: query i's positives are the items
listed for it with relevance 1, its junk the items listed with -1 (invisible to that query:
neither positive nor negative, never in its top-k), and every unlisted item is a negative.

Two file formats, both read by :func:`read_relevance`:

* CSV (UTF-8), a header row naming the columns ``query,gallery,relevance`` (any order), then
  one pair per line: 0-based query and gallery row indices and ``1`` (positive) or ``-1``
  (junk). A pair listed twice with the same relevance counts once; with different
  relevance it is an error. Read in blocks with numpy (:mod:`embeval.data.int_csv`); every
  error names the file and the line.
* safetensors (``.safetensors``, read with ``safe_open`` only; nothing is unpickled), CSR:

  ========== ====== ======= ==================================================
  tensor     dtype  shape   meaning
  ========== ====== ======= ==================================================
  offsets    int64  [Q+1]   query i's entries are ``offsets[i]:offsets[i+1]``;
                            ``offsets[0] = 0``, non-decreasing, ``offsets[Q] = M``
  gallery    int64  [M]     gallery indices, strictly ascending within a query
  relevance  int8   [M]     1 (positive) or -1 (junk)
  ========== ====== ======= ==================================================

  :func:`save_relevance` writes it.

In memory (:class:`Relevance`) the lists are CSR tensors, O(listed pairs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embeval.data.int_csv import BLOCK, IntCsvReader, check_file
from embeval.data.safetensors_io import read_named
from embeval.errors import InputFileError, OptionError

__all__ = ["Relevance", "read_relevance", "save_relevance", "COLUMNS"]

COLUMNS = ("query", "gallery", "relevance")
_HINT = "'query,gallery,relevance' (any order)"
_TENSORS = {"offsets": torch.int64, "gallery": torch.int64, "relevance": torch.int8}


@dataclass(frozen=True)
class Relevance:
    """Each query's listed gallery items, CSR.

    ``offsets`` [Q+1] int64: query i's entries are ``offsets[i]:offsets[i+1]``; ``gallery``
    [M] int64: gallery indices, strictly ascending within a query; ``positive`` [M] bool:
    positive (True) or junk (False). ``n_gallery``: the gallery size the indices refer to;
    ``source``: where the lists come from (named in messages).
    """

    offsets: torch.Tensor
    gallery: torch.Tensor
    positive: torch.Tensor
    n_gallery: int
    source: str = "<relevance>"

    @property
    def n_query(self) -> int:
        return len(self.offsets) - 1

    def query_ids(self) -> torch.Tensor:
        """[M] int64: the query of each entry."""
        return torch.repeat_interleave(torch.arange(self.n_query), self.offsets.diff())

    def rows(self, a: int, b: int) -> Relevance:
        """The lists of queries ``[a, b)`` (a query shard), as a relevance of ``b - a`` queries."""
        lo, hi = int(self.offsets[a]), int(self.offsets[b])
        return Relevance(self.offsets[a:b + 1] - lo, self.gallery[lo:hi], self.positive[lo:hi],
                         self.n_gallery, self.source)

    def check_sizes(self, n_query: int, n_gallery: int) -> None:
        """Refuse lists made for other query / gallery sets (:class:`OptionError`)."""
        if (self.n_query, self.n_gallery) != (n_query, n_gallery):
            raise OptionError(f"relevance: {self.source} is for {self.n_query} queries × "
                              f"{self.n_gallery} gallery items, but the sets have {n_query} × "
                              f"{n_gallery}", param="relevance")

    @staticmethod
    def from_pairs(query: torch.Tensor, gallery: torch.Tensor, relevance: torch.Tensor, *,
                   n_query: int, n_gallery: int, source: str = "<relevance>") -> Relevance:
        """From listed pairs in any order: ``query``, ``gallery`` [M] int (indices),
        ``relevance`` [M] int (1 positive, -1 junk). An identical duplicate counts once; the
        same pair with both relevances, an index out of range or another relevance value
        raises :class:`OptionError`."""
        q, g, r = (torch.as_tensor(x).long().flatten() for x in (query, gallery, relevance))
        if not len(q) == len(g) == len(r):
            raise OptionError(f"relevance: {len(q)} queries, {len(g)} gallery items and {len(r)} "
                              "relevance values", param="relevance")
        for name, x, n in (("query", q, n_query), ("gallery", g, n_gallery)):
            bad = (x < 0) | (x >= n)
            if bad.any():
                raise OptionError(f"relevance: {name} index {int(x[bad][0])} is out of range "
                                  f"[0, {n})", param="relevance")
        bad = (r != 1) & (r != -1)
        if bad.any():
            raise OptionError(f"relevance: values must be 1 (positive) or -1 (junk), got "
                              f"{int(r[bad][0])}", param="relevance")
        order, first, conflict = _sorted_unique(q.numpy(), g.numpy(), r.numpy(), n_gallery)
        if conflict is not None:
            i, j = conflict
            raise OptionError(f"relevance: pair (query {int(q[i])}, gallery {int(g[i])}) is "
                              "listed as both positive and junk", param="relevance")
        keep = torch.from_numpy(order[first])
        return _csr(q[keep], g[keep], r[keep] > 0, n_query, n_gallery, source)


def _sorted_unique(q: np.ndarray, g: np.ndarray, r: np.ndarray, n_gallery: int
                   ) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """Order of the pairs by (query, gallery), the mask of the first of each run of equal
    pairs in that order, and a conflicting duplicate (two indices in the input) or None."""
    key = q * max(n_gallery, 1) + g
    order = np.argsort(key, kind="stable")
    ks = key[order]
    first = np.ones(len(ks), dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    rs = r[order]
    differs = ~first & np.r_[False, rs[1:] != rs[:-1]]
    if differs.any():
        # the conflict whose later line comes first in the file
        at = np.flatnonzero(differs)
        later = np.maximum(order[at], order[at - 1])
        t = int(np.argmin(later))
        return order, first, (int(min(order[at[t]], order[at[t] - 1])), int(later[t]))
    return order, first, None


def _csr(q: torch.Tensor, g: torch.Tensor, positive: torch.Tensor, n_query: int,
         n_gallery: int, source: str) -> Relevance:
    offsets = torch.zeros(n_query + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(q, minlength=n_query), 0, out=offsets[1:])
    return Relevance(offsets, g.contiguous(), positive.contiguous(), n_gallery, source)


def read_relevance(path: str | os.PathLike[str], n_query: int, n_gallery: int) -> Relevance:
    """Read and check a relevance file (CSV, or ``.safetensors``: see the module docstring)
    for ``n_query`` queries × ``n_gallery`` gallery items.

    Raises :class:`InputFileError` naming the file (and the line, for CSV).
    """
    p = Path(path)
    check_file(p, "a relevance file (CSV or .safetensors)")
    if p.suffix.lower() == ".safetensors":
        return _read_safetensors(p, n_query, n_gallery)
    reader = _CsvReader(p, n_query, n_gallery)
    reader.read(BLOCK)
    return reader.result()


class _CsvReader(IntCsvReader):
    """Checks each block of ``query,gallery,relevance`` rows and keeps them with their lines."""

    def __init__(self, path: Path, n_query: int, n_gallery: int) -> None:
        super().__init__(path, COLUMNS, COLUMNS, _HINT, "rows")
        self.sizes = (n_query, n_gallery)
        self.parts: list[np.ndarray] = []
        self.lines: list[np.ndarray] = []

    def out_of_int64(self, column: str, value: str, line: int) -> None:
        self._refuse(column, value, line)

    def _refuse(self, column: str, value: int | str, line: int) -> None:
        if column == "relevance":
            raise self.fail(line, f"relevance must be 1 (positive) or -1 (junk), got {value}")
        n = self.sizes[COLUMNS.index(column)]
        raise self.fail(line, f"{column} index {value} is out of range [0, {n}) (0-based row "
                              "of the embedding file)")

    def add(self, rows: np.ndarray, lines: np.ndarray) -> None:
        for j in range(2):
            col = rows[:, j]
            bad = (col < 0) | (col >= self.sizes[j])
            if bad.any():
                i = int(np.argmax(bad))
                self._refuse(COLUMNS[j], int(col[i]), int(lines[i]))
        bad = (rows[:, 2] != 1) & (rows[:, 2] != -1)
        if bad.any():
            i = int(np.argmax(bad))
            self._refuse("relevance", int(rows[i, 2]), int(lines[i]))
        self.parts.append(rows)
        self.lines.append(lines)
        super().add(rows, lines)

    def result(self) -> Relevance:
        rows = np.concatenate(self.parts)
        lines = np.concatenate(self.lines)
        q, g, r = rows[:, 0], rows[:, 1], rows[:, 2]
        order, first, conflict = _sorted_unique(q, g, r, self.sizes[1])
        if conflict is not None:
            i, j = conflict
            raise self.fail(int(lines[j]), f"pair (query {int(q[j])}, gallery {int(g[j])}) has "
                                           f"relevance {int(r[j])} here but {int(r[i])} on line "
                                           f"{int(lines[i])}")
        keep = order[first]
        t = torch.from_numpy
        return _csr(t(q[keep]), t(g[keep]), t(r[keep] > 0), *self.sizes, str(self.path))


def _read_safetensors(p: Path, n_query: int, n_gallery: int) -> Relevance:
    t = read_named(p, _TENSORS, "a relevance file holds 'offsets' int64 [Q+1], 'gallery' int64 "
                                "[M], 'relevance' int8 [M]")
    for k, dtype in _TENSORS.items():
        if t[k].dtype != dtype or t[k].dim() != 1:
            raise InputFileError(p, f"{k!r} must be a 1-D {str(dtype).removeprefix('torch.')} "
                                    f"tensor, got {str(t[k].dtype).removeprefix('torch.')} of "
                                    f"shape {list(t[k].shape)}")
    off, g, r = t["offsets"], t["gallery"], t["relevance"]
    m = len(g)
    if len(off) != n_query + 1:
        raise InputFileError(p, f"'offsets' has {len(off)} entries, expected {n_query + 1} "
                                f"(queries + 1)")
    if len(r) != m:
        raise InputFileError(p, f"'relevance' has {len(r)} entries but 'gallery' has {m}")
    if int(off[0]) != 0 or int(off[-1]) != m or bool((off.diff() < 0).any()):
        raise InputFileError(p, f"'offsets' must start at 0, never decrease and end at {m} "
                                "(the number of listed pairs)")
    bad = (g < 0) | (g >= n_gallery)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise InputFileError(p, f"'gallery' entry {i} is {int(g[i])}, out of range "
                                f"[0, {n_gallery})")
    bad = (r != 1) & (r != -1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise InputFileError(p, f"'relevance' entry {i} is {int(r[i])}: must be 1 (positive) "
                                "or -1 (junk)")
    starts = torch.zeros(m, dtype=torch.bool)
    starts[off[:-1][off[:-1] < m]] = True
    bad = ~starts[1:] & (g[1:] <= g[:-1])
    if bad.any():
        i = int(bad.nonzero()[0]) + 1
        raise InputFileError(p, f"'gallery' entry {i} ({int(g[i])}) does not follow the previous "
                                "entry of its query: indices must be strictly ascending within "
                                "each query (no pair twice)")
    return Relevance(off, g, r > 0, n_gallery, str(p))


def save_relevance(path: str | os.PathLike[str], relevance: Relevance) -> Path:
    """Write ``relevance`` as a safetensors relevance file (atomically)."""
    from embeval.data.safetensors_io import write_safetensors
    from embeval.outputs import atomic_path

    tensors = {"offsets": relevance.offsets.contiguous(),
               "gallery": relevance.gallery.contiguous(),
               "relevance": torch.where(relevance.positive, 1, -1).to(torch.int8)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, tensors, {"embeval.relevance": "1"})
    return Path(path)
