"""Model loading for ``extract`` / ``train``: resolving MODEL (by content), weights files.

MODEL (``load_model(spec)``) is resolved in this order:

1. an existing file, by content:
   - a safetensors **embeval checkpoint** (below): architecture, weights and
     preprocessing, nothing else needed;
   - a **TorchScript** archive (``torch.jit.save``), loaded with ``torch.jit.load``;
   - a **torch.export** archive (``.pt2``): checked, then loaded with ``torch.export.load``
     (:func:`embeval.safe_load.load_exported`: no compiled code, no pickled objects, aten
     operators only);
   - a plain ``torch.save`` pickle (a state_dict) is refused with a hint: give the
     architecture as MODEL and the file as ``--weights``;
2. ``package.module:callable``: imported and called with no arguments (the current
   folder is importable); ``--weights FILE`` then loads a state_dict into it;
3. a built-in backbone name (:data:`BACKBONES`, e.g. ``embeval-small``); without
   ``--weights`` it is initialised from a fixed seed (an untrained baseline).

``--weights`` files are safetensors or ``torch.load(..., weights_only=True)``
state_dicts (a nested ``state_dict`` / ``model`` entry is unwrapped, ``module.`` /
``model.`` key prefixes are stripped). Nothing is ever unpickled beyond tensors: every
file is read through :mod:`embeval.safe_load`.

The architectures live in :mod:`embeval.extract.architectures`, the checkpoint format in
:mod:`embeval.extract.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from embeval.errors import InputFileError, OptionError
from embeval.extract.architectures import (
    BACKBONES,
    BUILTIN_PREPROCESSING,
    _call_factory,
    _cut,
    _one_line,
    build_backbone,
)
from embeval.extract.checkpoint import load_checkpoint, load_weights
from embeval.extract.images import Preprocessing
from embeval.safe_load import load_exported, load_tensors, load_torchscript

__all__ = ["LoadedModel", "load_state_dict_file", "load_model"]


@dataclass
class LoadedModel:
    """A model ready for inference and what is known about it.

    ``preprocessing`` is the model's own (from a checkpoint) or None; ``name`` goes
    into the ``model`` metadata; ``fingerprint`` identifies spec + weights files
    (path, size, mtime) so that ``--resume`` never mixes two models.
    """

    module: nn.Module
    preprocessing: Preprocessing | None
    name: str
    fingerprint: str

def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A weights file -> state_dict: safetensors, else :func:`embeval.safe_load.load_tensors`
    (``torch.load(weights_only=True)``)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "no such file" if not p.exists() else "is not a file")
    if _sniff(p) == "safetensors":
        try:
            return load_file(str(p))
        except SafetensorError as e:
            raise InputFileError(p, f"not a readable safetensors file ({_one_line(e)})") from None
    obj = load_tensors(p)
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(p, f"holds a {type(obj).__name__}, not a state_dict of tensors")
    return obj

def load_model(spec: str, *, weights: str | os.PathLike[str] | None = None,
               layer: str | None = None, head: str | None = None) -> LoadedModel:
    """Resolve MODEL (see the module docstring) into an eval-mode module.

    ``layer``: take the (flattened) output of that submodule instead of the model's
    output. ``head="identity"``: replace the classifier (``fc``, ``classifier``,
    ``head``, ``heads`` or ``last_linear``) by ``nn.Identity``.
    """
    if layer is not None and head is not None:
        raise OptionError("layer and head cannot be used together", param=("layer", "head"))
    if head is not None and head != "identity":
        raise OptionError(f"head: only 'identity' is supported, got {head!r}", param="head")
    path = Path(spec)
    prep: Preprocessing | None = None
    files = []
    if path.is_dir():
        raise InputFileError(path, "is a folder, expected a model file, package.module:callable "
                                   f"or a built-in name ({', '.join(BACKBONES)})")
    if path.is_file():
        if weights is not None:
            raise OptionError("weights goes with a module:callable or built-in MODEL; MODEL "
                              f"{spec} is a file that holds its own weights", param="weights")
        module, prep = _load_file(path)
        files.append(path)
    elif spec in BACKBONES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = build_backbone({"backbone": spec})
        prep = BUILTIN_PREPROCESSING
    elif ":" in spec and not spec.startswith(":") and "/" not in spec:
        module = _call_factory(spec)
    else:
        raise InputFileError(spec, "no such model file, not a package.module:callable and not "
                                   f"a built-in backbone ({', '.join(BACKBONES)})")
    if weights is not None:
        load_weights(module, load_state_dict_file(weights), source=weights)
        files.append(Path(weights))
    if layer is not None or head is not None:
        module = _cut(module, spec, layer=layer)
    try:
        module.eval()
    except NotImplementedError:  # torch.export modules are exported in eval mode already
        pass
    name = spec if weights is None else f"{spec} (weights {weights})"
    return LoadedModel(module, prep, name, _fingerprint(spec, files, layer, head))


def _load_file(path: Path) -> tuple[nn.Module, Preprocessing | None]:
    kind = _sniff(path)
    if kind == "safetensors":
        return load_checkpoint(path)
    if kind == "export":
        module, example = load_exported(path)
        return module, _export_preprocessing(example)
    if kind == "torchscript":
        return load_torchscript(path), None
    if kind == "pickle":
        raise InputFileError(path, "is a torch.save pickle, not a model: give the architecture "
                                   "as MODEL (package.module:callable or a built-in name) and "
                                   "this file as weights", param="weights")
    raise InputFileError(path, "not a model file (expected an embeval checkpoint .safetensors, "
                               "a TorchScript archive or a torch.export .pt2)")


_EXPORT_MODEL = re.compile(r"[^/]+/models/[^/]+\.json")


def _sniff(path: Path) -> str:
    """``safetensors`` | ``export`` | ``torchscript`` | ``pickle`` | ``unknown`` by content."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if len(head) == 9 and head[8:9] == b"{" and head[:2] != b"PK":
            return "safetensors"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            # by the archive's top-level layout: <root>/archive_format, <root>/models/<m>.json
            # (torch.export); <root>/code/..., <root>/constants.pkl (TorchScript, whose code/
            # folder mirrors the model's Python package: it may well hold a "models/" folder)
            top = {n.split("/", 2)[1] if n.count("/") >= 1 else "" for n in names}
            if "archive_format" in top or any(_EXPORT_MODEL.fullmatch(n) for n in names):
                return "export"
            if "code" in top or "constants.pkl" in top:
                return "torchscript"
            if any(n.endswith("/data.pkl") for n in names):
                return "pickle"
    except OSError as e:
        raise InputFileError(path, f"cannot read ({e.strerror or e})") from None
    except zipfile.BadZipFile:
        return "unknown"
    return "unknown"


def _export_preprocessing(example: tuple[Any, ...] | None) -> Preprocessing | None:
    """Input size from a torch.export archive's example input [B, 3, H, W], if recorded."""
    x = example[0] if example else None
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3:
        return Preprocessing(size=(int(x.shape[2]), int(x.shape[3])))
    return None

def _fingerprint(spec: str, files: list[Path], layer: str | None, head: str | None) -> str:
    parts: list[Any] = [spec, layer, head]
    for f in files:
        st = f.stat()
        parts.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()
