"""Standard benchmarks read as they ship: one small module per family, one registry.

``embeval extract MODEL BENCH_ROOT --layout NAME -o OUT`` reads a benchmark's own files
(:data:`LAYOUTS` lists what each layout reads) and writes every file its protocol needs; the
layout's ``command`` is the metric command that reproduces the usual protocol on them.

Importing this package (and :mod:`.registry`) costs no torch: the command line lists and
recognises layouts from it; :func:`read_layout` imports the family's reader.
"""

from __future__ import annotations

from embeval.layouts.registry import (
    LAYOUTS,
    LayoutInfo,
    detect_layouts,
    layout_info,
    read_layout,
    resolve_layout,
)

__all__ = ["LAYOUTS", "LayoutInfo", "detect_layouts", "layout_info", "read_layout", "resolve_layout"]
