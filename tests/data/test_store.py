"""The embedding file: round trips, lazy reads, validation messages, atomic writes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import embeval
from embeval.errors import InputFileError


def test_round_trip_lazy_and_in_memory(tmp_path: Path) -> None:
    emb = torch.randn(50, 7)
    labels = torch.arange(50) % 4 - 1
    cams = torch.arange(50) % 3
    p = embeval.save(tmp_path / "e.safetensors", emb, labels, cams, metadata={"model": "m"},
                     paths=[f"img/{i}é.png" for i in range(50)])
    lazy = embeval.load(p)
    assert lazy.is_lazy and lazy.n == 50 and lazy.dim == 7
    assert torch.equal(lazy.rows(10, 20), emb[10:20])
    idx = torch.tensor([49, 0, 17, 17, 3])
    assert torch.equal(lazy.take(idx), emb[idx])
    assert torch.equal(lazy.labels, labels) and torch.equal(lazy.cameras, cams)
    assert lazy.metadata["embeval.format"] == "1" and lazy.metadata["model"] == "m"
    assert lazy.paths[3] == "img/3é.png"
    eager = embeval.load(p, lazy=False)
    assert not eager.is_lazy and torch.equal(eager.embeddings, emb)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_read_as_float32(tmp_path: Path, dtype: torch.dtype) -> None:
    emb = torch.randn(5, 3).to(dtype)
    p = embeval.save(tmp_path / "h.safetensors", emb, torch.zeros(5, dtype=torch.int64))
    rows = embeval.load(p).rows(0, 5)
    assert rows.dtype == torch.float32 and torch.equal(rows, emb.float())


def _raw(path: Path, **tensors: torch.Tensor) -> Path:
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(("tensors", "message"), [
    (dict(labels=torch.zeros(3, dtype=torch.int64)), "missing tensor 'embeddings'"),
    (dict(embeddings=torch.zeros(3, 2)), "missing tensor 'labels'"),
    (dict(embeddings=torch.zeros(3, 2, dtype=torch.int64), labels=torch.zeros(3, dtype=torch.int64)),
     "must be float32, float16 or bfloat16"),
    (dict(embeddings=torch.zeros(6), labels=torch.zeros(6, dtype=torch.int64)), "must be 2-D"),
    (dict(embeddings=torch.zeros(3, 2), labels=torch.zeros(4, dtype=torch.int64)),
     "'labels' has 4 entries but embeddings have 3 rows"),
    (dict(embeddings=torch.zeros(3, 2), labels=torch.zeros(3, dtype=torch.float32)),
     "'labels' must be integers"),
    (dict(embeddings=torch.zeros(0, 2), labels=torch.zeros(0, dtype=torch.int64)), "empty set"),
    (dict(embeddings=torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]),
          labels=torch.zeros(2, dtype=torch.int64)), "row 1 contains NaN or Inf"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, tensors, message: str) -> None:
    p = _raw(tmp_path / "bad.safetensors", **tensors)
    with pytest.raises(InputFileError) as err:
        embeval.load(p).rows(0, 2)  # lazy NaN checks happen when rows are read
    assert str(p) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_check_finds_the_first_bad_row_and_ignores_overflowing_sums(tmp_path: Path,
                                                                          dtype: torch.dtype) -> None:
    big = torch.finfo(dtype).max
    emb = torch.full((40, 8), big, dtype=dtype)  # finite rows whose sums overflow to +inf
    emb[::2] *= -1
    p = _raw(tmp_path / "big.safetensors", embeddings=emb, labels=torch.zeros(40, dtype=torch.int64))
    assert torch.equal(embeval.load(p).rows(0, 40), emb)
    for bad_row, bad in [(31, float("inf")), (17, float("-inf")), (17, float("nan"))]:
        emb2 = emb.clone()
        emb2[bad_row, 3] = bad
        emb2[35, 0] = float("nan")  # a later bad row must not be the one reported
        p = _raw(tmp_path / "bad.safetensors", embeddings=emb2, labels=torch.zeros(40, dtype=torch.int64))
        with pytest.raises(InputFileError, match=f"row {bad_row} contains NaN or Inf"):
            embeval.load(p).rows(0, 40)
        embeval.load(p).rows(0, 10)  # clean rows read alone pass
        with pytest.raises(InputFileError, match=f"row {bad_row} contains"):
            embeval.load(p).rows(10, 40)  # rows are numbered in the file, not in the block


def test_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"definitely not safetensors")
    for path, message in [(tmp_path / "missing.safetensors", "no such file"),
                          (tmp_path, "is a folder"),
                          (tmp_path / "junk.safetensors", "not a readable safetensors file")]:
        with pytest.raises(InputFileError, match=message):
            embeval.load(path)


def test_atomic_save_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    with pytest.raises(InputFileError):
        embeval.save(target, torch.tensor([[float("inf")]]), torch.zeros(1, dtype=torch.int64))
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputFileError, match="is not a folder"):
        embeval.save(blocker / "x.safetensors", torch.ones(1, 1), [0])
    assert list(tmp_path.iterdir()) == [blocker]


def test_save_creates_missing_folders(tmp_path: Path) -> None:
    p = embeval.save(tmp_path / "a" / "b" / "x.safetensors", torch.ones(1, 1), [0])
    assert embeval.load(p).n == 1


def test_label_names_metadata(tmp_path: Path) -> None:
    p = embeval.save(tmp_path / "n.safetensors", torch.ones(2, 2), [0, 1],
                     metadata={"label_names": json.dumps(["cat", "dog"])})
    assert embeval.load(p).label_names == ["cat", "dog"]


BAD_LABEL_NAMES = {"not-json": "not json", "int": "3", "dict": '{"0": "cat"}', "ints": "[1, 2]",
                   "null-inside": '["cat", null]', "empty": "", "deep": "[" * 50_000}


@pytest.mark.parametrize("raw", BAD_LABEL_NAMES.values(), ids=BAD_LABEL_NAMES.keys())
def test_bad_label_names_metadata_is_refused_on_load(tmp_path: Path, raw: str) -> None:
    p = tmp_path / "n.safetensors"
    save_file({"embeddings": torch.ones(2, 2), "labels": torch.tensor([0, 1])}, str(p),
              metadata={"label_names": raw})
    with pytest.raises(InputFileError, match="metadata 'label_names' must be a JSON list of "
                                             "strings") as err:
        embeval.load(p)
    assert err.value.path == str(p) and "\n" not in str(err.value)
    with pytest.raises(InputFileError, match="'label_names'"):  # and never written
        embeval.save(tmp_path / "out.safetensors", torch.ones(2, 2), [0, 1],
                     metadata={"label_names": raw})
    assert not (tmp_path / "out.safetensors").exists()


EXE = shutil.which("embeval")


@pytest.mark.slow
@pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")
@pytest.mark.parametrize("raw", ["not json", "7", '{"a": 1}', '[1, "dog"]'])
def test_bad_label_names_exit_2_before_computing(tmp_path: Path, raw: str) -> None:
    q = embeval.save(tmp_path / "q.safetensors", torch.randn(4, 3), [0, 1, 0, 1])
    g = tmp_path / "g.safetensors"
    save_file({"embeddings": torch.randn(6, 3), "labels": torch.tensor([0, 1, 0, 1, 0, 1])},
              str(g), metadata={"label_names": raw, "embeval.format": "1"})
    pq = tmp_path / "pq.csv"
    res = subprocess.run([EXE, "cmc", str(q), str(g), "-k", "1", "--per-query", str(pq)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(g) in lines[0] and "'label_names'" in lines[0], res.stderr
    assert not pq.exists()


def test_numpy_float64_and_small_int_labels_are_converted(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    emb = np.random.default_rng(0).standard_normal((5, 3))  # float64, numpy's default
    labels, cams = np.arange(5, dtype=np.int32), np.array([0, 1, 0, 1, 255], dtype=np.uint8)
    p = embeval.save(tmp_path / "f64.safetensors", emb, labels, cams)
    for s in (embeval.load(p), embeval.load(p, lazy=False),
              embeval.EmbeddingSet(emb, labels, cams)):
        assert s.embeddings.dtype == torch.float32 and s.labels.dtype == torch.int64
        assert torch.equal(s.embeddings, torch.from_numpy(emb).float())
        assert s.labels.tolist() == list(range(5)) and s.cameras.tolist() == [0, 1, 0, 1, 255]
    assert embeval.load(p).metadata["converted_from"] == "float64"
    assert "converted_from" not in embeval.load(embeval.save(tmp_path / "f32.safetensors",
                                                             emb.astype(np.float32), labels)).metadata


def test_float64_file_is_read_as_float32_rows(tmp_path: Path) -> None:
    emb = torch.randn(7, 4, dtype=torch.float64)
    p = _raw(tmp_path / "raw64.safetensors", embeddings=emb, labels=torch.arange(7, dtype=torch.int32),
             cameras=torch.zeros(7, dtype=torch.int16))
    s = embeval.load(p)
    assert torch.equal(s.rows(2, 6), emb[2:6].float()) and s.labels.dtype == torch.int64
    assert torch.equal(s.take(torch.tensor([6, 0])), emb[[6, 0]].float())
    assert s.cameras.dtype == torch.int64


def test_float64_beyond_float32_range_is_refused_naming_the_row(tmp_path: Path) -> None:
    emb = torch.zeros(6, 2, dtype=torch.float64)
    emb[4, 1] = -1e39  # finite in float64, -inf in float32
    with pytest.raises(InputFileError, match="row 4 has a value beyond float32's range"):
        embeval.save(tmp_path / "x.safetensors", emb, list(range(6)))
    p = _raw(tmp_path / "raw.safetensors", embeddings=emb, labels=torch.arange(6))
    with pytest.raises(InputFileError, match="row 4 has a value beyond float32's range") as err:
        embeval.load(p).rows(2, 6)
    assert str(p) in str(err.value)
    emb[4, 1] = float("nan")
    with pytest.raises(InputFileError, match="row 4 contains NaN or Inf"):
        embeval.EmbeddingSet(emb, list(range(6)))


@pytest.mark.parametrize(("labels", "message"), [
    (torch.zeros(6, 1, dtype=torch.int64), r"'labels' must be 1-D \[N\], got shape \[6, 1\]"),
    (torch.zeros(3, 2, dtype=torch.int64), r"'labels' must be 1-D \[N\], got shape \[3, 2\]"),
    (torch.arange(6, dtype=torch.float32), "'labels' must be integers .*got float32"),
    (torch.ones(6, dtype=torch.bool), "'labels' must be integers .*got bool"),
])
def test_labels_must_be_one_integer_per_row(tmp_path: Path, labels: torch.Tensor,
                                            message: str) -> None:
    p = _raw(tmp_path / "lab.safetensors", embeddings=torch.ones(6, 2), labels=labels)
    with pytest.raises(InputFileError, match=message) as err:
        embeval.load(p)
    assert str(p) in str(err.value)
    with pytest.raises(InputFileError, match=message):
        embeval.EmbeddingSet(torch.ones(6, 2), labels)
    with pytest.raises(InputFileError, match=message.replace("labels", "cameras")):
        embeval.EmbeddingSet(torch.ones(6, 2), list(range(6)), labels)
    with pytest.raises(InputFileError, match=message):
        embeval.save(tmp_path / "out.safetensors", torch.ones(6, 2), labels.numpy())
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.slow
def test_fifo_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it for reading blocks (holding the GIL) until a writer comes
    code = ("import sys, embeval\n"
            "try:\n    embeval.load(sys.argv[1])\n"
            "except embeval.InputFileError as e:\n    print(e)\n")
    try:
        res = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("embeval.load blocked on a FIFO")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{fifo}: is not a regular file (a FIFO, device or socket?), " \
                                 "expected a .safetensors embedding file"
