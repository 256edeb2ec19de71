"""The one safe loader: the only module of embeval that calls ``torch.load``,
``torch.export.load`` or ``torch.jit.load`` (ruff's TID251 bans them elsewhere).

Hostile files are normal input: nothing here may reach a full unpickler, load native
code or evaluate Python source taken from a file.

- :func:`load_tensors`: ``torch.load(map_location="cpu", weights_only=True)``: tensors,
  containers and plain Python values only.
- :func:`load_exported`: a ``torch.export`` ``.pt2`` archive. torch's own loader reaches
  ``torch.load(weights_only=False)`` (pickled weights / constants, and the *fallback* for
  ``data/sample_inputs/*.pt``), ``torch._C._pickle_load_obj`` (custom-object constants),
  ``pickle.loads`` (opaque-object constants), ``AOTIModelPackageLoader`` (a compiled shared
  library under ``data/aotinductor/``), ``sympy.sympify`` = ``eval`` of the graph's
  ``expr_str`` strings, and ``exec`` of the graph's ``guards_code`` and of code generated
  from its names. So the archive is read once into memory, every part torch would read is
  checked first (refused with one :class:`InputFileError` line saying what and why), and
  only then loaded from those same bytes, with every ``torch.load`` inside forced to
  weights-only; the loaded graph must call aten operators only.
- :func:`load_torchscript`: ``torch.jit.load(map_location="cpu")``, whose C++ unpickler
  only builds TorchScript types (tensors, containers, TorchScript classes) and whose code
  is TorchScript (registered operators), never Python.
- :func:`load_plain_pickle`: a benchmark's pickle (insightface ``.bin``, revisitop
  ``gnd_*.pkl``) read by an unpickler that resolves no global at all (plain values only:
  None, bools, numbers, str, bytes, lists, tuples, dicts, sets), or, with ``numpy_arrays``,
  a closed allowlist of numpy's array and scalar reconstruction; persistent ids refused.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import io
import json
import logging
import math
import operator
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embeval.errors import InputFileError

__all__ = ["load_tensors", "load_exported", "load_torchscript", "load_plain_pickle"]

_FORCE_WO = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WO = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


# ------------------------------------------------------------------ plain tensors


def load_tensors(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; any failure -> InputFileError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    return _weights_only(data, p, "")


def _weights_only(data: bytes, path: Path, what: str) -> Any:
    """Unpickle ``data`` (a ``torch.save`` file) weights-only, quietly; ``what`` names the member."""
    try:
        with _quiet():
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure means "not plain tensors"
        raise InputFileError(path, f"{what}not plain tensors (torch.load with weights_only=True "
                                   f"failed: {_reason(e)})") from None


def _reason(e: BaseException) -> str:
    """The useful part of a (weights-only) load error, on one short line."""
    text = " ".join(str(e).split())
    m = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    text = (m.group(1) if m else text).split(" Please ")[0].strip() or type(e).__name__
    if re.fullmatch(r"Unsupported operand \d+", text):
        text += " (a plain pickle, not a torch.save file)"
    return text if len(text) <= 160 else text[:157] + "..."


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings, no log records (torch logs tracebacks) while loading: errors are raised.

    Process-global state (warning filters, ``logging.disable``), restored on exit: like the
    rest of embeval's loading, not meant to run in several threads at once.
    """
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(previous)


@contextlib.contextmanager
def _every_load_weights_only() -> Iterator[None]:
    """Force weights-only on every ``torch.load`` inside (torch reads the variable at call
    time, and it overrides an explicit ``weights_only=False``: torch/serialization.py).

    The environment is process-global: set and restored around one load, not thread-safe
    (embeval loads models from one thread).
    """
    saved = {k: os.environ.get(k) for k in (_FORCE_WO, _FORCE_NO_WO)}
    os.environ[_FORCE_WO] = "1"
    os.environ.pop(_FORCE_NO_WO, None)  # both set makes torch.load raise
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------ TorchScript


