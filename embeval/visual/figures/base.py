"""The one place that loads matplotlib: its file-only backend, blank figures, saving.

matplotlib is a dependency; in a broken install without it every figure raises
:class:`~embeval.errors.OptionError` with the one line that says how to get it back (naming the
option that asked for a plot, if any); the CLI turns it into exit 2.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

from embeval.errors import OptionError
from embeval.outputs import atomic_path

__all__ = ["require_matplotlib", "new_figure", "plot_format", "save_figure", "svg_uri", "FORMATS",
           "Figure"]

Figure = Any  # matplotlib.figure.Figure (imported lazily)
FORMATS = ("png", "svg", "pdf")


def require_matplotlib(param: str | None = "plot"):  # noqa: ANN201 - returns matplotlib.pyplot
    """matplotlib.pyplot with the file-only Agg backend, or an OptionError (naming ``param``, the
    option that asked for a plot, if any) saying how to get it back: matplotlib is a dependency,
    so it is missing only from a broken install."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        what = f"{param}: plots need" if param else "plots need"
        raise OptionError(f"{what} matplotlib, which is not installed: pip install matplotlib",
                          param=param) from None
    return plt


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A blank matplotlib ``Figure`` of ``width`` x ``height`` inches (no pyplot state)."""
    require_matplotlib(None)
    from matplotlib.figure import Figure as _Figure

    return _Figure(figsize=(width, height), dpi=dpi)


def plot_format(path: str | os.PathLike[str], param: str = "plot") -> str:
    """The format a plot file's suffix chooses (png, svg, pdf; no suffix: png), or an
    :class:`OptionError` naming ``param``: commands call it before any work."""
    fmt = Path(os.fspath(path)).suffix.lstrip(".").lower() or "png"
    if fmt not in FORMATS:
        raise OptionError(f"{param} {os.fspath(path)}: the file's suffix chooses the format: "
                          ".png, .svg or .pdf", param=param)
    return fmt


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` (complete or absent) in the format of its suffix (png, svg, pdf)."""
    fmt = plot_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)


def svg_uri(fig: Figure) -> str:
    """``fig`` as a base64 SVG data URI; text kept as text (small), no date, fixed ids."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "embeval-report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
