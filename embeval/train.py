"""The training engine behind ``embeval train`` (no CLI, no printing: a progress callback).

Model: backbone + embedding neck (linear + BN) = the *embedding network* saved in
checkpoints (``forward(x) -> [B, D]``), plus a classifier over the training classes
(softmax or cosine) used only for the loss: cross-entropy with label smoothing, plus
an optional batch-hard triplet loss over P x K identity-sampled batches.

Every epoch: train, then embed the query and gallery sets with the embedding network
and evaluate them with :func:`embeval.evaluate` (the numbers of ``embeval cmc``);
append the record to ``RUN/metrics.jsonl``, write ``last.safetensors`` (and
``best.safetensors`` when ``best_metric`` improved) and ``state.pt``.

Reproducibility: one seed sets torch / numpy / Python RNGs and two private
generators (batch order, augmentation). The batch order of an epoch is drawn from
the order generator's state at the epoch's start, so a run stopped after any step
(``should_stop``) and resumed replays the same batches, and on CPU ends with
bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from . import train_state as S
from .errors import EmbevalError, InputFileError, OptionError
from .evaluate import evaluate
from .extract import ExtractOptions, embed_images
from .images import ImageDataset, ImageList, Preprocessing, list_image_sets, list_images
from .losses import batch_hard_triplet, make_classifier, pk_batches, random_batches
from .models import BACKBONES, NECK_BACKBONE, LoadedModel, NeckNet, _call_factory, _cut, save_checkpoint
from .similarity import resolve_device
from .store import EmbeddingSet
from .train_config import TrainConfig, save_config

__all__ = ["TrainConfig", "TrainResult", "TrainInterrupted", "TrainModel", "build_model", "train"]

Progress = Callable[[dict[str, Any]], None]


class TrainInterrupted(EmbevalError):
    """Training stopped on request (a signal); ``state.pt`` lets ``--resume`` continue."""

    def __init__(self, reason: str, run_dir: Path, epoch: int, step: int) -> None:
        self.reason, self.run_dir, self.epoch, self.step = reason, run_dir, epoch, step
        where = f"in epoch {epoch} after step {step}" if step else f"after epoch {epoch}"
        super().__init__(f"{reason}: stopped {where}; resume with "
                         f"`embeval train --resume {run_dir}`")


@dataclass
class TrainResult:
    """The run folder, one record per finished epoch (also in metrics.jsonl), the best
    epoch ``{"metric", "value", "epoch"}`` and the trained model (final weights)."""

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    model: TrainModel | None = None


class TrainModel(nn.Module):
    """``embedder`` (backbone + neck, what checkpoints hold) and ``classifier``."""

    def __init__(self, embedder: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.embedder, self.classifier = embedder, classifier

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):  # noqa: ANN201
        emb = self.embedder(x)
        return emb, self.classifier(emb, labels)


def build_model(config: TrainConfig, num_classes: int) -> tuple[TrainModel, dict[str, Any]]:
    """A fresh model from the seed, and the architecture that rebuilds its embedder."""
    c = config
    torch.manual_seed(c.seed)
    if c.backbone in BACKBONES:
        arch: dict[str, Any] = {"backbone": c.backbone, "embedding_dim": c.embedding_dim,
                                "widths": list(c.widths)}
        embedder = BACKBONES[c.backbone](embedding_dim=c.embedding_dim, widths=tuple(c.widths))
    elif ":" in c.backbone:
        base = _call_factory(c.backbone)
        probe = _cut(copy.deepcopy(base), c.backbone, layer=None) if c.backbone_head == "identity" \
            else copy.deepcopy(base)
        h, w = c.crop or c.size
        try:
            with torch.no_grad():
                out = probe.eval()(torch.zeros(2, 3, h, w))
        except Exception as e:  # noqa: BLE001 - the user's model refused the input
            raise OptionError(f"--backbone {c.backbone}: forward of a [2, 3, {h}, {w}] batch failed "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
        out = out[0] if isinstance(out, (tuple, list)) else out
        arch = {"backbone": NECK_BACKBONE, "base": c.backbone, "head": c.backbone_head,
                "feature_dim": int(torch.flatten(out, 1).shape[1]), "embedding_dim": c.embedding_dim}
        embedder = NeckNet(**{k: v for k, v in arch.items() if k != "backbone"}, module=base)
    else:
        raise OptionError(f"--backbone: {c.backbone!r} is neither a built-in backbone "
                          f"({', '.join(BACKBONES)}) nor package.module:callable")
    head = make_classifier(c.classifier, c.embedding_dim, num_classes, scale=c.scale, margin=c.margin)
    return TrainModel(embedder, head), arch


@dataclass
class _Data:
    train: ImageList
    labels: torch.Tensor  # [N] class index 0..C-1 of each training image
    classes: list[str]
    query: ImageList
    gallery: ImageList


def _load_data(c: TrainConfig) -> _Data:
    for key in ("train", "query", "gallery"):
        if getattr(c, key) is None:
            raise OptionError(f"no {key} set: give {'TRAIN_DIR' if key == 'train' else '--' + key} "
                              f"(or {key!r} in the config file)")
    train = list_images(c.train, layout=c.layout, label_regex=c.label_regex)  # type: ignore[arg-type]
    known = [i for i, y in enumerate(train.labels) if y >= 0]
    raw = torch.tensor([train.labels[i] for i in known], dtype=torch.int64)
    values, labels = torch.unique(raw, return_inverse=True)
    names = train.label_names
    classes = [names[v] if names else str(v) for v in values.tolist()]
    if len(classes) < 2:
        raise InputFileError(train.source, f"training needs at least 2 classes, found {len(classes)}")
    train = ImageList(train.source, [train.files[i] for i in known], [train.names[i] for i in known],
                      [train.labels[i] for i in known])
    query, gallery = list_image_sets([c.query, c.gallery], layout=c.layout,  # type: ignore[list-item]
                                     label_regex=c.label_regex)
    bad = [k for k in c.ks if k > len(gallery)]
    if bad:
        raise OptionError(f"-k {bad[0]}: larger than the gallery ({len(gallery)} images)")
    return _Data(train, labels, classes, query, gallery)


def _batches(c: TrainConfig, labels: torch.Tensor, generator: torch.Generator) -> list[list[int]]:
    if c.use_pk:
        return pk_batches(labels, batch_size=c.batch_size, instances=c.instances, generator=generator)
    return random_batches(len(labels), batch_size=c.batch_size, generator=generator)


def _lr_factor(c: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    warm = round(c.warmup_epochs * steps_per_epoch)
    total = c.epochs * steps_per_epoch

    def factor(step: int) -> float:  # LR multiplier for optimizer step `step` (0-based)
        if step < warm:
            return (step + 1) / warm
        if c.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if c.schedule == "step":
            return c.gamma ** ((step // steps_per_epoch) // c.step_size)
        return 1.0

    return factor  # a plain function: LambdaLR does not store it, resume rebuilds it


def _optimizer(c: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN, biases
    groups = [{"params": decay, "weight_decay": c.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if c.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=c.lr)
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0)


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: Progress | None = None, should_stop: Callable[[], str | None] | None = None,
          ) -> TrainResult:
    """Run (or with ``resume``, continue) the training described by ``config``.

    ``progress(event)`` gets ``{"event": "epoch_start" | "step" | "eval" | "epoch", ...}``.
    ``should_stop()`` is polled after every step and epoch: a non-None reason saves a
    resumable state and raises :class:`TrainInterrupted`.
    """
    c = config
    report = progress or (lambda event: None)
    stop = should_stop or (lambda: None)
    run = Path(c.out_dir or "")
    if c.out_dir is None:
        raise OptionError("no run folder: give --out-dir RUN")
    state = S.load_state(run) if resume else None
    device = resolve_device(c.device)
    if c.precision != "fp32" and device.type != "cuda":
        raise OptionError(f"--precision {c.precision}: mixed precision needs a CUDA device "
                          f"(training on {device})")
    if c.tensorboard:
        _summary_writer_class()  # fail before any work when tensorboard is missing
    data = _load_data(c)
    if state is not None and state["classes"] != data.classes:
        raise OptionError(f"--resume {run}: the training set's classes changed since the run started")
    if not resume:
        S.check_new_run(run, overwrite=overwrite)
    writer = _summary_writer_class()(log_dir=str(run / "tensorboard")) if c.tensorboard else None
    save_config(run / "config.yaml", c)
    prep = Preprocessing(size=tuple(c.size), crop=tuple(c.crop) if c.crop else None,  # type: ignore[arg-type]
                         mean=tuple(c.mean), std=tuple(c.std))  # type: ignore[arg-type]
    model, arch = build_model(c, len(data.classes))
    model.to(device)
    order_gen, aug_gen = torch.Generator(), torch.Generator()
    order_gen.manual_seed(c.seed)
    aug_gen.manual_seed(c.seed + 1)
    steps_per_epoch = len(_batches(c, data.labels, torch.Generator().manual_seed(0)))
    optimizer = _optimizer(c, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(c, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if c.precision == "fp16" else None
    epoch, step, accum = 0, 0, _new_accum()
    best: dict[str, Any] = {"metric": c.best_metric, "value": None, "epoch": None}
    history: list[dict[str, Any]] = []
    epoch_order_state = order_gen.get_state()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, step, accum, best = state["epoch"], state["step"], state["accum"], state["best"]
        epoch_order_state = state["epoch_order_state"]
        S.restore_rng_states(state["rng"], aug=aug_gen)
        history = S.truncate_metrics(run / "metrics.jsonl", epoch)
    else:
        torch.manual_seed(c.seed)
        np.random.seed(c.seed)
        random.seed(c.seed)

    def snapshot(mid_epoch: bool) -> dict[str, Any]:
        return {"epoch": epoch, "step": step if mid_epoch else 0, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "accum": accum if mid_epoch else _new_accum(), "best": best,
                "epoch_order_state": epoch_order_state,
                "rng": S.rng_states(aug=aug_gen), "classes": data.classes,
                "steps_per_epoch": steps_per_epoch}

    dataset = ImageDataset(data.train.files, prep)
    workers = c.workers if c.workers is not None else min(4, os.cpu_count() or 1)
    autocast = (torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[c.precision])
                if c.precision != "fp32" else contextlib.nullcontext())
    while epoch < c.epochs:
        t0 = time.perf_counter()
        order_gen.set_state(epoch_order_state)
        batches = _batches(c, data.labels, order_gen)
        epoch_order_state_next = order_gen.get_state()
        report({"event": "epoch_start", "epoch": epoch + 1, "epochs": c.epochs, "steps": len(batches)})
        model.train()
        last_lr = optimizer.param_groups[0]["lr"]
        loader = DataLoader(dataset, batch_sampler=batches[step:], num_workers=min(workers, len(batches)),
                            collate_fn=ImageDataset.collate, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(c.seed))
        for index, x, errors in loader:
            if errors:
                raise InputFileError(data.train.files[errors[0][0]], errors[0][1])
            y = data.labels[index]
            if c.hflip:
                flip = torch.rand(len(x), generator=aug_gen) < 0.5
                x[flip] = x[flip].flip(3)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                emb, logits = model(x, y)
            ce = F.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
            tri = (batch_hard_triplet(emb.float(), y, margin=c.triplet_margin)
                   if c.triplet_weight > 0 else torch.zeros((), device=device))
            loss = ce + c.triplet_weight * tri
            if not torch.isfinite(loss):
                raise EmbevalError(f"training diverged: the loss is {float(loss)} in epoch {epoch + 1} "
                                   f"step {step + 1}; lower --lr or set --grad-clip")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if c.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            last_lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            _accumulate(accum, loss, ce, tri, logits.detach(), y)
            step += 1
            report({"event": "step", "epoch": epoch + 1, "step": step, "steps": len(batches),
                    "loss": accum["loss"] / accum["n"]})
            reason = stop()
            if reason is not None and step < len(batches):
                S.save_state(run / "state.pt", snapshot(mid_epoch=True))
                raise TrainInterrupted(reason, run, epoch + 1, step)
        report({"event": "eval", "epoch": epoch + 1})
        metrics, sample = _evaluate(c, model, data, prep, device, writer is not None)
        record = {"epoch": epoch + 1, "lr": last_lr,
                  **_train_metrics(accum, len(data.classes)), **metrics,
                  "seconds": round(time.perf_counter() - t0, 3)}
        value = record.get(c.best_metric)
        improved = best["value"] is None or (value is not None and value > best["value"])
        if improved:
            best = {"metric": c.best_metric, "value": value, "epoch": epoch + 1}
        record["best"] = improved
        meta = {"epoch": epoch + 1, "metrics": json.dumps(metrics), "source": str(data.train.source),
                "label_names": json.dumps(data.classes), "model": f"embeval train {run}"}
        save_checkpoint(run / "last.safetensors", model.embedder, architecture=arch,
                        preprocessing=prep, extra_metadata=meta)
        if improved:
            save_checkpoint(run / "best.safetensors", model.embedder, architecture=arch,
                            preprocessing=prep, extra_metadata=meta)
        epoch, step, accum = epoch + 1, 0, _new_accum()
        epoch_order_state = epoch_order_state_next
        S.save_state(run / "state.pt", snapshot(mid_epoch=False))
        S.append_metrics(run / "metrics.jsonl", record)
        history.append(record)
        if writer is not None:
            _log_tensorboard(writer, record, sample, data, epoch, c.projector_samples)
        report({"event": "epoch", "record": record})
        reason = stop()
        if reason is not None and epoch < c.epochs:
            raise TrainInterrupted(reason, run, epoch, 0)
    if writer is not None:
        writer.close()
    return TrainResult(run, history, best, model)


def _new_accum() -> dict[str, float]:
    return {"n": 0.0, "loss": 0.0, "ce": 0.0, "triplet": 0.0, "top1": 0.0, "top5": 0.0}


def _accumulate(a: dict[str, float], loss: torch.Tensor, ce: torch.Tensor, tri: torch.Tensor,
                logits: torch.Tensor, y: torch.Tensor) -> None:
    n = len(y)
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
    a["n"] += n
    a["loss"] += float(loss.detach()) * n
    a["ce"] += float(ce.detach()) * n
    a["triplet"] += float(tri.detach()) * n
    a["top1"] += float(top[:, 0].sum())
    a["top5"] += float(top.any(1).sum())


def _train_metrics(a: dict[str, float], num_classes: int) -> dict[str, float]:
    n = max(a["n"], 1.0)
    out = {"train_loss": a["loss"] / n, "train_ce": a["ce"] / n, "train_triplet": a["triplet"] / n,
           "train_accuracy": a["top1"] / n}
    if num_classes > 5:
        out["train_top5_accuracy"] = a["top5"] / n
    return out


def _evaluate(c: TrainConfig, model: TrainModel, data: _Data, prep: Preprocessing,
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
            raise EmbevalError(f"training diverged: {e.problem}; lower --lr or set --grad-clip") from None
    keys = [f"rank{k}" for k in c.ks] + ["mAP", "mINP", "accuracy"]
    metrics: dict[str, Any] = {k: _finite(res.metrics[k]) for k in keys}
    metrics.update({f"top{k}_accuracy": res.metrics[f"top{k}_accuracy"] for k in c.ks})
    metrics.update({"n_query": res.n_query, "n_gallery": res.n_gallery, "n_valid": res.n_valid})
    return metrics, (sets[1] if keep_sample else None)


def _finite(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OptionError("--tensorboard needs the tensorboard package: "
                          "pip install 'embeval[tensorboard]'") from None
    return SummaryWriter


def _log_tensorboard(writer: Any, record: dict[str, Any], gallery: EmbeddingSet | None,
                     data: _Data, epoch: int, samples: int) -> None:
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
