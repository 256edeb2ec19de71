"""Ranked-result images: a query's image, then its first results framed by ground truth, and a
contact sheet of several such rows. Pure functions returning Pillow images (nothing written).

Frames: green = positive, red = negative, grey = excluded by the protocol (or junk), blue = the
query. Under each tile: the rank (``#3``, ``excl.`` for an excluded item) and score, then the
label. An image that is missing, not a regular file (a FIFO is never opened), unusable as a
path (longer than the system allows), larger than :data:`MAX_PIXELS` or does not decode becomes
a labelled placeholder tile, never an error or a wait. JPEGs are decoded reduced (``draft``).
Text uses Pillow's built-in font (no font files).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from embeval.data.store import EmbeddingSet
from embeval.visual.rankings import QueryRanking

__all__ = ["COLORS", "QUERY_COLOR", "Geometry", "item_image_paths", "resolve_image",
           "load_tile", "ranked_image", "contact_sheet"]

RGB = tuple[int, int, int]
COLORS: dict[str, RGB] = {"positive": (0, 170, 0), "negative": (220, 0, 0),
                          "excluded": (150, 150, 150), "junk": (150, 150, 150)}
QUERY_COLOR: RGB = (0, 90, 230)
BACKGROUND: RGB = (255, 255, 255)
PLACEHOLDER: RGB = (225, 225, 225)
TEXT: RGB = (0, 0, 0)
#: the most pixels an image may have (after JPEG's reduced decoding) to be drawn as a tile:
#: 40 megapixels, 120 MB as RGB; a larger one is a "too large" placeholder
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Geometry:
    """Layout of one ranked row (pixels): ``tile`` square images inside a ``frame``-wide
    border, ``caption`` pixels of text under each, ``gap`` between the query and the results,
    ``pad`` around tiles, ``header`` pixels of title above the row, text of ``font`` pixels."""

    tile: int = 96
    frame: int = 5
    caption: int = 28
    gap: int = 18
    pad: int = 6
    header: int = 18
    font: int = 11

    @property
    def cell(self) -> int:
        return self.tile + 2 * self.frame + self.pad

    def box(self, i: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile ``i``'s frame (0: the query, 1..: the results)."""
        left = self.pad + i * self.cell + (self.gap if i > 0 else 0)
        top = self.header + self.pad
        side = self.tile + 2 * self.frame
        return left, top, left + side, top + side

    def size(self, n_results: int) -> tuple[int, int]:
        """(width, height) of a row with ``n_results`` result tiles."""
        height = self.header + 2 * self.pad + self.tile + 2 * self.frame + self.caption
        return self.box(n_results)[2] + self.pad, height


def item_image_paths(s: EmbeddingSet, images_root: str | os.PathLike[str] | None = None
                     ) -> list[Path] | None:
    """Where each item's image should be: its recorded path joined to ``images_root`` when given,
    else to its file's ``source`` metadata (as ``extract`` wrote it); None without paths."""
    parts = getattr(s, "parts", [s])
    if any(p.paths is None for p in parts):
        return None
    out = []
    for p in parts:
        base = Path(images_root) if images_root is not None else Path(p.metadata.get("source", ""))
        out += [resolve_image(x, base) for x in p.paths or []]
    return out


def resolve_image(path: str, base: Path) -> Path:
    """``base / path`` when that exists, else ``path`` itself when it exists, else ``base / path``."""
    joined = base / path
    if not _exists(joined) and _exists(Path(path)):
        return Path(path)
    return joined


