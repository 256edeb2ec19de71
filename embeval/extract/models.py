"""Model loading for ``extract`` / ``train``, the built-in backbone and the checkpoint format.

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

Checkpoint format (version 1, written by :func:`save_checkpoint`): a safetensors
file of the model's ``state_dict`` (CPU tensors) whose metadata holds

==================== =====================================================================
embeval.checkpoint   ``"1"``
architecture         JSON: ``{"backbone": "embeval-small", "embedding_dim": 128, ...}``:
                     the name in :data:`BACKBONES` plus its constructor keyword arguments
preprocessing        JSON: ``{"size": [H, W], "crop": null | [H, W], "mean": [3], "std": [3],
                     "interpolation": "bilinear"}`` (:meth:`Preprocessing.to_dict`)
(anything else)      free-form strings from ``extra_metadata`` (epoch, metrics, ...)
==================== =====================================================================

A model's ``forward`` returns the embedding [B, D]; a classifier head that
training adds (``classifier.*`` weights) is kept in the checkpoint but not used.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from embeval.data.safetensors_io import write_safetensors
from embeval.errors import InputFileError, OptionError
from embeval.extract.images import Preprocessing
from embeval.outputs import atomic_path
from embeval.safe_load import load_exported, load_tensors, load_torchscript

__all__ = [
    "BACKBONES", "DEFAULT_BACKBONE", "CHECKPOINT_VERSION", "NECK_BACKBONE", "SmallNet", "NeckNet",
    "LoadedModel",
    "Checkpoint", "build_backbone", "save_checkpoint", "read_checkpoint", "load_checkpoint",
    "load_state_dict_file", "load_weights", "load_model",
]

CHECKPOINT_VERSION = "1"
DEFAULT_BACKBONE = "embeval-small"
HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear")


class SmallNet(nn.Module):
    """A small CNN: conv-BN-ReLU stem, stages that halve the resolution, GAP, linear + BN.

    ``forward(x [B, 3, H, W]) -> [B, embedding_dim]``; ``classifier`` ([C, D] linear,
    present when ``num_classes > 0``) maps embeddings to logits for training only.
    ~1.2 M parameters at the defaults; any input size >= 8 px works.
    """

    def __init__(self, embedding_dim: int = 128, widths: tuple[int, ...] = (32, 64, 128, 256),
                 num_classes: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn_relu(3, widths[0], stride=1)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [*_conv_bn_relu(c_in, c_out, stride=2), *_conv_bn_relu(c_out, c_out, 1)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Linear(widths[-1], embedding_dim)
        self.neck = nn.BatchNorm1d(embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.embedding(torch.flatten(self.pool(self.features(x)), 1)))


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class NeckNet(nn.Module):
    """Any ``package.module:callable`` backbone + an embedding neck (linear + BN).

    ``forward(x) -> [B, embedding_dim]``: the backbone's (flattened) output, with its
    classifier replaced by identity when ``head="identity"``, through ``embedding``
    ([feature_dim -> embedding_dim] linear) and ``neck`` (BatchNorm1d). A checkpoint
    of it stores ``{"backbone": "embeval-neck", "base": "pkg.mod:fn", ...}``; reading
    it back imports and calls the factory again (it must be importable then too).
    """

    def __init__(self, base: str, feature_dim: int, embedding_dim: int = 128,
                 head: str = "identity", module: nn.Module | None = None) -> None:
        super().__init__()
        if head not in ("identity", "keep"):
            raise ValueError(f"head must be 'identity' or 'keep', got {head!r}")
        backbone = module if module is not None else _call_factory(base)
        if head == "identity":
            backbone = _cut(backbone, base, layer=None)
        self.backbone = backbone
        self.embedding = nn.Linear(feature_dim, embedding_dim)
        self.neck = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return self.neck(self.embedding(torch.flatten(out, 1)))


BACKBONES: dict[str, Callable[..., nn.Module]] = {"embeval-small": SmallNet}
#: architecture name of a ``module:callable`` backbone wrapped by :class:`NeckNet`
NECK_BACKBONE = "embeval-neck"
#: preprocessing of a built-in backbone used without a checkpoint
BUILTIN_PREPROCESSING = Preprocessing(size=(64, 64))


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


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    metadata: dict[str, str]


def build_backbone(architecture: Mapping[str, Any]) -> nn.Module:
    """``{"backbone": name, **kwargs}`` -> an untrained module (raises ValueError if unknown).

    ``name`` is a key of :data:`BACKBONES` or :data:`NECK_BACKBONE` (a wrapped
    ``module:callable``, see :class:`NeckNet`).
    """
    kwargs = dict(architecture)
    name = kwargs.pop("backbone", None)
    if name == NECK_BACKBONE:
        try:
            return NeckNet(**kwargs)
        except TypeError as e:
            raise ValueError(f"bad architecture for {name!r}: {e}") from None
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    try:
        return BACKBONES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad architecture for {name!r}: {e}") from None


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *,
                    architecture: Mapping[str, Any],
                    preprocessing: Preprocessing | Mapping[str, Any],
                    extra_metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights + architecture + preprocessing as a checkpoint, atomically.

    ``architecture`` must rebuild ``model`` through :func:`build_backbone` (checked
    here). DataParallel / DDP / ``torch.compile`` wrappers are unwrapped.
    """
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            break
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if architecture.get("backbone") == NECK_BACKBONE:  # do not call the factory again
        if not isinstance(model, NeckNet):
            raise ValueError(f"architecture {NECK_BACKBONE!r} needs a NeckNet model")
        expected = state
    else:
        expected = build_backbone(architecture).state_dict()
    if set(expected) != set(state):
        raise ValueError(f"architecture {dict(architecture)} does not describe this model "
                         f"(keys differ: {sorted(set(expected) ^ set(state))[:5]})")
    prep = preprocessing.to_dict() if isinstance(preprocessing, Preprocessing) else preprocessing
    Preprocessing.from_dict(dict(prep))  # validate
    meta = {k: str(v) for k, v in (extra_metadata or {}).items()}
    meta.update({"embeval.checkpoint": CHECKPOINT_VERSION,
                 "architecture": json.dumps(dict(architecture), sort_keys=True),
                 "preprocessing": json.dumps(dict(prep), sort_keys=True)})
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, state, meta)
    return p


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate a checkpoint file (raises :class:`InputFileError`)."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if "embeval.checkpoint" not in meta:
                raise InputFileError(p, "is a safetensors file but not an embeval checkpoint (no "
                                        "'embeval.checkpoint' metadata); for a bare state dict give "
                                        "the architecture as MODEL and this file as weights",
                                 param="weights")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise InputFileError(p, f"not a readable safetensors file ({_one_line(e)})") from None
    version = meta["embeval.checkpoint"]
    if version != CHECKPOINT_VERSION:
        raise InputFileError(p, f"checkpoint format {version!r} is not supported "
                                f"(this embeval reads {CHECKPOINT_VERSION!r})")
    parsed = []
    for key in ("architecture", "preprocessing"):
        try:
            value = json.loads(meta[key])
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except KeyError:
            raise InputFileError(p, f"checkpoint metadata has no {key!r}") from None
        except ValueError as e:
            raise InputFileError(p, f"checkpoint metadata {key!r} is not valid JSON ({e})") from None
        parsed.append(value)
    return Checkpoint(state, parsed[0], parsed[1], meta)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, Preprocessing]:
    """A checkpoint -> (model with its weights, in eval mode; its preprocessing)."""
    ckpt = read_checkpoint(path)
    try:
        model = build_backbone(ckpt.architecture)
        prep = Preprocessing.from_dict(ckpt.preprocessing)
    except (ValueError, TypeError) as e:
        raise InputFileError(path, f"checkpoint metadata: {e}") from None
    load_weights(model, ckpt.state_dict, source=path)
    return model.eval(), prep


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


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                 source: str | os.PathLike[str]) -> None:
    """Load ``state_dict`` into ``model`` strictly, after stripping ``module.``/``model.``.

    Raises :class:`InputFileError` naming ``source`` and listing missing / unexpected
    keys and shape mismatches.
    """
    expected = model.state_dict()
    sd = {_match_key(k, expected): v for k, v in state_dict.items()}
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {list(sd[k].shape)} (model {list(expected[k].shape)})"
              for k in expected if k in sd and sd[k].shape != expected[k].shape]
    problems = [f"{what}: {_few(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatch", shapes)) if keys]
    if problems:
        raise InputFileError(source, "weights do not match the model; " + "; ".join(problems))
    model.load_state_dict(sd, strict=False)


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


