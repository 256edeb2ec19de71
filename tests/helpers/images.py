"""Tiny real image files for the extract / images tests (written with Pillow)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, *, size: tuple[int, int] = (10, 12), mode: str = "RGB",
                seed: int = 0) -> Path:
    """A random image of ``size`` (H, W) in ``mode``, format from the suffix."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode if mode != "P" else "RGB"]
    pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    if mode == "P":
        image = image.convert("P")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_bad_image(path: Path) -> Path:
    """A file with an image suffix that does not decode (a truncated PNG header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return path


def image_folder(root: Path, classes: Mapping[str, int], *, suffix: str = ".png",
                 seed: int = 0, size: tuple[int, int] = (10, 12)) -> Path:
    """``root/<class>/<i>.<suffix>`` with ``classes[name]`` images per class."""
    k = seed
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_image(root / name / f"{i:03d}{suffix}", seed=k, size=size)
            k += 1
    return root