def _exists(path: Path) -> bool:
    """Whether anything is at ``path`` (False for a name too long or otherwise unusable)."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True


def is_regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file that a tile can be read from (False for a name too
    long, a NUL byte, a named pipe, a folder or nothing there): checked without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def load_tile(path: Path | None, side: int) -> tuple[Image.Image, str | None]:
    """The image at ``path`` fitted into a ``side`` × ``side`` RGB tile (aspect kept, centred),
    and None; or a placeholder tile and why (``"no path"``, ``"missing"``, ``"unreadable"``)."""
    problem = "no path" if path is None else None
    if path is not None:
        try:
            rgb = _decode(path, side)
        except FileNotFoundError:
            problem = "missing"
        except _TooLarge:
            problem = "too large"
        except Exception:  # noqa: BLE001 - any decoder failure (PIL raises many kinds) -> placeholder
            problem = "unreadable"
    if problem is not None:
        return _placeholder(side, problem, path), problem
    scale = side / max(rgb.size)
    shape = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    fitted = rgb.resize(shape, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BICUBIC)
    tile = Image.new("RGB", (side, side), BACKGROUND)
    tile.paste(fitted, ((side - shape[0]) // 2, (side - shape[1]) // 2))
    return tile, None


class _TooLarge(Exception):
    """An image with more than :data:`MAX_PIXELS` pixels even when decoded reduced."""


def _decode(path: Path, side: int) -> Image.Image:
    """The image at ``path`` as RGB, decoded reduced where the format allows (JPEG's ``draft``:
    1/2 to 1/8 scale, still at least ``2 * side`` pixels across).

    Only a regular file is opened (a FIFO would block, a device never end): anything else is
    ``OSError``. More than :data:`MAX_PIXELS` pixels (after reduction) is :class:`_TooLarge`,
    found from the header before any pixel is decoded; Pillow's decompression-bomb warning is
    not shown (the limit here is lower).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):  # checked before opening, as the loaders do
        raise OSError(f"{path}: not a regular file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (2 * side, 2 * side))
                if im.width * im.height > MAX_PIXELS:
                    raise _TooLarge
                im.load()
                return im.convert("RGB")
        except Image.DecompressionBombError:
            raise _TooLarge from None


def _placeholder(side: int, problem: str, path: Path | None) -> Image.Image:
    tile = Image.new("RGB", (side, side), PLACEHOLDER)
    draw = ImageDraw.Draw(tile)
    name = path.name if path is not None else ""
    name = name if len(name) <= 16 else name[:7] + "…" + name[-8:]
    draw.multiline_text((4, side // 2 - 12), f"{problem}\nimage\n{name}", fill=TEXT,
                        font=_font(10))
    return tile


def ranked_image(ranking: QueryRanking, image_of: Callable[[str, int], Path | None], *,
                 geometry: Geometry = Geometry(), label_names: Sequence[str] | None = None
                 ) -> Image.Image:
    """One row: the query's tile (blue frame), then each of ``ranking.items`` framed by its kind
    (:data:`COLORS`), captions under the tiles and a title line above.

    ``image_of(set, index)``: the image path of item ``index`` of ``"query"`` or ``"gallery"``
    (None: unknown). ``label_names``: shown instead of label numbers when given.
    """
    g = geometry
    im = Image.new("RGB", g.size(len(ranking.items)), BACKGROUND)
    draw = ImageDraw.Draw(im)
    font = _font(g.font)

    def name(label: int) -> str:
        return label_names[label] if label_names and 0 <= label < len(label_names) else str(label)

    ap = "n/a (no positive)" if ranking.ap != ranking.ap else f"{ranking.ap:.3f}"
    dot = "  ·  "  # the default font's spaces are narrow: two a side
    first = "" if ranking.first_rank == float("inf") else f"{dot}first hit at rank {int(ranking.first_rank)}"
    draw.text((g.pad, 3), f"query {ranking.index}{dot}label {name(ranking.label)}{dot}AP {ap}{first}",
              fill=TEXT, font=font)
    _tile(im, draw, g, 0, image_of("query", ranking.index), QUERY_COLOR,
          [f"query {ranking.index}", f"label {name(ranking.label)}"], font)
    for i, item in enumerate(ranking.items, start=1):
        rank = f"#{item.rank}" if item.rank is not None else "excl."
        _tile(im, draw, g, i, image_of("gallery", item.index), COLORS[item.kind],
              [f"{rank}  {item.score:.4f}", f"label {name(item.label)}"], font)
    return im


def _tile(im: Image.Image, draw: ImageDraw.ImageDraw, g: Geometry, i: int, path: Path | None,
          color: RGB, caption: list[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    left, top, right, bottom = g.box(i)
    draw.rectangle((left, top, right - 1, bottom - 1), fill=color)
    tile, _ = load_tile(path, g.tile)
    im.paste(tile, (left + g.frame, top + g.frame))
    for line, text in enumerate(caption):
        draw.text((left, bottom + 2 + (g.font + 1) * line), text, fill=TEXT, font=font)


def contact_sheet(rows: Sequence[Image.Image], *, title: str = "", pad: int = 4) -> Image.Image:
    """``rows`` (ranked images) stacked top to bottom, left-aligned, under an optional title."""
    head = 18 if title else 0
    width = max([r.width for r in rows] + [200]) + 2 * pad
    height = head + sum(r.height + pad for r in rows) + pad
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 3), title, fill=TEXT, font=_font(12))
    y = head + pad
    for r in rows:
        sheet.paste(r, (pad, y))
        y += r.height + pad
        draw.line((0, y - pad // 2, width, y - pad // 2), fill=(210, 210, 210))
    return sheet
