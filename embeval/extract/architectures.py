"""The networks ``extract`` / ``train`` build: the built-in backbone (:class:`SmallNet`),
a ``package.module:callable`` backbone with an embedding neck (:class:`NeckNet`), the
architecture registry (:data:`BACKBONES`, :func:`build_backbone`) and the module surgery that
both loading and the neck use (importing a factory, cutting a layer or classifier head).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from embeval.errors import OptionError
from embeval.extract.images import Preprocessing

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "NECK_BACKBONE", "BUILTIN_PREPROCESSING", "HEAD_NAMES",
           "SmallNet", "NeckNet", "LayerOutput", "build_backbone"]

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

def _few(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."