def load_torchscript(path: str | os.PathLike[str]) -> nn.Module:
    """``torch.jit.load(path, map_location="cpu")`` -> ScriptModule (raises InputFileError).

    TorchScript archives are read by torch's C++ unpickler, which only reconstructs
    TorchScript types (tensors, containers, TorchScript classes and modules), and their
    code is TorchScript compiled by torch: it calls registered operators, never Python.
    """
    p = Path(path)
    try:
        with _quiet(), _every_load_weights_only():
            return torch.jit.load(str(p), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - a corrupt archive is a bad input file
        raise InputFileError(p, f"cannot load TorchScript model ({_reason(e)})") from None


# ------------------------------------------------------------------ torch.export


#: members torch would turn into native code, or read with another unpickler
_REFUSED_DIRS = {"data/aotinductor/": "an AOTInductor compiled model (native code)",
                 "data/executorch/": "an ExecuTorch program", "data/mtia": "an MTIA program",
                 "xl_model_weights/": "externally stored weights"}
_NATIVE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".o", ".cubin", ".ptx")
#: allowed characters of every name, target and version string of a program's JSON
_PLAIN = re.compile(r"[\w.+\-]*")
#: allowed characters of string arguments (no quote, backslash or newline)
_STRING_ARG = re.compile(r"[\w .,:;+\-*/<>=()\[\]{}|&^%#@!?~$]*")
_NO_CHECK_KEYS = {"metadata"}  # free text kept as such (stack traces, module paths), never run


def load_exported(path: str | os.PathLike[str]) -> tuple[nn.Module, tuple[Any, ...] | None]:
    """A ``torch.export`` ``.pt2`` -> (eval-mode module, example positional inputs or None).

    Raises :class:`InputFileError` (one line: what was refused and why) for an archive
    holding compiled code, custom / opaque / pickled non-tensor objects, Python-like
    expressions or names, or operators other than aten ones.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    _check_archive(data, p)
    try:
        with _quiet(), _every_load_weights_only():
            program = torch.export.load(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - a corrupt archive is a bad input file
        raise InputFileError(p, f"cannot load model ({_reason(e)})") from None
    _check_graph(program, p)
    try:
        with _quiet(), _every_load_weights_only():
            module = program.module()
    except Exception as e:  # noqa: BLE001
        raise InputFileError(p, f"cannot load model ({_reason(e)})") from None
    example = program.example_inputs
    return module, (tuple(example[0]) if example is not None else None)


def _check_archive(data: bytes, path: Path) -> None:
    """Refuse any part of a .pt2 that torch would load with more than the tensor unpickler."""
    names = _archive_names(data, path)
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        if reader.get_record("archive_format") != b"pt2":
            raise InputFileError(path, "not a torch.export archive (archive_format is not 'pt2')")
    except RuntimeError:
        raise InputFileError(path, "refused: not a torch.export archive of torch 2.8 or later "
                                   "(no archive_format; re-save it with torch.export.save)") from None
    for name in names:
        for prefix, what in _REFUSED_DIRS.items():
            if name.startswith(prefix):
                raise InputFileError(path, f"refused: holds {what} ({name}); embeval loads "
                                           "exported programs only")
        if name.lower().endswith(_NATIVE_SUFFIXES):
            raise InputFileError(path, f"refused: holds a compiled library ({name})")
    models = [n[len("models/"):-len(".json")] for n in names
              if n.startswith("models/") and n.endswith(".json")]
    if not models:
        raise InputFileError(path, "not a torch.export archive (no models/*.json)")
    for m in models:
        for legacy in (f"data/weights/{m}.pt", f"data/constants/{m}.pt"):
            if legacy in names:
                raise InputFileError(path, f"refused: {legacy} is a pickle of the old .pt2 "
                                           "format; re-save the model with torch.export.save")
        _check_payloads(reader, path, names, m, "weights")
        _check_payloads(reader, path, names, m, "constants")
        sample = f"data/sample_inputs/{m}.pt"
        if sample in names and reader.get_record(sample):
            _weights_only(reader.get_record(sample), path, f"refused {sample}: ")
        _check_program_json(_json(reader, path, f"models/{m}.json"), path, f"models/{m}.json")


def _archive_names(data: bytes, path: Path) -> set[str]:
    """Member names below the one root folder; refuse a zip that parsers could read differently."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            listed = z.namelist()
    except zipfile.BadZipFile:
        raise InputFileError(path, "not a torch.export archive (not a zip file)") from None
    root = listed[0].split("/", 1)[0] + "/" if listed else ""
    names = {n[len(root):] for n in listed}
    if not root or len(names) != len(listed) or not all(n.startswith(root) for n in listed):
        raise InputFileError(path, "refused: zip members must be unique and below one folder")
    try:
        torch_names = set(torch._C.PyTorchFileReader(io.BytesIO(data)).get_all_records())
    except RuntimeError as e:
        raise InputFileError(path, f"not a readable torch archive ({_reason(e)})") from None
    if torch_names != names:
        raise InputFileError(path, "refused: torch and Python list different zip members")
    return names


