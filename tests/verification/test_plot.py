"""embeval.verification.plot: the key histogram as float bins (numpy oracle), rebinning, ROC
thinning, the ROC CSV (exact round trip) and the verification PNG."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embeval.errors import InputFileError, OptionError
from embeval.verification.plot import (
    impostor_histogram,
    rebin,
    thin_roc,
    write_roc_csv,
)
from embeval.visual.figures import write_verification_plot

F32 = np.finfo(np.float32)
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, F32.tiny, -F32.tiny, F32.smallest_subnormal,
                    -F32.smallest_subnormal, F32.max, -F32.max, 0.984375, 0.9921875, 1e-3],
                   dtype=np.float32)


def key_bins(x: np.ndarray) -> np.ndarray:
    """The plan's ordered key of float32 ``x`` (-0.0 as +0.0), top 16 bits (independent oracle)."""
    x = np.where(x == 0, np.float32(0), x).astype(np.float32)
    bits = x.view(np.uint32)
    key = np.where(bits >> 31 == 1, bits ^ np.uint32(0xFFFFFFFF), bits | np.uint32(0x80000000))
    return (key >> 16).astype(np.int64)


def check_histogram(x: np.ndarray) -> None:
    b = key_bins(x)
    keys = torch.from_numpy(np.bincount(b, minlength=65536).astype(np.int64))
    edges, counts = impostor_histogram(keys)
    assert edges.dtype == np.float64 and counts.dtype == np.int64
    assert len(edges) == len(counts) + 1 and counts.sum() == len(x)
    first = b.min()
    assert counts[0] > 0 and counts[-1] > 0 and len(counts) == b.max() - first + 1
    i = b - first
    v = x.astype(np.float64)
    assert (edges[i] <= v).all() and (v < edges[i + 1]).all()
    # the bounds are tight: each bin's low edge and the float32 just below its high edge are in it
    lo, hi = edges[:-1], edges[1:]
    bins = np.arange(first, first + len(counts))
    assert (lo.astype(np.float32).astype(np.float64) == lo).all()
    assert (key_bins(lo.astype(np.float32)) == bins).all()
    finite = hi < 2.0 ** 128
    below = np.nextafter(hi[finite].astype(np.float32), np.float32(-np.inf))
    assert (key_bins(below) == bins[finite]).all()
    assert (hi[~finite] == 2.0 ** 128).all() and (bins[~finite] == 0xFF7F).all()


