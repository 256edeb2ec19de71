"""The embeval checkpoint format and loading weights into a model.

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

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from embeval.data.safetensors_io import write_safetensors
from embeval.errors import InputFileError
from embeval.extract.architectures import NECK_BACKBONE, NeckNet, _few, _one_line, build_backbone
from embeval.extract.images import Preprocessing
from embeval.outputs import atomic_path

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "save_checkpoint", "read_checkpoint",
           "load_checkpoint", "load_weights"]

CHECKPOINT_VERSION = "1"


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    metadata: dict[str, str]

def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *,
                    architecture: Mapping[str, Any],
                    preprocessing: Preprocessing | Mapping[str, Any],
                    extra_metadata: Mapping[str, Any] | None = None, member: bool = False) -> Path:
    """Write ``model``'s weights + architecture + preprocessing as a checkpoint, atomically.

    ``member``: ``path`` is a name embeval chose in an output folder (a regular file or nothing,
    :func:`embeval.outputs.check_members`).

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
    with atomic_path(p, member=member) as tmp, open(tmp, "wb") as f:
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

def _match_key(key: str, expected: Mapping[str, Any]) -> str:
    k = key
    while k not in expected and k.startswith(("module.", "model.")):
        k = k.split(".", 1)[1]
    return k if k in expected else key