def _json(reader: Any, path: Path, name: str) -> Any:
    try:
        return json.loads(reader.get_record(name))
    except (RuntimeError, ValueError) as e:
        raise InputFileError(path, f"{name}: not valid JSON ({_reason(e)})") from None


def _check_payloads(reader: Any, path: Path, names: set[str], model: str, kind: str) -> None:
    """Weights / constants: raw tensors; a pickled one must be a tensor loadable weights-only."""
    config = f"data/{kind}/{model}_{kind}_config.json"
    if config not in names:
        return  # torch refuses the archive itself
    entries = _json(reader, path, config).get("config", {})
    prefix = "weight_" if kind == "weights" else "tensor_"
    for fqn, meta in entries.items():
        name = str(meta.get("path_name", ""))
        if not name.startswith(prefix) or not _PLAIN.fullmatch(name):
            what = ("a custom (TorchScript) object" if name.startswith("custom_obj_") else
                    "an opaque Python object" if name.startswith("opaque_obj_") else repr(name))
            raise InputFileError(path, f"refused: {kind} entry {fqn!r} is {what}, which torch "
                                       "would unpickle; embeval loads tensors only")
        if meta.get("use_pickle"):
            member = f"data/{kind}/{name}"
            obj = _weights_only(reader.get_record(member), path, f"refused pickled {member}: ")
            if not isinstance(obj, torch.Tensor):
                raise InputFileError(path, f"refused: {member} holds a {type(obj).__name__}, "
                                           "not a tensor")


def _check_program_json(tree: Any, path: Path, where: str) -> None:
    """Every string of a program that torch could run as code must be plain.

    ``expr_str`` (given to ``sympy.sympify``, i.e. ``eval``) and ``guards_code`` (``exec``) must
    be arithmetic over symbols; names, targets and treespecs plain characters; string
    arguments free of quotes. Node ``metadata`` is free text and is not run.
    """
    def refuse(value: str, why: str) -> None:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise InputFileError(path, f"refused: {where} holds {shown!r}, {why}")

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not _PLAIN.fullmatch(k):
                    refuse(k, "not a plain name")
                if k not in _NO_CHECK_KEYS:
                    walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str):
            if key == "expr_str":
                if not _check_expr(node, sympy_expr=True):
                    refuse(node, "not a symbolic size expression")
            elif key == "guards_code":
                if not _check_expr(node, sympy_expr=False):
                    refuse(node, "not a guard on input sizes")
            elif key in ("in_spec", "out_spec", "context"):
                walk(_loads_or_none(node), key)
            elif key in ("as_string", "as_strings"):
                if not _STRING_ARG.fullmatch(node):
                    refuse(node, "a string argument with quotes")
            elif not _PLAIN.fullmatch(node):
                refuse(node, "not a plain name")

    walk(tree, "")


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text if _PLAIN.fullmatch(text) else ["\0"]  # "\0" is refused by the walk


#: sympy constructors an ``expr_str`` may call; none evaluates a string
_SYMPY_BASIC = frozenset({"Symbol", "Integer", "Float", "Max", "Min", "Eq", "Ne", "Lt", "Le",
                          "Gt", "Ge", "And", "Or", "Not", "Abs", "floor", "ceiling", "Mod",
                          "Mul", "Add", "Pow", "oo", "zoo", "nan", "true", "false",
                          "IntInfinity", "NegativeIntInfinity"})


@functools.cache
def _sympy_calls() -> frozenset[str]:
    """:data:`_SYMPY_BASIC` and torch's sympy function classes (imported on first use: sympy
    takes 0.3 s to import, and only .pt2 files need it)."""
    import torch.utils._sympy.functions as symfn
    return _SYMPY_BASIC | {n for n in dir(symfn) if not n.startswith("_")
                           and isinstance(getattr(symfn, n), type)}
_SYMPY_FLAGS = frozenset({"positive", "negative", "integer", "real", "finite", "nonnegative",
                          "nonpositive", "zero", "nonzero", "evaluate"})
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd,
        ast.BitOr, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt,
        ast.LtE, ast.Gt, ast.GtE)
_SIZE_METHODS = frozenset({"size", "stride", "storage_offset", "dim"})


def _check_expr(text: str, *, sympy_expr: bool) -> bool:
    """True if ``text`` is arithmetic / comparisons over symbols: no attribute, subscript or
    call except sympy constructors (``sympy_expr``) or ``L[...].size()[i]`` (a guard)."""
    if len(text) > 2000 or "__" in text:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    return all(_allowed(n, sympy_expr) for n in ast.walk(tree))


