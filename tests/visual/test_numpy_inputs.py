"""numpy inputs: ``.npz`` embedding files read by every command, ``embeval convert``, and no
path from a numpy file to an unpickler (issue 16, part 4)."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import cli_run

import embeval
from embeval.data.numpy_io import read_npy, read_npz
from embeval.errors import InputFileError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "digits"


def run(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(["embeval", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def as_npz(src: Path, dst: Path, *, compressed: bool = False, **changes: np.ndarray) -> Path:
    s = embeval.load(src)
    arrays = {"embeddings": s.embeddings.numpy(), "labels": s.labels.numpy()}
    if s.paths is not None:
        arrays["paths"] = np.array(s.paths)
    arrays.update(changes)
    (np.savez_compressed if compressed else np.savez)(dst, **arrays)
    return dst


def metrics(r: subprocess.CompletedProcess[str]) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["metrics"]


@pytest.mark.slow
def test_npz_gives_the_results_of_the_same_data_in_safetensors(tmp_path):
    q = as_npz(SAMPLE / "query.safetensors", tmp_path / "q.npz",
               embeddings=embeval.load(SAMPLE / "query.safetensors").embeddings.numpy()
               .astype(">f8"))  # big-endian float64: converted, same values
    g = as_npz(SAMPLE / "gallery.safetensors", tmp_path / "g.npz", compressed=True)
    want = embeval.evaluate(embeval.load(SAMPLE / "query.safetensors"),
                            embeval.load(SAMPLE / "gallery.safetensors"), ks=(1, 5), device="cpu")
    got = metrics(run("cmc", q, g, "-k", 1, 5, "--json", cwd=tmp_path))
    assert got == {k: pytest.approx(want.metrics[k], abs=0, rel=0) for k in got}
    loaded = embeval.load(q)
    assert loaded.paths == embeval.load(SAMPLE / "query.safetensors").paths
    assert not loaded.is_lazy and loaded.dtype == torch.float32


def test_convert_writes_the_lazy_file_with_the_same_content(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = embeval.load(SAMPLE / "query.safetensors")
    np.save(tmp_path / "e.npy", np.asfortranarray(s.embeddings.numpy()))
    np.save(tmp_path / "l.npy", s.labels.numpy().astype(np.int16))
    np.save(tmp_path / "c.npy", np.arange(s.n) % 3)
    (tmp_path / "p.txt").write_text("\n".join(s.paths) + "\n", encoding="utf-8")
    r = cli_run(capsys, "convert", "e.npy", "--labels", "l.npy", "--cameras", "c.npy", "--paths",
                "p.txt", "--source", "imgs", "-o", "out/e.safetensors")
    assert r.returncode == 0, r.stderr
    out = embeval.load(tmp_path / "out" / "e.safetensors")
    assert out.is_lazy and torch.equal(out.embeddings, s.embeddings)
    assert torch.equal(out.labels, s.labels) and out.cameras.tolist() == [i % 3 for i in range(s.n)]
    assert out.paths == s.paths and out.metadata["source"] == "imgs"
    assert (tmp_path / "out" / "e.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()
    npz = as_npz(SAMPLE / "query.safetensors", tmp_path / "q.npz")
    r = cli_run(capsys, "convert", npz, "-o", tmp_path / "q.safetensors")
    assert r.returncode == 0, r.stderr
    assert torch.equal(embeval.load(tmp_path / "q.safetensors").embeddings, s.embeddings)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_convert_refuses_its_input_as_output_and_a_npy_without_labels(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    npz = as_npz(SAMPLE / "query.safetensors", tmp_path / "q.npz")
    before = npz.read_bytes()
    r = cli_run(capsys, "convert", npz, "-o", npz)
    assert r.returncode == 2 and "refusing to overwrite an input" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and npz.read_bytes() == before
    np.save(tmp_path / "e.npy", np.ones((3, 2), np.float32))
    r = cli_run(capsys, "convert", "e.npy", "-o", "x.safetensors")
    assert r.returncode == 2 and "--labels" in r.stderr and not (tmp_path / "x.safetensors").exists()


def _pickled_npy(tmp_path: Path) -> Path:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([[Exploding()]], dtype=object), allow_pickle=True)
    return path


class Exploding:
    """Unpickling this object would create a file: the oracle that nothing was unpickled."""

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (Path(os.environ.get("EMBEVAL_TEST_MARKER", "/nonexistent")),))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["npy", "npz-embeddings", "npz-paths"])
def test_a_pickled_object_array_is_refused_with_exit_2(tmp_path, where, monkeypatch, capsys):
    """Through the installed command for one case (the others in this process: the same code)."""
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("EMBEVAL_TEST_MARKER", str(marker))
    g = SAMPLE / "gallery.safetensors"
    if where == "npy":
        bad = _pickled_npy(tmp_path)
        r = cli_run(capsys, "convert", bad, "--labels", bad, "-o", tmp_path / "x.safetensors")
    else:
        change = ({"embeddings": np.array([[Exploding()]] * 237, dtype=object)}
                  if where == "npz-embeddings" else
                  {"paths": np.array([Exploding()] * 237, dtype=object)})
        bad = as_npz(SAMPLE / "query.safetensors", tmp_path / "bad.npz", **change)
        r = (run("cmc", bad, g, "-k", 1, cwd=tmp_path) if where == "npz-embeddings"
             else cli_run(capsys, "cmc", bad, g, "-k", 1))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "object array" in lines[0], lines
    assert ("obj.npy" if where == "npy" else "bad.npz") in lines[0]
    assert "Traceback" not in r.stderr and not marker.exists()


def _npy_bytes(header: bytes, data: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    size = len(header).to_bytes(2 if version == b"\x01\x00" else 4, "little")
    return b"\x93NUMPY" + version + size + header + data


GOOD = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }"
CORRUPT = {
    "no magic": b"\x00" * 20,
    "version": _npy_bytes(GOOD, bytes(16), version=b"\x09\x00"),
    "not a dict": _npy_bytes(b"[1, 2, 3]", bytes(16)),
    "a call": _npy_bytes(b"{'descr': __import__('os').system('x')}", bytes(16)),
    "extra key": _npy_bytes(GOOD[:-2] + b"'x': 1}", bytes(16)),
    "object": _npy_bytes(b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", bytes(16)),
    "structured": _npy_bytes(b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}",
                             bytes(8)),
    "complex": _npy_bytes(b"{'descr': '<c8', 'fortran_order': False, 'shape': (2,)}", bytes(16)),
    "negative shape": _npy_bytes(b"{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 2)}"),
    "fortran not bool": _npy_bytes(b"{'descr': '<f4', 'fortran_order': 1, 'shape': (2, 2)}",
                                   bytes(16)),
    "truncated data": _npy_bytes(GOOD, bytes(15)),
    "too much data": _npy_bytes(GOOD, bytes(17)),
    "huge shape": _npy_bytes(b"{'descr': '<f8', 'fortran_order': False, 'shape': (10**12, 10**6)}"),
    "header too long": b"\x93NUMPY\x02\x00" + (10**6).to_bytes(4, "little") + b"{" * 100,
    "truncated header": b"\x93NUMPY\x01\x00\xff\x00{'descr'",
    "pickle after header": _npy_bytes(b"{'descr': '|O', 'fortran_order': False, 'shape': (1,)}",
                                      pickle.dumps(["x"], protocol=2)),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_npy_headers_are_one_clear_error(tmp_path, name):
    path = tmp_path / "x.npy"
    path.write_bytes(CORRUPT[name])
    with pytest.raises(InputFileError) as e:
        read_npy(path)
    assert str(path) in str(e.value)
    member = io.BytesIO()
    with zipfile.ZipFile(member, "w") as z:
        z.writestr("embeddings.npy", CORRUPT[name])
        z.writestr("labels.npy", _npy_bytes(b"{'descr': '<i8', 'fortran_order': False, "
                                            b"'shape': (2,)}", bytes(16)))
    npz = tmp_path / "x.npz"
    npz.write_bytes(member.getvalue())
    with pytest.raises(InputFileError) as e:
        embeval.load(npz)
    assert "x.npz" in str(e.value) and "embeddings" in str(e.value)


def test_the_reader_matches_numpy_on_every_supported_dtype(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"f2": rng.normal(size=(3, 4)).astype(">f2"), "f8": np.asfortranarray(rng.normal(size=(5, 2))),
              "i1": np.arange(-3, 3, dtype=np.int8), "u8": np.arange(4, dtype=">u8"),
              "b": np.array([True, False]), "U": np.array(["a", "ßé/x.png", ""]),
              "scalar": np.array(3.5), "empty": np.zeros((0, 3), np.float32)}
    np.savez_compressed(tmp_path / "a.npz", **arrays)
    got = read_npz(tmp_path / "a.npz", list(arrays))
    for k, want in arrays.items():
        assert got[k].dtype == want.dtype.newbyteorder("=") and got[k].shape == want.shape
        np.testing.assert_array_equal(got[k], want)
        assert got[k].flags.c_contiguous and got[k].dtype.isnative


def test_an_npz_missing_labels_or_with_bad_paths_names_the_problem(tmp_path):
    np.savez(tmp_path / "a.npz", embeddings=np.ones((2, 3), np.float32))
    with pytest.raises(InputFileError, match="missing array 'labels'"):
        embeval.load(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", embeddings=np.ones((2, 3), np.float32), labels=[0, 1],
             paths=np.array([1, 2]))
    with pytest.raises(InputFileError, match="'paths' must be a 1-D unicode array"):
        embeval.load(tmp_path / "b.npz")
    np.savez(tmp_path / "u.npz", embeddings=np.ones((2, 3), np.float32), labels=np.array(["a", "b"]))
    with pytest.raises(InputFileError, match="'labels' must be integers"):
        embeval.load(tmp_path / "u.npz")
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputFileError, match="not a readable .npz file"):
        embeval.load(tmp_path / "c.npz")
    np.save(tmp_path / "d.npy", np.ones((2, 3), np.float32))
    with pytest.raises(InputFileError, match="embeval convert"):
        embeval.load(tmp_path / "d.npy")
