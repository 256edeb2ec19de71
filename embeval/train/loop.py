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
import json
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

from embeval.engine.similarity import resolve_device
from embeval.errors import EmbevalError, InputFileError, OptionError
from embeval.extract.checkpoint import save_checkpoint
from embeval.extract.images import ImageDataset, Preprocessing
from embeval.train import state as S
from embeval.train.config import TrainConfig, save_config
from embeval.train.evaluation import (
    TrainData,
    diverged,
    evaluate_epoch,
    load_train_data,
    log_tensorboard,
    summary_writer_class,
)
from embeval.train.losses import batch_hard_triplet, pk_batches, random_batches
from embeval.train.model import TrainModel, build_model, lr_factor, make_optimizer

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


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: Progress | None = None, should_stop: Callable[[], str | None] | None = None,
          ) -> TrainResult:
    """Run (or with ``resume``, continue) the training described by ``config``.

    ``progress(event)`` gets ``{"event": "start" | "epoch_start" | "step" | "eval" | "epoch", ...}``
    ("start": once, when the data is loaded and the run folder is set up).
    ``should_stop()`` is polled after every step and epoch: a non-None reason saves a
    resumable state and raises :class:`TrainInterrupted`. Bad input raises
    :class:`EmbevalError` before any file is written.
    """
    c = config.check()
    if c.out_dir is None:
        raise OptionError("no run folder: give out_dir RUN", param="out_dir")
    run_dir = Path(c.out_dir)
    state = S.load_state(run_dir) if resume else None
    if resume or not overwrite:  # overwrite removes what is there
        S.check_run_files(run_dir, option="resume" if resume else "out_dir")
    device = resolve_device(c.device)
    if c.precision != "fp32" and device.type != "cuda":
        raise OptionError(f"precision {c.precision}: mixed precision needs a CUDA device "
                          f"(training on {device})", param="precision")
    if c.tensorboard:
        summary_writer_class()  # fail before any work when tensorboard is missing
    data = load_train_data(c)
    if state is not None and (state["classes"] != data.classes or state.get("n_train") != len(data.labels)):
        raise OptionError(f"resume {run_dir}: the training set changed since the run started",
                          param="resume")
    if not resume:
        S.check_new_run(run_dir, overwrite=overwrite)
    run = _Run(c, run_dir, data, device, progress or (lambda event: None))
    if state is not None:
        run.restore(state)
    save_config(run_dir / "config.yaml", c)
    writer = summary_writer_class()(log_dir=str(run_dir / "tensorboard")) if c.tensorboard else None
    stop = should_stop or (lambda: None)
    run.report({"event": "start", "run": str(run_dir), "epoch": run.epoch, "step": run.step,
                "epochs": c.epochs, "steps": run.steps_per_epoch, "images": len(data.labels),
                "classes": len(data.classes), "query": len(data.query.files),
                "gallery": len(data.gallery.files), "backbone": c.backbone, "train": c.train,
                "device": str(device), "best_metric": c.best_metric, "resumed": state is not None})
    try:
        while run.epoch < c.epochs:
            run.train_epoch(stop)
            record, sample = run.finish_epoch(keep_sample=writer is not None)
            if writer is not None:
                log_tensorboard(writer, record, sample, data, run.epoch, c.projector_samples)
            reason = stop()
            if reason is not None and run.epoch < c.epochs:
                raise TrainInterrupted(reason, run_dir, run.epoch, 0)
    finally:
        if writer is not None:
            writer.close()
    return TrainResult(run_dir, run.history, run.best, run.model)


