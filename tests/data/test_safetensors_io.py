"""Deterministic safetensors files: same content, same bytes, in any process; readable by safetensors."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from embeval.data.safetensors_io import plan_layout, tensor_digest, write_safetensors
from embeval.results.writers import write_tensor_stream


def content() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"emb": torch.randn(5, 3, generator=g), "half": torch.randn(4, generator=g).half(),
            "bf": torch.randn(2, 2, generator=g).bfloat16(), "ids": torch.arange(7),
            "i32": torch.arange(3, dtype=torch.int32), "i16": torch.arange(3, dtype=torch.int16),
            "raw": torch.tensor([1, 2, 3], dtype=torch.uint8), "flag": torch.tensor([True, False]),
            "f64": torch.randn(3, dtype=torch.float64, generator=g), "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 4), "strided": torch.arange(12.0).reshape(3, 4).T}


def test_bytes_equal_the_safetensors_library_where_its_order_is_ours() -> None:
    # the library orders tensors by dtype then name and pads the header with spaces to 8 bytes;
    # with one dtype per element size and at most one metadata key the two must agree exactly
    t = {"a": torch.randn(3, dtype=torch.float64), "b": torch.randn(2, 5), "c": torch.randn(3).half(),
         "d": torch.tensor([7, 8, 9], dtype=torch.uint8)}
    for meta in (None, {"embeval.format": "1"}):
        buf = io.BytesIO()
        write_safetensors(buf, t, meta)
        assert buf.getvalue() == save(t, metadata=meta)


def test_layout_is_aligned_sorted_and_readable_by_safe_open(tmp_path: Path) -> None:
    t = content()
    meta = {"z": "last", "a": "first", "label_names": json.dumps(["é", "ü"]), "m": "{}"}
    p = tmp_path / "x.safetensors"
    with open(p, "wb") as f:
        write_safetensors(f, t, meta)
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n], object_pairs_hook=list)
    assert header[0][0] == "__metadata__" and [k for k, _ in header[0][1]] == sorted(meta)
    for name, info in header[1:]:
        begin, end = dict(info)["data_offsets"]
        assert begin % t[name].element_size() == 0, name
    assert len(raw) == 8 + n + sum(v.numel() * v.element_size() for v in t.values())
    with safe_open(str(p), framework="pt") as f:
        assert f.metadata() == meta and set(f.keys()) == set(t)
        for name, value in t.items():
            back = f.get_tensor(name)
            assert back.dtype == value.dtype and torch.equal(back, value), name


CHILD = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
import embeval
from embeval.data.safetensors_io import write_safetensors
from test_safetensors_io import content
out = sys.argv[1]
meta = {f"key{i}": str(i) for i in range(12)}
with open(out + "/direct.safetensors", "wb") as f:
    write_safetensors(f, content(), meta)
embeval.save(out + "/emb.safetensors", torch.randn(6, 4, generator=torch.Generator().manual_seed(1)),
             [0, 1, 2, 0, 1, 2], [0, 0, 1, 1, 2, 2], paths=[f"img{i}.jpg" for i in range(6)],
             metadata={"model": "m", "normalized": "true", "source": "/data", "flip": "false",
                       "label_names": json.dumps(["a", "b", "c"]), "preprocessing": "{}"})
"""


@pytest.mark.slow
def test_same_content_gives_the_same_bytes_in_separate_processes(tmp_path: Path) -> None:
    # the safetensors library writes metadata in a per-process hash order: two processes
    # (and two hash seeds) must still write identical files
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run([sys.executable, "-c", CHILD, str(out), str(Path(__file__).parent)],
                             env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        outs.append(out)
    for name in ("direct.safetensors", "emb.safetensors"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_stream_writer_shares_the_header(tmp_path: Path) -> None:
    scores = torch.randn(10, 6)
    idx = torch.randint(0, 9, (10, 6))
    meta = {"layout": "topk", "embeval.scores": "1", "metric": "cosine"}
    write_tensor_stream(tmp_path / "s.safetensors",
                        [("topk_scores", torch.float32, (10, 6)), ("topk_indices", torch.int64, (10, 6))],
                        iter([{"topk_scores": scores[:4], "topk_indices": idx[:4]},
                              {"topk_indices": idx[4:]}, {"topk_scores": scores[4:]}]), meta)
    buf = io.BytesIO()
    write_safetensors(buf, {"topk_scores": scores, "topk_indices": idx}, meta)
    assert (tmp_path / "s.safetensors").read_bytes() == buf.getvalue()


def test_digest_sees_names_dtypes_shapes_and_values() -> None:
    t = {"a": torch.arange(6), "b": torch.ones(2, 3)}
    d = tensor_digest(t)
    assert d == tensor_digest({"b": torch.ones(2, 3), "a": torch.arange(6)})  # order-free
    changed = [{"a": torch.arange(6), "c": torch.ones(2, 3)},
               {"a": torch.arange(6, dtype=torch.int32), "b": torch.ones(2, 3)},
               {"a": torch.arange(6).reshape(2, 3), "b": torch.ones(2, 3)},
               {"a": torch.arange(6), "b": torch.ones(3, 2)},
               {"a": torch.arange(6).flip(0), "b": torch.ones(2, 3)}]
    assert len({d, *(tensor_digest(x) for x in changed)}) == 1 + len(changed)
    assert tensor_digest(t, prefix=b"x") != d


def test_refuses_what_safetensors_cannot_hold() -> None:
    with pytest.raises(TypeError, match="metadata must map str to str"):
        plan_layout([("a", torch.float32, (1,))], {"k": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="cannot be written"):
        plan_layout([("a", torch.complex64, (1,))])
    with pytest.raises(ValueError, match="unique"):
        plan_layout([("a", torch.float32, (1,)), ("a", torch.int64, (1,))])
