"""Several embedding files read as ONE set, lazily: a sharded extraction evaluates as one gallery.

>>> import embeval                                                              # doctest: +SKIP
>>> g = embeval.load_many(["g_000.safetensors", "shards/g_*.safetensors"])      # doctest: +SKIP
>>> g.n, g.rows(0, 10).shape                                                    # doctest: +SKIP

Item ``i`` of the concatenation is item ``i - offset[f]`` of file ``f`` (files in the order
given; a glob expands in natural order, so ``g_2`` comes before ``g_10``). Labels and cameras
are concatenated; embedding rows are sliced from the files on demand, so the whole gallery is
never in memory. Every file must have the same dimension D and the same stored dtype, and
either all or none of them a ``cameras`` tensor: otherwise :class:`InputFileError` names the
file that differs.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from embeval.data.store import EmbeddingSet, load
from embeval.errors import InputFileError

__all__ = ["ConcatSet", "load_many", "expand_paths", "source_files"]

_GLOB = re.compile(r"[*?\[]")


def _natural(path: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand glob patterns (``*``, ``?``, ``[...]``) in natural order; other paths stay as given.

    A pattern that matches nothing raises :class:`InputFileError` (a missing file is reported
    by :func:`embeval.load` later, with the usual message).
    """
    out: list[Path] = []
    for p in paths:
        text = str(p)
        if _GLOB.search(text) and not Path(text).exists():
            found = sorted(glob.glob(text), key=_natural)
            if not found:
                raise InputFileError(text, "no file matches this pattern")
            out.extend(Path(f) for f in found)
        else:
            out.append(Path(text))
    return out


class ConcatSet(EmbeddingSet):
    """Lazy concatenation of embedding sets (usually files) along the item axis."""

    def __init__(self, parts: Sequence[EmbeddingSet]) -> None:
        if not parts:
            raise InputFileError("<gallery>", "no embedding file given")
        first = parts[0]
        for p in parts[1:]:
            if p.dim != first.dim:
                raise InputFileError(p.name, f"has {p.dim}-dimensional embeddings but {first.name} "
                                             f"has {first.dim}: all gallery files need the same D")
            if p.dtype != first.dtype:
                raise InputFileError(p.name, f"embeddings are {p.dtype} but {first.name} has "
                                             f"{first.dtype}: all gallery files need the same dtype")
            if (p.cameras is None) != (first.cameras is None):
                has, lacks = (p, first) if p.cameras is not None else (first, p)
                raise InputFileError(lacks.name, f"has no 'cameras' tensor but {has.name} has one: "
                                                 "give cameras in every gallery file or in none")
        self.parts = list(parts)
        self.name = first.name if len(parts) == 1 else f"{first.name} (+{len(parts) - 1} files)"
        self.metadata = dict(first.metadata)
        self._file = None
        self._emb = None
        self._paths = None
        self.dtype = first.dtype
        self.labels = torch.cat([p.labels for p in parts])
        self.cameras = None if first.cameras is None else torch.cat([p.cameras for p in parts])  # type: ignore[misc]
        sizes = torch.tensor([0] + [p.n for p in parts])
        self.offsets = torch.cumsum(sizes, 0).tolist()
        self.n, self.dim = int(self.offsets[-1]), first.dim

    def __repr__(self) -> str:
        return f"ConcatSet({len(self.parts)} sets, n={self.n}, dim={self.dim})"

    @property
    def is_lazy(self) -> bool:
        return any(p.is_lazy for p in self.parts)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as float32 [n, D], read from the files they span."""
        start, stop = max(0, start), min(stop, self.n)
        blocks = []
        for part, lo in zip(self.parts, self.offsets[:-1]):
            a, b = max(start, lo), min(stop, lo + part.n)
            if a < b:
                blocks.append(part.rows(a - lo, b - lo))
        if len(blocks) == 1:
            return blocks[0]
        return torch.cat(blocks) if blocks else torch.empty(0, self.dim)

    @property
    def paths(self) -> list[str] | None:
        each = [p.paths for p in self.parts]
        return None if any(x is None for x in each) else [s for x in each for s in x]  # type: ignore[union-attr]

    @property
    def files(self) -> list[Path]:
        return [f for p in self.parts for f in source_files(p)]


def source_files(s: EmbeddingSet) -> list[Path]:
    """The files a set reads from (empty for an in-memory set)."""
    if isinstance(s, ConcatSet):
        return s.files
    return [s._file] if s._file is not None else []


def load_many(paths: Sequence[str | os.PathLike[str]]) -> EmbeddingSet:
    """Open one or several embedding files (globs allowed) as one lazy set.

    One file gives the plain :class:`EmbeddingSet` of :func:`embeval.load`.
    """
    files = expand_paths(paths)
    sets = [load(f) for f in files]
    _refuse_repeats(files)
    return sets[0] if len(sets) == 1 else ConcatSet(sets)


def _refuse_repeats(files: Sequence[Path]) -> None:
    """A file given twice (same path, a link, an overlapping glob) would double its items."""
    seen: dict[tuple[int, int], Path] = {}
    for f in files:
        st = f.stat()
        first = seen.setdefault((st.st_dev, st.st_ino), f)
        if first is not f:
            also = "" if str(first) == str(f) else f" (also given as {first})"
            raise InputFileError(f, f"given twice{also}: its items would count twice in the "
                                    "gallery; give each file once")