def _allowed(n: ast.AST, sympy_expr: bool) -> bool:
    if isinstance(n, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                      ast.Load, *_OPS)):
        return True
    if isinstance(n, ast.Constant):
        return isinstance(n.value, (int, float, bool)) or (
            isinstance(n.value, str) and re.fullmatch(r"[A-Za-z_]\w*", n.value) is not None)
    if isinstance(n, ast.Name):
        return re.fullmatch(r"[A-Za-z]\w*", n.id) is not None
    if sympy_expr:
        if isinstance(n, ast.keyword):
            return n.arg in _SYMPY_FLAGS and isinstance(n.value, ast.Constant)
        return (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id in _sympy_calls())
    if isinstance(n, ast.Subscript):  # L['x'], L['x'].size()[0]
        return isinstance(n.slice, ast.Constant)
    if isinstance(n, ast.Attribute):
        return n.attr in _SIZE_METHODS or (isinstance(n.value, ast.Name) and n.value.id == "math"
                                           and n.attr in ("inf", "isnan"))
    if isinstance(n, ast.Call):
        return not n.keywords and isinstance(n.func, ast.Attribute) and (
            n.func.attr in _SIZE_METHODS and not n.args or n.func.attr == "isnan")
    return False


#: Python functions (besides aten operators) an exported graph may call
_BUILTIN_OPS = frozenset({operator.getitem, operator.add, operator.sub, operator.mul,
                          operator.truediv, operator.floordiv, operator.mod, operator.pow,
                          operator.neg, operator.abs, operator.eq, operator.ne, operator.lt,
                          operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
                          operator.not_, math.ceil, math.floor, math.trunc, round,
                          torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min,
                          torch.sym_not, torch.sym_ite, torch.sym_sqrt})


def _check_graph(program: Any, path: Path) -> None:
    """Every node of every graph calls an aten operator or a plain arithmetic builtin."""
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op not in ("placeholder", "output", "get_attr", "call_function"):
                raise InputFileError(path, f"refused: graph node {node.name!r} is a "
                                           f"{node.op}; embeval runs aten operators only")
            targets = [node.target] if node.op == "call_function" else []
            for t in targets + _callable_args(node):
                if not _allowed_target(t):
                    raise InputFileError(path, f"refused: graph node {node.name!r} calls {t}; "
                                               "embeval runs aten operators only")


def _callable_args(node: torch.fx.Node) -> list[Any]:
    """Functions passed as arguments (e.g. to a higher-order operator)."""
    found: list[Any] = []

    def visit(a: Any) -> Any:
        if callable(a) and not isinstance(a, torch.fx.Node):
            found.append(a)
        return a

    torch.fx.node.map_aggregate((node.args, node.kwargs), visit)
    return found


def _allowed_target(target: Any) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        return target.namespace == "aten"
    try:
        return target in _BUILTIN_OPS
    except TypeError:  # unhashable
        return False


# ------------------------------------------------------------------ plain pickles


#: the only globals :func:`load_plain_pickle` resolves with ``numpy_arrays`` (numpy's own
#: ``ndarray.__reduce__`` / scalar / dtype reconstruction, numpy 1.x and 2.x module names)
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that builds plain values only: every global (and so every callable a
    ``REDUCE`` / ``BUILD`` could run) is refused, except numpy's array reconstruction when
    ``numpy_arrays`` is set."""

    def __init__(self, f: io.BytesIO, numpy_arrays: bool) -> None:
        super().__init__(f, encoding="bytes")  # Python 2 str -> bytes, as insightface reads
        self._numpy = numpy_arrays

    def find_class(self, module: str, name: str) -> Any:
        if self._numpy and (module, name) in _NUMPY_GLOBALS:
            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only plain values "
                                     "are read")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id: only plain values are read")


def load_plain_pickle(path: str | os.PathLike[str], *, numpy_arrays: bool = False) -> Any:
    """A pickle of plain values, read without resolving any global (raises InputFileError).

    Python 2 ``str`` comes back as ``bytes`` (``encoding="bytes"``). With ``numpy_arrays``
    numpy arrays and scalars are rebuilt (numpy's reconstruction functions only).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    try:
        unpickler = _PlainUnpickler(io.BytesIO(data), numpy_arrays)
        obj = unpickler.load()
    except pickle.UnpicklingError as e:
        raise InputFileError(p, f"not a pickle of plain values ({_reason(e)})") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise InputFileError(p, f"not a readable pickle ({type(e).__name__}: "
                                f"{_reason(e)})") from None
    return obj