@settings(max_examples=examples(60), deadline=None)
@given(arrays(np.float32, st.integers(1, 40),
              elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_histogram_bins_hold_their_values(x: np.ndarray) -> None:
    check_histogram(x)


def test_histogram_of_awkward_values() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([SPECIAL, rng.standard_normal(2000).astype(np.float32),
                        (rng.standard_normal(200) * 1e-40).astype(np.float32),  # subnormals
                        (rng.standard_normal(200) * 1e37).astype(np.float32)])
    check_histogram(x)
    edges, counts = impostor_histogram(np.bincount(key_bins(x), minlength=65536))
    assert edges[0] == -F32.max and edges[-1] == 2.0 ** 128
    zero = np.searchsorted(edges, 0.0)  # +0.0 and -0.0 share the bin starting at 0
    assert edges[zero] == 0.0 and counts[zero] >= 2


def test_histogram_refuses_bad_counts() -> None:
    assert [a.size for a in impostor_histogram(torch.zeros(65536, dtype=torch.int64))] == [0, 0]
    for bad_bin in (0x7F, 0xFF80):  # -inf and +inf's bins
        keys = torch.zeros(65536, dtype=torch.int64)
        keys[bad_bin] = 1
        with pytest.raises(ValueError, match="inf/NaN"):
            impostor_histogram(keys)
    with pytest.raises(ValueError, match="65536"):
        impostor_histogram(torch.zeros(100, dtype=torch.int64))


def test_rebin_conserves_and_shares_by_overlap() -> None:
    rng = np.random.default_rng(1)
    edges = np.cumsum(rng.uniform(0.01, 1.0, 301)) - 40.0
    counts = rng.integers(0, 10**9, 300)
    for n_bins in (1, 7, 100):
        out = rebin(edges, counts, n_bins, edges[0] - 1.0, edges[-1])
        assert out.shape == (n_bins,) and (out >= 0).all()
        assert out.sum() == pytest.approx(counts.sum(), rel=1e-12)
    # one bin [0, 2) of 4 onto [1, 2), [2, 3): half of it overlaps, the rest is outside
    assert rebin([0.0, 2.0], [4], 2, 1.0, 3.0).tolist() == [2.0, 0.0]
    assert rebin([0.0, 1.0, 3.0], [2, 4], 3, 0.0, 3.0).tolist() == [2.0, 2.0, 2.0]


def toy_roc(n_gen: int, n_imp: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ROC in scikit-learn's form: thresholds descending (first +inf), fpr/tpr non-decreasing."""
    rng = np.random.default_rng(seed)
    gen = (rng.standard_normal(n_gen) + 2.5).astype(np.float32)
    imp = rng.standard_normal(n_imp).astype(np.float32)
    scores = np.concatenate([gen, imp])
    is_gen = np.concatenate([np.ones(n_gen), np.zeros(n_imp)])
    order = np.argsort(-scores, kind="stable")
    s, g = scores[order], is_gen[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(g)[last], np.cumsum(1 - g)[last]
    return (np.r_[0.0, fp / n_imp], np.r_[0.0, tp / n_gen],
            np.r_[np.float32(np.inf), s[last]].astype(np.float32))


def test_thin_roc_keeps_the_ends_the_requested_points_and_the_shape() -> None:
    fpr, tpr, thr = toy_roc(20_000, 200_000)
    n = len(fpr)
    keep = [5, 777, n // 2, n - 3]
    idx = thin_roc(fpr, tpr, thr, keep, max_points=600)
    assert idx.dtype == np.int64 and len(idx) <= 600
    assert {0, n - 1, *keep} <= set(idx.tolist())
    assert (np.diff(idx) > 0).all()
    assert (np.diff(fpr[idx]) >= 0).all() and (np.diff(tpr[idx]) >= 0).all()
    # between kept points a < b, the skipped points a+1..b stay within one level on each axis, so
    # the chord a-b is within one level of the full curve: log10 FPR, TPR and log10 FNR
    levels = (600 - 2 - len(keep)) // 6
    assert max_gap(idx, fpr, tpr) <= 1.0 / (levels - 1) + 1e-12
    naive = np.linspace(0, n - 1, 600).astype(np.int64)  # evenly spaced indices would not be
    assert max_gap(naive, fpr, tpr) > 5.0 / (levels - 1)
    many = np.linspace(1, n - 2, 60).astype(np.int64)  # the requested points count in the budget
    thinned = thin_roc(fpr, tpr, thr, many, max_points=300)
    assert 250 < len(thinned) <= 300 and set(many.tolist()) <= set(thinned.tolist())


def max_gap(idx: np.ndarray, fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Largest span of the skipped points between two kept ones, in fractions of each axis's range
    (log10 FPR from its smallest positive value, TPR, log10 FNR to its smallest positive value)."""
    pos_f, pos_fnr = fpr[fpr > 0].min(), (1 - tpr)[tpr < 1].min()
    worst = 0.0
    for a, b in zip(idx[:-1], idx[1:]):
        if b == a + 1:
            continue
        f, t = fpr[a + 1:b + 1], tpr[a + 1:b + 1]
        spans = [t[-1] - t[0]]
        if f[0] > 0:
            spans.append(np.log10(f[-1] / f[0]) / -np.log10(pos_f))
        if t[-1] < 1:
            spans.append(np.log10((1 - t[0]) / (1 - t[-1])) / np.log10((1 - tpr[0]) / pos_fnr))
        worst = max(worst, *spans)
    return float(worst)


def test_thin_roc_small_and_bad_input() -> None:
    fpr, tpr, thr = toy_roc(30, 50)
    assert thin_roc(fpr, tpr, thr, [], max_points=2000).tolist() == list(range(len(fpr)))
    assert thin_roc(torch.from_numpy(fpr), torch.from_numpy(tpr), None, [3], max_points=4).tolist() \
        == [0, 3, len(fpr) - 1]
    with pytest.raises(ValueError, match="keep_fprs"):
        thin_roc(fpr, tpr, thr, [len(fpr)], max_points=10)
    with pytest.raises(ValueError, match="one length"):
        thin_roc(fpr, tpr[:-1], thr)


def bits64(x: np.ndarray) -> list[int]:
    return np.asarray(x, dtype=np.float64).view(np.int64).tolist()


def test_roc_csv_round_trips_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    fpr = np.r_[0.0, np.sort(rng.uniform(0, 1, 50)), 1 / 3, 1.0]
    tpr = np.r_[0.0, np.sort(rng.uniform(0, 1, 50)), 2 / 3, 1.0]
    thr = np.r_[np.inf, np.sort(rng.standard_normal(50))[::-1], -0.0, -1e-40].astype(np.float32)
    path = tmp_path / "roc.csv"
    write_roc_csv(path, torch.from_numpy(fpr), tpr, torch.from_numpy(thr))
    text = path.read_bytes().decode()
    assert text.startswith("fpr,tpr,threshold\n0.0,0.0,inf\n") and "\r" not in text
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["fpr", "tpr", "threshold"] and len(rows) == len(fpr) + 1
    cols = np.array([[float(c) for c in r] for r in rows[1:]]).T
    assert bits64(cols[0]) == bits64(fpr) and bits64(cols[1]) == bits64(tpr)
    back = cols[2].astype(np.float32)
    assert bits64(cols[2]) == bits64(thr.astype(np.float64))
    assert back.view(np.uint32).tolist() == thr.view(np.uint32).tolist()


def plot_inputs() -> dict[str, object]:
    fpr, tpr, _ = toy_roc(300, 3000)
    rng = np.random.default_rng(3)
    gen = np.sort((rng.standard_normal(300) * 0.1 + 0.6).astype(np.float32))
    gen_values, gen_counts = np.unique(gen, return_counts=True)
    imp = (rng.standard_normal(3000) * 0.1 + 0.1).astype(np.float32)
    edges, counts = impostor_histogram(np.bincount(key_bins(imp), minlength=65536))
    return {"fpr": fpr, "tpr": tpr, "gen_values": torch.from_numpy(gen_values),
            "gen_counts": torch.from_numpy(gen_counts), "imp_edges": edges, "imp_counts": counts,
            "far_points": {1e-3: (0.41, 0.43), 1e-2: (0.73, 0.33), 1e-1: (0.95, 0.22)},
            "title": "toy verification"}


@pytest.mark.slow
def test_plot_png_decodes_with_content(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image
    path = tmp_path / "verify.png"
    write_verification_plot(path, **plot_inputs())
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1500, 450)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20
    assert max(n for n, _ in colours) < 0.95 * 1500 * 450  # not one flat background
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verify.png"]  # no staging file left


def test_outputs_into_a_file_as_folder_leave_nothing(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "file").write_text("x")
    for name, write in (("a.png", lambda p: write_verification_plot(p, **plot_inputs())),
                        ("a.csv", lambda p: write_roc_csv(p, [0.0, 1.0], [0.0, 1.0], [np.inf, 0.5]))):
        target = tmp_path / "file" / "sub" / name
        with pytest.raises(InputFileError, match="not a folder") as e:
            write(target)
        assert e.value.path == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(OptionError, match="^plots need matplotlib, which is not installed: pip install"):
        write_verification_plot(tmp_path / "a.png", **plot_inputs())
    assert list(tmp_path.iterdir()) == []