class _Run:
    """The state of a run between steps: model, optimizer, scheduler, RNGs, counters."""

    def __init__(self, c: TrainConfig, run_dir: Path, data: TrainData, device: torch.device,
                 report: Progress) -> None:
        self.c, self.run_dir, self.data, self.device, self.report = c, run_dir, data, device, report
        self.prep = Preprocessing(size=tuple(c.size), crop=tuple(c.crop) if c.crop else None,  # type: ignore[arg-type]
                                  mean=tuple(c.mean), std=tuple(c.std))  # type: ignore[arg-type]
        self.model, self.arch = build_model(c, len(data.classes))
        self.model.to(device)
        torch.manual_seed(c.seed)
        np.random.seed(c.seed)
        random.seed(c.seed)
        self.order_gen = torch.Generator().manual_seed(c.seed)
        self.aug_gen = torch.Generator().manual_seed(c.seed + 1)
        self.steps_per_epoch = len(self._batches(torch.Generator().manual_seed(0)))
        self.optimizer = make_optimizer(c, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_factor(c, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda") if c.precision == "fp16" else None
        self.autocast = (torch.autocast("cuda", dtype={"bf16": torch.bfloat16,
                                                       "fp16": torch.float16}[c.precision])
                         if c.precision != "fp32" else contextlib.nullcontext())
        self.epoch, self.step, self.accum = 0, 0, _new_accum()
        self.epoch_order_state = self.order_gen.get_state()  # batch order of the current epoch
        self.best: dict[str, Any] = {"metric": c.best_metric, "value": None, "epoch": None}
        self.history: list[dict[str, Any]] = []
        self.dataset = ImageDataset(data.train.files, self.prep)
        self.workers = c.workers if c.workers is not None else min(4, os.cpu_count() or 1)
        self.last_lr = c.lr
        self.t0 = time.perf_counter()

    def _batches(self, generator: torch.Generator) -> list[list[int]]:
        c = self.c
        if c.use_pk:
            return pk_batches(self.data.labels, batch_size=c.batch_size, instances=c.instances,
                              generator=generator)
        return random_batches(len(self.data.labels), batch_size=c.batch_size, generator=generator)

    # ------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "accum": dict(self.accum), "best": self.best,
                "epoch_order_state": self.epoch_order_state,
                "rng": S.rng_states(aug=self.aug_gen), "classes": self.data.classes,
                "n_train": len(self.data.labels), "steps_per_epoch": self.steps_per_epoch}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.accum = state["epoch"], state["step"], dict(state["accum"])
        self.best, self.epoch_order_state = state["best"], state["epoch_order_state"]
        S.restore_rng_states(state["rng"], aug=self.aug_gen)
        self.history = S.truncate_metrics(self.run_dir / "metrics.jsonl", self.epoch)

    # ------------------------------------------------------------ one epoch

    def train_epoch(self, stop: Callable[[], str | None]) -> None:
        """The steps of the current epoch from ``self.step`` on (all of them on a fresh epoch)."""
        c, device = self.c, self.device
        self.t0 = time.perf_counter()
        self.order_gen.set_state(self.epoch_order_state)
        batches = self._batches(self.order_gen)
        self.report({"event": "epoch_start", "epoch": self.epoch + 1, "epochs": c.epochs,
                     "steps": len(batches)})
        self.model.train()
        loader = DataLoader(self.dataset, batch_sampler=batches[self.step:],
                            num_workers=min(self.workers, len(batches)),
                            collate_fn=ImageDataset.collate, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(c.seed))
        for index, x, errors in loader:
            if errors:
                raise InputFileError(self.data.train.files[errors[0][0]], errors[0][1])
            self._step(x, self.data.labels[index])
            self.report({"event": "step", "epoch": self.epoch + 1, "step": self.step,
                         "steps": len(batches), "loss": self.accum["loss"] / self.accum["n"]})
            reason = stop()
            if reason is not None and self.step < len(batches):
                S.save_state(self.run_dir / "state.pt", self.snapshot())
                raise TrainInterrupted(reason, self.run_dir, self.epoch + 1, self.step)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        c, opt = self.c, self.optimizer
        if c.hflip:
            flip = torch.rand(len(x), generator=self.aug_gen) < 0.5
            x[flip] = x[flip].flip(3)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.autocast:
            emb, logits = self.model(x, y)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
        tri = (batch_hard_triplet(emb.float(), y, margin=c.triplet_margin)
               if c.triplet_weight > 0 else torch.zeros((), device=self.device))
        loss = ce + c.triplet_weight * tri
        if not torch.isfinite(loss):
            raise diverged(f"training diverged: the loss is {float(loss)} in epoch "
                           f"{self.epoch + 1} step {self.step + 1}")
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
        else:
            loss.backward()
        if c.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        self.last_lr = opt.param_groups[0]["lr"]
        self.scheduler.step()
        _accumulate(self.accum, loss, ce, tri, logits.detach(), y)
        self.step += 1

    def finish_epoch(self, *, keep_sample: bool) -> tuple[dict[str, Any], Any]:
        """Evaluate, then write checkpoints, metrics.jsonl and state.pt (in that order)."""
        c, run = self.c, self.run_dir
        self.report({"event": "eval", "epoch": self.epoch + 1})
        metrics, sample = evaluate_epoch(c, self.model, self.data, self.prep, self.device, keep_sample)
        epoch = self.epoch + 1
        record = {"epoch": epoch, "lr": self.last_lr,
                  **_train_metrics(self.accum, len(self.data.classes)), **metrics,
                  "seconds": round(time.perf_counter() - self.t0, 3)}
        value, best = record.get(c.best_metric), self.best["value"]
        record["best"] = best is None or (value is not None and value > best)
        meta = {"epoch": epoch, "metrics": json.dumps(metrics), "source": str(self.data.train.source),
                "label_names": json.dumps(self.data.classes), "model": f"embeval train {run}"}
        save_checkpoint(run / "last.safetensors", self.model.embedder, architecture=self.arch,
                        preprocessing=self.prep, extra_metadata=meta, member=True)
        if record["best"]:
            self.best = {"metric": c.best_metric, "value": value, "epoch": epoch}
            save_checkpoint(run / "best.safetensors", self.model.embedder, architecture=self.arch,
                            preprocessing=self.prep, extra_metadata=meta, member=True)
        # metrics before state: a kill in between redoes this epoch and rewrites its line
        S.append_metrics(run / "metrics.jsonl", record)
        self.epoch, self.step, self.accum = epoch, 0, _new_accum()
        self.epoch_order_state = self.order_gen.get_state()
        S.save_state(run / "state.pt", self.snapshot())
        self.history.append(record)
        self.report({"event": "epoch", "record": record})
        return record, sample


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
