"""Image folders -> embedding files: the extraction loop (:mod:`.loop`), image sets and
preprocessing (:mod:`.images`), architectures (:mod:`.architectures`), checkpoints
(:mod:`.checkpoint`) and model loading (:mod:`.models`).

Names load on first use (the command line's argument parsing imports no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embeval.extract.loop import (
        Extraction,
        ExtractOptions,
        embed_images,
        extract_to_files,
        partial_dir,
    )

__all__ = ["ExtractOptions", "Extraction", "embed_images", "extract_to_files", "partial_dir"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.loop"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
