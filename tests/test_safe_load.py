"""embeval.safe_load: hostile .pt2 / weights files are refused and their payload never runs.

Every malicious archive is built at test time from a real ``torch.export.save`` of a tiny
model, with one member rewritten; its payload would create ``marker`` when unpickled /
evaluated.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from helpers.cli import run_extract
from helpers.images import image_folder
from helpers.models import tiny_net

from embeval import safe_load
from embeval.errors import InputFileError
from embeval.safe_load import load_exported, load_tensors

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Payload:
    """Unpickling it calls ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (builtins.open, (str(self.marker), "w"))


def exported_bytes(dynamic: bool = False) -> bytes:
    """A real torch.export archive of ``tiny_net`` (batch dimension dynamic if asked)."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    program = torch.export.export(tiny_net(), (X[:2],), dynamic_shapes=shapes)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def rewrite(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    """Copy a zip, ``edit(name, bytes) -> bytes | None`` per member (None drops it).

    ``edit(None, None)`` may return ``{name: bytes}`` of members to add (names below the root).
    """
    src = zipfile.ZipFile(io.BytesIO(data))
    root = src.namelist()[0].split("/")[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            new = edit(name[len(root) + 1:], src.read(name))
            if new is not None:
                dst.writestr(name, new)
        for name, content in (edit(None, None) or {}).items():
            dst.writestr(f"{root}/{name}", content)
    return out.getvalue()


def edit_json(member: str, change):  # type: ignore[no-untyped-def]
    def edit(name, content):  # type: ignore[no-untyped-def]
        if name == member:
            tree = json.loads(content)
            change(tree)
            return json.dumps(tree).encode()
        return {} if name is None else content
    return edit


def evil_archive(case: str, marker: Path) -> bytes:
    payload = pickle.dumps(Payload(marker))
    if case == "sample inputs":
        return rewrite(exported_bytes(), lambda n, c: {} if n is None else
                       payload if n == "data/sample_inputs/model.pt" else c)
    if case == "pickled weight":
        def pickled(tree):  # type: ignore[no-untyped-def]
            tree["config"]["fc.weight"]["use_pickle"] = True
        data = rewrite(exported_bytes(), edit_json("data/weights/model_weights_config.json",
                                                   pickled))
        target = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(
            "archive/data/weights/model_weights_config.json"))["config"]["fc.weight"]["path_name"]
        return rewrite(data, lambda n, c: {} if n is None else
                       payload if n == f"data/weights/{target}" else c)
    if case in ("opaque constant", "custom object constant"):
        prefix = "opaque_obj_" if case == "opaque constant" else "custom_obj_"

        def add_constant(tree):  # type: ignore[no-untyped-def]
            tree["config"]["evil"] = {"path_name": f"{prefix}0", "is_param": False,
                                      "use_pickle": True, "tensor_meta": None}
        data = rewrite(exported_bytes(), edit_json(
            "data/constants/model_constants_config.json", add_constant))
        return rewrite(data, lambda n, c: {f"data/constants/{prefix}0": payload}
                       if n is None else c)
    if case == "aotinductor":
        return rewrite(exported_bytes(), lambda n, c: {"data/aotinductor/model/model.so":
                                                       b"\x7fELF not really"} if n is None else c)
    if case == "legacy weights":
        return rewrite(exported_bytes(), lambda n, c: {"data/weights/model.pt": payload}
                       if n is None else c)
    if case == "sympy expression":  # sympy.sympify(expr_str) is eval
        code = f"__import__('builtins').open({str(marker)!r}, 'w')"

        def expr(tree):  # type: ignore[no-untyped-def]
            def walk(o):  # type: ignore[no-untyped-def]
                if isinstance(o, dict):
                    for k, v in o.items():
                        if k == "expr_str":
                            o[k] = f"{v} + 0*len(str({code}))"
                        else:
                            walk(v)
                elif isinstance(o, list):
                    for v in o:
                        walk(v)
            walk(tree)
        return rewrite(exported_bytes(dynamic=True), edit_json("models/model.json", expr))
    if case == "guards code":  # exec'd by ExportedProgram.module(), run by each forward
        def guard(tree):  # type: ignore[no-untyped-def]
            tree["guards_code"] = [f"__import__('builtins').open({str(marker)!r}, 'w') is not None"]
        return rewrite(exported_bytes(dynamic=True), edit_json("models/model.json", guard))
    raise AssertionError(case)


CASES = ["sample inputs", "pickled weight", "opaque constant", "custom object constant",
         "aotinductor", "legacy weights", "sympy expression", "guards code"]
WHY = {"sample inputs": "data/sample_inputs/model.pt", "pickled weight": "data/weights/weight_",
       "opaque constant": "opaque Python object", "custom object constant": "custom",
       "aotinductor": "AOTInductor", "legacy weights": "data/weights/model.pt",
       "sympy expression": "not a symbolic size expression",
       "guards code": "not a guard on input sizes"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("img"), {"a": 2, "b": 2})


def assert_one_line_refusal(r: subprocess.CompletedProcess[str], named: Path, why: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embeval: error: {named}: "), r.stderr
    assert why in lines[0] and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_cli_refuses_a_crafted_pt2_and_never_runs_its_payload(case, images, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pt2").write_bytes(evil_archive(case, marker))
    r = run_extract("evil.pt2", "--query", str(images), "--gallery", str(images), "--out-dir", "out",
                cwd=tmp_path)
    assert not marker.exists(), f"{case}: the payload ran"
    assert_one_line_refusal(r, Path("evil.pt2"), WHY[case])
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("case", CASES)
def test_load_exported_refuses_a_crafted_pt2(case, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pt2").write_bytes(evil_archive(case, marker))
    with pytest.raises(InputFileError, match=WHY[case]) as info:
        load_exported(tmp_path / "evil.pt2")
    assert info.value.path == str(tmp_path / "evil.pt2")
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["sample inputs", "pickled weight", "legacy weights"])
def test_every_torch_load_inside_is_weights_only_even_without_the_archive_check(
        case, tmp_path, monkeypatch):
    """Defence in depth: with the pre-scan disabled, torch's own weights_only=False loads
    are still forced weights-only, so the payload is refused, not run."""
    monkeypatch.setattr(safe_load, "_check_archive", lambda data, path: None)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # even against this
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pt2").write_bytes(evil_archive(case, marker))
    with pytest.raises(InputFileError, match="evil.pt2: cannot load model"):
        load_exported(tmp_path / "evil.pt2")
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_legitimate_pt2_loads_and_gives_the_same_outputs(dynamic, tmp_path):
    (tmp_path / "m.pt2").write_bytes(exported_bytes(dynamic))
    module, example = load_exported(tmp_path / "m.pt2")
    assert example is not None and torch.equal(example[0], X[:2])
    batch = X if dynamic else X[:2]
    torch.testing.assert_close(module(batch), tiny_net()(batch), rtol=0, atol=0)


@pytest.mark.slow
def test_cli_extracts_with_a_legitimate_pt2(images, tmp_path):
    (tmp_path / "m.pt2").write_bytes(exported_bytes(dynamic=True))
    r = run_extract("m.pt2", "--query", str(images), "--gallery", str(images), "--out-dir", "out",
                "--size", "8", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gallery.safetensors",
                                                                    "query.safetensors"]


@pytest.mark.parametrize("content", ["dict", "payload"])
def test_cli_raw_pickle_as_weights_is_one_line(content, images, tmp_path):
    marker = tmp_path / "pwned"
    obj = {"a": 1} if content == "dict" else {"fc.weight": Payload(marker)}
    (tmp_path / "bad.pt").write_bytes(pickle.dumps(obj))
    r = run_extract("embeval-small", "--weights", "bad.pt", "--query", str(images), "--gallery",
                str(images), "--out-dir", "out", cwd=tmp_path)
    assert_one_line_refusal(r, Path("bad.pt"), "weights_only=True")
    assert not marker.exists()


def test_load_tensors_reads_tensors_and_refuses_objects(tmp_path):
    torch.save({"w": torch.arange(3)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.arange(3))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload(tmp_path / "pwned"), protocol=2))
    with pytest.raises(InputFileError, match=r"evil\.pt: not plain tensors \(torch\.load with "
                                             r"weights_only=True failed: Unsupported global: "
                                             r"GLOBAL io\.open was not an allowed global by "
                                             r"default\.\)$"):
        load_tensors(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(InputFileError, match="missing.pt: cannot read"):
        load_tensors(tmp_path / "missing.pt")


# ------------------------------------------------------------------ plain pickles


@pytest.mark.parametrize("payload", [
    b"\x80\x02cbuiltins\nopen\nq\x00X\x01\x00\x00\x00mq\x01X\x01\x00\x00\x00wq\x02\x86R.",  # GLOBAL
    b"\x80\x02(cbuiltins\nopen\nX\x01\x00\x00\x00mX\x01\x00\x00\x00wo.",  # OBJ
    b"(ibuiltins\nopen\nX\x01\x00\x00\x00mX\x01\x00\x00\x00w.",  # INST
    b"\x80\x02\x82\x01.",  # EXT1: an extension code resolves a global too
    b"\x80\x02X\x01\x00\x00\x00pQ.",  # BINPERSID
])
def test_plain_pickle_resolves_no_global(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "x.pkl"
    f.write_bytes(payload)
    with pytest.raises(InputFileError, match=r"x\.pkl") as e:
        safe_load.load_plain_pickle(f)
    assert "refused" in str(e.value) or "not a readable pickle" in str(e.value)
    assert not (tmp_path / "m").exists()


def test_plain_pickle_reads_plain_values(tmp_path):
    f = tmp_path / "x.pkl"
    value = {"imlist": ["a", "b"], "gnd": [{"bbx": [1.5, 2.0, 3, 4], "easy": [0, 1]}],
             "flags": (True, False, None), "raw": b"\xff\x00", "set": {1, 2}}
    f.write_bytes(pickle.dumps(value, protocol=4))
    assert safe_load.load_plain_pickle(f) == value
