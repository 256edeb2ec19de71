"""What a training run reads and reports: the image sets, the per-epoch evaluation, TensorBoard."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from embeval.data.store import EmbeddingSet
from embeval.errors import EmbevalError, InputFileError, OptionError
from embeval.evaluation import evaluate
from embeval.extract import ExtractOptions, embed_images
from embeval.extract.images import ImageList, Preprocessing, list_image_sets, list_images
from embeval.extract.models import LoadedModel
from embeval.train.config import TrainConfig
from embeval.train.model import TrainModel

__all__ = ["TrainData", "load_train_data", "evaluate_epoch", "summary_writer_class", "log_tensorboard"]


@dataclass
class TrainData:
    train: ImageList
    labels: torch.Tensor  # [N] class index 0..C-1 of each training image
    classes: list[str]
    query: ImageList
    gallery: ImageList


def load_train_data(c: TrainConfig) -> TrainData:
    """The three image sets; training labels become class indices 0..C-1 (unknown < 0 dropped)."""
    for key in ("train", "query", "gallery"):
        if getattr(c, key) is None:
            raise OptionError(f"{key}: not given (a folder or CSV of the {key} images, or "
                              f"{key!r} in the config file)", param=key)
    try:
        train = list_images(c.train, layout=c.layout, label_regex=c.label_regex)  # type: ignore[arg-type]
        query, gallery = list_image_sets([c.query, c.gallery], layout=c.layout,  # type: ignore[list-item]
                                         label_regex=c.label_regex)
    except OSError as e:  # an unreadable folder
        raise InputFileError(e.filename or c.train, f"cannot read ({e.strerror or e})") from None
    known = [i for i, y in enumerate(train.labels) if y >= 0]
    raw = torch.tensor([train.labels[i] for i in known], dtype=torch.int64)
    values, labels = torch.unique(raw, return_inverse=True)
    names = train.label_names
    classes = [names[v] if names else str(v) for v in values.tolist()]
    if len(classes) < 2:
        raise InputFileError(train.source, f"training needs at least 2 classes, found {len(classes)}")
    train = ImageList(train.source, [train.files[i] for i in known], [train.names[i] for i in known],
                      [train.labels[i] for i in known])
    bad = [k for k in c.ks if k > len(gallery)]
    if bad:
        raise OptionError(f"ks {bad[0]}: larger than the gallery ({len(gallery)} images)",
                          param="ks")
    return TrainData(train, labels, classes, query, gallery)


def evaluate_epoch(c: TrainConfig, model: TrainModel, data: TrainData, prep: Preprocessing,
              device: torch.device, keep_sample: bool) -> tuple[dict[str, Any], Any]:
    """Embed query and gallery with a copy of the embedder, evaluate like ``cmc``."""
    net = copy.deepcopy(model.embedder).eval()
    loaded = LoadedModel(net, prep, "training", fingerprint="")
    opts = ExtractOptions(prep, device=device, batch_size=c.eval_batch_size,
                          workers=c.workers if c.workers is not None else None,
                          precision=c.precision)
    with torch.random.fork_rng(devices=[]):  # evaluation never moves the training RNGs
        sets = []
        for images in (data.query, data.gallery):
            ext = embed_images(loaded, images, opts)
            kept = ext.kept.tolist()
            cams = None if images.cameras is None else [images.cameras[i] for i in kept]
            sets.append(EmbeddingSet(ext.embeddings, [images.labels[i] for i in kept], cams,
                                     name=str(images.source)))
        try:
            res = evaluate(sets[0], sets[1], metric=c.metric, ks=c.ks,
                           exclude_same_camera=c.exclude_same_camera, aggregate=c.aggregate,
                           no_positive=c.no_positive, device=str(device))
        except InputFileError as e:  # NaN / Inf embeddings
            raise diverged(f"training diverged: {e.problem}") from None
    keys = [f"rank{k}" for k in c.ks] + ["mAP", "mINP", "accuracy"]
    metrics: dict[str, Any] = {k: _finite(res.metrics[k]) for k in keys}
    metrics.update({f"top{k}_accuracy": res.metrics[f"top{k}_accuracy"] for k in c.ks})
    metrics.update({"n_query": res.n_query, "n_gallery": res.n_gallery, "n_valid": res.n_valid})
    return metrics, (sets[1] if keep_sample else None)


def diverged(what: str) -> EmbevalError:
    """``what; lower lr or set grad_clip``, naming those two parameters."""
    e = EmbevalError(f"{what}; lower lr or set grad_clip")
    e.params = ("lr", "grad_clip")
    return e


def _finite(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OptionError("tensorboard needs the tensorboard package: "
                          "pip install 'embeval[tensorboard]'", param="tensorboard") from None
    return SummaryWriter


def log_tensorboard(writer: Any, record: dict[str, Any], gallery: EmbeddingSet | None,
                     data: TrainData, epoch: int, samples: int) -> None:
    for key, value in record.items():
        if isinstance(value, float) and key not in ("seconds",):
            writer.add_scalar(("train/" if key.startswith("train_") or key == "lr" else "eval/") + key,
                              value, epoch)
    if gallery is not None and samples > 0:
        n = gallery.n
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:samples].sort().values
        names = data.gallery.label_names
        labels = [names[i] if names and 0 <= i < len(names) else str(i)
                  for i in gallery.labels[pick].tolist()]
        writer.add_embedding(gallery.embeddings[pick], metadata=labels, global_step=epoch,
                             tag="gallery")
    writer.flush()
