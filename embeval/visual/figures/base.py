"""The one place that loads matplotlib: its file-only backend, blank figures, saving.

Without matplotlib every figure raises :class:`~embeval.errors.OptionError` with the one line
that names the extra to install (``pip install 'embeval[plot]'``); the CLI turns it into exit 2.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

from embeval.errors import OptionError
from embeval.outputs import atomic_path

__all__ = ["require_matplotlib", "new_figure", "save_figure", "svg_uri", "FORMATS", "Figure"]

Figure = Any  # matplotlib.figure.Figure (matplotlib is optional)
FORMATS = ("png", "svg", "pdf")


def require_matplotlib():  # noqa: ANN201 - returns matplotlib.pyplot
    """matplotlib.pyplot with the file-only Agg backend, or an OptionError saying how to get it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("plot needs matplotlib: pip install 'embeval[plot]'",
                          param="plot") from None
    return plt


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A blank matplotlib ``Figure`` of ``width`` x ``height`` inches (no pyplot state)."""
    require_matplotlib()
    from matplotlib.figure import Figure as _Figure

    return _Figure(figsize=(width, height), dpi=dpi)


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` (complete or absent) in the format of its suffix (png, svg, pdf)."""
    fmt = Path(os.fspath(path)).suffix.lstrip(".").lower() or "png"
    if fmt not in FORMATS:
        raise OptionError(f"{os.fspath(path)}: plot format {fmt!r} is not one of "
                          f"{', '.join(FORMATS)} (by the file's suffix)", param="plot")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)


def svg_uri(fig: Figure) -> str:
    """``fig`` as a base64 SVG data URI; text kept as text (small), no date, fixed ids."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "embeval-report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
