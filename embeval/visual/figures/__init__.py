"""Every matplotlib figure of embeval, in one room: the writers (``--plot``), ``report`` and the
Python API draw here, and :mod:`.base` is the one place that loads matplotlib.

- :mod:`.base`: :func:`require_matplotlib` (one line saying how to get it back when it is missing),
  blank figures, :func:`save_figure` (by the file's suffix), SVG data URIs;
- :mod:`.ranking`: the CMC curve and the mean interpolated PR curve of an ``EvalResult``;
- :mod:`.verification`: ROC, DET and the genuine / impostor score densities of a ``VerifyResult``;
- :mod:`.saved`: the report's figures, drawn from a saved result file.

Pure: each figure function returns a ``Figure`` (no pyplot state); the ``write_*`` functions write
one through :func:`embeval.outputs.atomic_path` (complete or absent).
"""

from embeval.visual.figures.base import FORMATS, plot_format, require_matplotlib, save_figure
from embeval.visual.figures.ranking import cmc_curve, cmc_figure, pr_figure, write_cmc_plot, write_pr_plot
from embeval.visual.figures.verification import (
    PANELS,
    score_histogram_figure,
    verification_figure,
    write_verification_plot,
)

__all__ = ["require_matplotlib", "plot_format", "save_figure", "FORMATS", "cmc_curve", "cmc_figure",
           "write_cmc_plot", "pr_figure", "write_pr_plot", "verification_figure",
           "score_histogram_figure", "write_verification_plot", "PANELS"]
