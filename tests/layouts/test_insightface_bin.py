"""insightface verification bins: read without resolving globals, flip-sum embeddings, pairs."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from helpers.benchmarks import fixture_bin, jpeg_bytes, py2_bin_pickle
from helpers.cli import cli, run_extract
from helpers.models import tiny_net
from PIL import Image

from embeval.data import store
from embeval.errors import InputFileError
from embeval.extract.images import Preprocessing
from embeval.layouts.insightface_bin import read_bin
from embeval.safe_load import load_plain_pickle

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "helpers.models:tiny_net"
PREP = ["--size", "12", "12", "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]


class Payload:
    """Unpickling it would run ``os.system``: creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_python2_bin_is_read_as_bytes_and_flags(tmp_path):
    path, bins, issame = fixture_bin(tmp_path)
    got_bins, got_same = read_bin(path)
    assert got_bins == bins and got_same == issame
    # a Python 3 pickle of the same content (bytes: BINBYTES) reads the same
    path.write_bytes(pickle.dumps((bins, issame), protocol=4))
    assert read_bin(path) == (bins, issame)


def test_a_payload_never_runs_and_is_refused(tmp_path, capsys):
    marker = tmp_path / "marker"
    bad = tmp_path / "evil.bin"
    bad.write_bytes(pickle.dumps(([Payload(marker)], [True]), protocol=2))
    with pytest.raises(InputFileError, match="refused global"):
        load_plain_pickle(bad)
    rc, out, err = cli(capsys, "extract", MODEL, bad, "--layout", "insightface-bin",
                       "-o", tmp_path / "o.safetensors")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "evil.bin" in err
    assert "refused global" in err and "system" in err
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()
    # numpy's reconstruction is no way round it either (not allowed without numpy_arrays)
    bad.write_bytes(pickle.dumps(np.arange(3)))
    with pytest.raises(InputFileError, match="refused global"):
        load_plain_pickle(bad)
    torch.testing.assert_close(torch.as_tensor(load_plain_pickle(bad, numpy_arrays=True)),
                               torch.arange(3))


@pytest.mark.parametrize("content, problem", [
    (py2_bin_pickle([jpeg_bytes(0)] * 3, [True, False]), "3 images for 2 pairs"),
    (pickle.dumps(([b"x", 3], [True])), "image 1 is a int"),
    (pickle.dumps(([b"x", b"y"], [2])), "issame[0] is 2"),
    (pickle.dumps({"a": 1}), "not an insightface verification bin"),
    (py2_bin_pickle([jpeg_bytes(0)] * 2, [True])[:-5], "not a readable pickle"),
])
def test_bad_bins_exit_2_with_one_line(tmp_path, capsys, content, problem):
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(content)
    rc, _, err = cli(capsys, "extract", MODEL, path, "-o", tmp_path / "o.safetensors")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "cfp_fp.bin" in err and problem in err


def test_flip_sum_embeddings_pairs_and_the_folds_protocol(tmp_path, capsys):
    path, bins, issame = fixture_bin(tmp_path, issame=(True, False) * 10)
    out = tmp_path / "lfw.safetensors"
    rc, stdout, err = cli(capsys, "extract", MODEL, path, "--flip-sum", *PREP, "-o", out,
                          "--workers", "0", "--device", "cpu")  # --layout auto: a .bin
    assert rc == 0, err
    assert "read: images 40, pairs 20, genuine 10, impostor 10" in stdout
    assert "images 40, pairs 20" in err  # the counts, also on stderr before the work
    s = store.load(out)
    assert s.n == 40 and s.metadata["layout"] == "insightface-bin"
    assert s.metadata["flip_sum"] == "true" and s.metadata["normalized"] == "true"
    assert s.metadata["pairs_file"] == "lfw.pairs.csv"
    # by hand: normalise(f(x) + f(mirror x)) on the decoded 12x12 images, (x/255 - .5) / .5
    net, prep = tiny_net(), Preprocessing((12, 12), mean=(.5, .5, .5), std=(.5, .5, .5))
    import io
    x = torch.stack([prep(torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB")))
                          .permute(2, 0, 1)) for b in bins])
    with torch.no_grad():
        want = torch.nn.functional.normalize(net(x) + net(torch.flip(x, dims=[3])), dim=1)
    torch.testing.assert_close(s.embeddings, want, rtol=0, atol=1e-5)
    labels = s.labels.tolist()
    assert [labels[2 * p] == labels[2 * p + 1] for p in range(20)] == issame
    pairs_file = tmp_path / "lfw.pairs.csv"
    rows = list(csv.reader(pairs_file.open()))
    assert rows[0] == ["query", "gallery", "same"]
    assert rows[1:] == [[str(2 * p), str(2 * p + 1), str(int(s_))] for p, s_ in enumerate(issame)]
    assert f"protocol: embeval verify {out} --folds 10 --fold-thresholds grid" in stdout
    # genuine pairs are one image twice (cosine 1), impostors two images (< 1): every fold's
    # threshold separates them, so the 10-fold accuracy is 1 and TAR = 1 at every FAR
    rc, text, err = cli(capsys, "verify", out, out, "--pairs", pairs_file, "--folds", "10",
                        "--far", "0.1", "--json")
    assert rc == 0, err
    import json
    m = json.loads(text)["metrics"]
    assert m["accuracy"] == 1.0 and m["TAR@FAR=0.1"] == 1.0


def test_skip_bad_is_refused_and_a_bad_jpeg_names_its_index(tmp_path, capsys):
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(py2_bin_pickle([jpeg_bytes(0), b"not a jpeg"], [False]))
    rc, _, err = cli(capsys, "extract", MODEL, path, "-o", tmp_path / "o.safetensors",
                     "--workers", "0", "--skip-bad")
    assert rc == 2 and "--skip-bad" in err
    rc, _, err = cli(capsys, "extract", MODEL, path, "-o", tmp_path / "o.safetensors",
                     "--workers", "0", *PREP)
    assert rc == 2 and "agedb_30.bin#1" in err and "cannot decode" in err
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.pairs.csv").exists()


@pytest.mark.slow
def test_installed_command_refuses_a_payload(tmp_path):
    marker = tmp_path / "marker"
    bad = tmp_path / "lfw.bin"
    bad.write_bytes(pickle.dumps(([Payload(marker)], [True]), protocol=2))
    r = run_extract(MODEL, str(bad), "-o", str(tmp_path / "o.safetensors"), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not marker.exists()
    assert isinstance(r, subprocess.CompletedProcess)
