"""Plots (issue 16, part 1): ``cmc --plot``, ``pr --plot``, ``verify --plot`` write valid,
non-blank PNG / SVG files; the figure functions have the right panels and numbers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import cli_run
from PIL import Image

import embeval
from embeval.errors import OptionError
from embeval.verification.verify import verify
from embeval.visual import figures as plots

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "digits"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png_drawn(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(path) as im:
        im.load()
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "blank image"


def assert_svg(path: Path) -> None:
    root = ET.fromstring(path.read_bytes())
    assert root.tag.endswith("svg")
    assert sum(1 for e in root.iter() if e.tag.endswith("path")) > 10  # curves, not empty


@pytest.fixture(scope="module")
def sets():
    return embeval.load(SAMPLE / "query.safetensors"), embeval.load(SAMPLE / "gallery.safetensors")


def test_cmc_curve_is_the_metric_at_every_rank(sets):
    result = embeval.evaluate(*sets, ks=(1, 3, 7), device="cpu")
    ranks, rate = plots.cmc_curve(result, 7)
    assert ranks.tolist() == list(range(1, 8))
    for k in (1, 3, 7):
        assert rate[k - 1] == result.metrics[f"rank{k}"]
    assert np.all(np.diff(rate) >= 0)
    with pytest.raises(OptionError, match="max_rank"):
        plots.cmc_curve(result, result.n_gallery + 1)


def test_cmc_figure_has_one_axes_and_draws_the_band(sets):
    result = embeval.evaluate(*sets, ks=(1, 5), device="cpu")
    fig = plots.cmc_figure(result, max_rank=5)
    assert len(fig.axes) == 1 and not fig.axes[0].collections  # no band by default
    _, rate = plots.cmc_curve(result, 5)
    banded = plots.cmc_figure(result, max_rank=5, band=(rate - 0.05, np.minimum(rate + 0.05, 1)))
    (ax,) = banded.axes
    assert len(ax.collections) == 1  # the fill_between
    with pytest.raises(ValueError, match="one per rank"):
        plots.cmc_figure(result, max_rank=5, band=(rate[:3], rate[:3]))


def test_verification_figure_has_roc_det_and_histogram_panels(sets):
    q, _ = sets
    result = verify(q, q, exclude_self=True, device="cpu")
    fig = plots.verification_figure(result, title="t")
    assert [ax.get_title() for ax in fig.axes] == ["ROC", "DET", "score distributions"]
    assert len(plots.score_histogram_figure(result).axes) == 1


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_cmc_plot_through_the_command_line(tmp_path, capsys, suffix):
    out = tmp_path / f"cmc.{suffix}"
    r = cli_run(capsys, "cmc", SAMPLE / "query.safetensors", SAMPLE / "gallery.safetensors",
                "-k", 1, 5, 10, "--plot", out)
    assert r.returncode == 0, r.stderr
    assert_png_drawn(out) if suffix == "png" else assert_svg(out)


@pytest.mark.slow
def test_pr_and_verify_plots_through_the_command_line(tmp_path, capsys):
    q, g = SAMPLE / "query.safetensors", SAMPLE / "gallery.safetensors"
    r = cli_run(capsys, "pr", q, g, "--plot", tmp_path / "pr.png")
    assert r.returncode == 0, r.stderr
    assert_png_drawn(tmp_path / "pr.png")
    r = cli_run(capsys, "verify", q, q, "--exclude-self", "--plot", tmp_path / "v.png")
    assert r.returncode == 0, r.stderr
    assert_png_drawn(tmp_path / "v.png")
    with Image.open(tmp_path / "v.png") as im:  # three panels side by side
        assert im.width > 2.5 * im.height


def test_a_plot_with_an_unknown_format_is_refused_before_any_work(tmp_path, capsys):
    r = cli_run(capsys, "cmc", SAMPLE / "query.safetensors", SAMPLE / "gallery.safetensors",
                "--plot", tmp_path / "cmc.txt")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and ".png" in r.stderr
    assert not (tmp_path / "cmc.txt").exists()


def test_without_matplotlib_the_plot_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    r = cli_run(capsys, "cmc", SAMPLE / "query.safetensors", SAMPLE / "gallery.safetensors",
                "--plot", tmp_path / "cmc.png")
    assert r.returncode == 2
    assert "--plot: plots need matplotlib, which is not installed: pip install matplotlib" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "cmc.png").exists()


def test_writers_name_the_parameter_when_the_result_lacks_their_data(tmp_path: Path) -> None:
    """``write_predictions`` without kNN and ``write_pr_plot`` / ``write_curves`` without PR data
    raise an OptionError naming ``result`` (was a raw KeyError / TypeError), writing nothing."""
    q = embeval.EmbeddingSet(np.eye(4, dtype=np.float32), [0, 0, 1, 1])
    res = embeval.evaluate(q, q, ks=(1,), device="cpu")
    for write, target in ((embeval.write_predictions, "p.csv"), (embeval.write_pr_plot, "pr.png"),
                          (embeval.write_curves, "c.safetensors")):
        with pytest.raises(OptionError, match=r"^result: ") as e:
            write(tmp_path / target, res)
        assert e.value.param == "result" and not (tmp_path / target).exists()


def test_without_matplotlib_a_plot_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken install (matplotlib is a dependency): the option that asked for a plot is named,
    and a report (no --plot) does not speak of --plot."""
    import sys

    from embeval.visual.figures.base import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(OptionError, match=r"^plot: plots need matplotlib") as e:
        require_matplotlib()
    assert e.value.param == "plot"
    with pytest.raises(OptionError, match=r"^plots need matplotlib, which is not installed") as e:
        require_matplotlib(None)
    assert e.value.param is None