def _call_factory(spec: str) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise OptionError(f"MODEL {spec}: cannot import {mod_name!r} ({_one_line(e)})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise OptionError(f"MODEL {spec}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise OptionError(f"MODEL {spec}: {attr!r} is not callable")
        try:
            obj = obj()
        except Exception as e:  # noqa: BLE001 - the user's factory failed
            raise OptionError(f"MODEL {spec}: calling it failed ({type(e).__name__}: "
                              f"{_one_line(e)})") from None
    if not isinstance(obj, nn.Module):
        raise OptionError(f"MODEL {spec}: returned a {type(obj).__name__}, not a torch.nn.Module")
    return obj


class _Stop(Exception):
    """Raised by the layer hook to skip the rest of the forward pass."""


class LayerOutput(nn.Module):
    """``forward(x)`` = the output of ``model.get_submodule(layer)``, flattened to [B, D]."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self._out: Any = None
        model.get_submodule(layer).register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, out: Any) -> None:
        self._out = out
        raise _Stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._out = None
        try:
            self.model(x)
        except _Stop:
            pass
        out, self._out = self._out, None
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise OptionError(f"layer {self.layer}: the layer did not run or gave no tensor",
                              param="layer")
        return torch.flatten(out, 1)


def _cut(module: nn.Module, spec: str, *, layer: str | None) -> nn.Module:
    if isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        raise OptionError(f"layer/head need a Python model (checkpoint, built-in or "
                          f"module:callable); {spec} is a compiled archive",
                          param=("layer", "head"))
    if layer is not None:
        try:
            module.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in module.named_children()]
            raise OptionError(f"layer: {spec} has no submodule {layer!r} (top level: "
                              f"{_few(names)})", param="layer") from None
        return LayerOutput(module, layer)
    if isinstance(module, SmallNet):  # forward already returns the embedding
        return module
    for name in HEAD_NAMES:
        if isinstance(getattr(module, name, None), nn.Module):
            setattr(module, name, nn.Identity())
            return module
    raise OptionError(f"head identity: {spec} has no {', '.join(HEAD_NAMES)} attribute; "
                      "use layer NAME", param=("head", "layer"))


def _match_key(key: str, expected: Mapping[str, Any]) -> str:
    k = key
    while k not in expected and k.startswith(("module.", "model.")):
        k = k.split(".", 1)[1]
    return k if k in expected else key


def _fingerprint(spec: str, files: list[Path], layer: str | None, head: str | None) -> str:
    parts: list[Any] = [spec, layer, head]
    for f in files:
        st = f.stat()
        parts.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _few(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."
