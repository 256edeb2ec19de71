"""Tiny benchmarks in their exact distributed formats, written at test time (Pillow images)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, size: tuple[int, int] = (12, 12)) -> bytes:
    """A random RGB image of ``size`` (H, W) encoded as JPEG."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def py2_bin_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """``(bins, issame_list)`` as Python 2's cPickle protocol 2 writes it: images as
    ``str`` (SHORT_BINSTRING / BINSTRING), flags as NEWTRUE / NEWFALSE (what the
    distributed insightface bins hold)."""
    out = [b"\x80\x02", b"]", b"("]
    for b in bins:
        out.append(b"U" + bytes([len(b)]) + b if len(b) < 256 else
                   b"T" + struct.pack("<i", len(b)) + b)
    out += [b"e", b"]", b"("]
    out += [b"\x88" if s else b"\x89" for s in issame]
    out += [b"e", b"\x86", b"."]
    return b"".join(out)


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (12, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed, size))
    return path
