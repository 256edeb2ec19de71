"""What a layout reader returns (:class:`Benchmark`) and the helpers every reader shares:
text lists read line by line with errors naming the file and the line, image files checked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from embeval.errors import InputFileError
from embeval.extract.images import ImageList

__all__ = ["Benchmark", "text_lines", "fields", "need_file", "need_images", "as_int", "codes"]


@dataclass
class Benchmark:
    """A benchmark read from its files. ``sets``: name (``images``, ``query``, ``gallery``) ->
    the images to embed, in output order; ``sidecars``: name (``pairs``, ``ground_truth``) ->
    CSV text written beside the embeddings; ``counts``: what was read (printed);
    ``metadata``: written into every embedding file; ``indexed``: pairs or ground truth index
    the items, so none may be skipped (``--skip-bad`` is refused)."""

    layout: str
    sets: dict[str, ImageList]
    counts: dict[str, int]
    sidecars: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    indexed: bool = False
    #: template-level outputs (IJB 1:N): name -> {template id: subject id}; after extraction the
    #: items are pooled by their ``templates`` / ``media`` tensors and these templates written
    pooled: dict[str, dict[int, int]] = field(default_factory=dict)
    #: more protocol commands (IJB 1:N), with the same placeholders as the layout's command
    commands: list[str] = field(default_factory=list)


def need_file(path: Path, what: str = "") -> Path:
    """``path`` if it is a file, else :class:`InputFileError` (``what`` says why it is needed)."""
    if not path.is_file():
        raise InputFileError(path, f"no such file{f' ({what})' if what else ''}")
    return path


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of every non-blank line of a UTF-8 text file."""
    need_file(path)
    try:
        with open(path, encoding="utf-8", newline=None) as f:
            for n, line in enumerate(f, 1):
                text = line.strip()
                if text:
                    yield n, text
    except (OSError, UnicodeDecodeError) as e:
        raise InputFileError(path, f"cannot read text ({e})") from None


def fields(path: Path, n: int, text: str, widths: tuple[int, ...], what: str,
           sep: str | None = None) -> list[str]:
    """``text`` split on whitespace (or ``sep``); a count not in ``widths`` names the line."""
    parts = text.split(sep) if sep else text.split()
    if len(parts) not in widths:
        want = " or ".join(str(w) for w in widths)
        raise InputFileError(path, f"line {n}: expected {want} fields ({what}), got {len(parts)}")
    return [p.strip() for p in parts]


def as_int(path: Path, n: int, value: str, what: str) -> int:
    """``value`` as an integer, else an error naming the file, line and field."""
    if re.fullmatch(r"[+-]?\d+", value) is None:
        raise InputFileError(path, f"line {n}: {what} {value!r} is not an integer")
    return int(value)


def need_images(listing: Path, files: list[Path], lines: list[int]) -> None:
    """Every listed image exists, else one error naming the list, the line and the image."""
    for f, n in zip(files, lines):
        if not f.is_file():
            raise InputFileError(listing, f"line {n}: image {f} does not exist")


def codes(values: list[str]) -> tuple[dict[str, int], list[str]]:
    """Sorted distinct names -> 0..C-1 (the mapping and the names)."""
    names = sorted(set(values))
    return {v: i for i, v in enumerate(names)}, names
