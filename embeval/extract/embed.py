"""Any ``nn.Module`` over any loader of ``(images, labels)`` -> an in-memory EmbeddingSet.

:class:`BatchRunner` is the one forward pass of embeval: ``embeval extract``
(:mod:`embeval.extract.loop`) and :func:`embed` / :func:`evaluate_model` both run the model
through it (device placement, optional autocast, no autograd, output checks).

>>> import torch, embeval
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
>>> loader = [(torch.randn(5, 3, 2, 2), torch.tensor([0, 0, 1, 1, 2]))]
>>> s = embeval.embed(net, loader, device="cpu")
>>> s.n, s.dim, s.labels.tolist()
(5, 4, [0, 0, 1, 1, 2])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from embeval.data.store import EmbeddingSet
from embeval.engine.similarity import PRECISIONS, resolve_device
from embeval.errors import OptionError

if TYPE_CHECKING:
    from embeval.evaluation import EvalResult

__all__ = ["BatchRunner", "embed", "evaluate_model"]

EmbedFn = Callable[[nn.Module, torch.Tensor], Any]


@dataclass
class BatchRunner:
    """Runs ``module`` on one batch at a time: images [B, ...] -> embeddings [B, D] float32 CPU.

    ``label`` names the model in errors (``MODEL resnet50``, ``model``). ``embed_fn(module,
    images)`` replaces ``module(images)``. A tuple/list output counts by its first element,
    dimensions after the first are flattened. ``precision``: fp32, tf32 (TF32 matmuls), bf16 or
    fp16 (autocast on ``device``). ``flip`` averages with the horizontally mirrored batch,
    ``normalize`` L2-normalises, ``channels_last`` feeds NHWC inputs, ``oom_hint`` /
    ``assert_hint`` end the error for an out-of-memory / AssertionError forward (naming the
    parameters ``hint_params``). ``inference`` runs under
    ``torch.inference_mode`` (else ``torch.no_grad``, so that state a model builds in its first
    forward stays usable for training). ``strict`` also refuses non-float and NaN/Inf outputs.
    """

    module: nn.Module
    device: torch.device
    precision: str = "fp32"
    label: str = "model"
    embed_fn: EmbedFn | None = None
    flip: bool = False
    normalize: bool = False
    channels_last: bool = False
    inference: bool = True
    strict: bool = False
    oom_hint: str = "; use smaller batches"
    assert_hint: str = ""
    hint_params: tuple[str, ...] = ()

    def __call__(self, images: torch.Tensor, where: str = "") -> torch.Tensor:
        """[B, ...] -> [B, D] float32 on the CPU; ``where`` (" in batch 3") ends error messages."""
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        tf32 = _tf32() if self.precision == "tf32" else contextlib.nullcontext()
        grad = torch.inference_mode() if self.inference else torch.no_grad()
        try:
            with grad, autocast, tf32:
                y = self._embedding(x, where)
                if self.flip:
                    y = (y + self._embedding(torch.flip(x, dims=[3]), where)) / 2
        except (RuntimeError, AssertionError, ValueError, TypeError) as e:
            if isinstance(e, OptionError):
                raise
            hint = ""
            if isinstance(e, torch.OutOfMemoryError):
                hint = self.oom_hint
            elif isinstance(e, AssertionError):
                hint = self.assert_hint
            text = " ".join(str(e).split())[:200]
            raise OptionError(f"{self.label}: forward failed on a batch of shape {list(x.shape)}"
                              f"{where} ({type(e).__name__}: {text}){hint}",
                              param=self.hint_params if hint else None) from None
        y = y.float()
        if self.normalize:
            y = F.normalize(y, dim=1)
        y = y.to("cpu")
        if self.strict:
            bad = ~torch.isfinite(y).all(dim=1)
            if bool(bad.any()):
                row = int(torch.nonzero(bad)[0])
                raise OptionError(f"{self.label}: output row {row}{where} contains NaN or Inf")
        return y

    def _embedding(self, x: torch.Tensor, where: str) -> torch.Tensor:
        out = self.module(x) if self.embed_fn is None else self.embed_fn(self.module, x)
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        batch = len(x)
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != batch:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise OptionError(f"{self.label}: output {shape}{where} is not an embedding batch "
                              f"[{batch}, D]")
        if self.strict and not out.is_floating_point():
            raise OptionError(f"{self.label}: output{where} has dtype {out.dtype}, not a float "
                              "embedding batch")
        return torch.flatten(out, 1)


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ---------------------------------------------------------------- in-process API


def embed(model: nn.Module, loader: Iterable[Any], *, device: str | torch.device = "auto",
          precision: str = "fp32", embed_fn: EmbedFn | None = None,
          name: str = "<model>") -> EmbeddingSet:
    """Embed every batch of ``loader`` with ``model``: an in-memory EmbeddingSet [N, D] float32.

    ``loader``: a DataLoader (or any iterable) of ``(images, labels)`` or ``(images, labels,
    cameras)`` batches; labels and cameras are [B] integer tensors or sequences of ints.
    ``device``: ``"auto"`` runs the model where its parameters are; another device moves the
    model there for the call and back afterwards. ``precision``: fp32, tf32, bf16 or fp16
    (autocast). ``embed_fn(model, images) -> [B, D]`` replaces ``model(images)`` (take a
    feature, flip-average, ...). The model runs in eval mode without autograd; every
    submodule's train/eval mode is restored afterwards.

    Raises :class:`OptionError` for a batch that is not (images, labels[, cameras]), an output
    that is not a float [B, D] batch, or NaN/Inf outputs (naming the batch index).
    """
    if precision not in PRECISIONS:
        raise OptionError(f"precision: unknown precision {precision!r} "
                          f"(choose from {', '.join(PRECISIONS)})")
    if not isinstance(model, nn.Module):
        raise OptionError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if embed_fn is not None and not callable(embed_fn):
        raise OptionError("embed_fn: expected a callable (model, images) -> [B, D]")
    home = _single_device(model)
    if str(device) == "auto":
        target = home or _first_device(model) or resolve_device("auto")
    else:
        target = resolve_device(str(device))
    modes = [(m, m.training) for m in model.modules()]
    moved = str(device) != "auto" and home != target
    label = "embed_fn" if embed_fn is not None else "model"
    try:
        if moved:
            model.to(target)
        model.eval()
        runner = BatchRunner(model, target, precision, label=label, embed_fn=embed_fn,
                             inference=False, strict=True)
        outputs, labels, cameras = _run(runner, loader)
    finally:
        for m, training in modes:
            m.training = training
        if moved and home is not None:
            model.to(home)
    return EmbeddingSet(outputs, labels, cameras, name=name)


def evaluate_model(model: nn.Module, query_loader: Iterable[Any], gallery_loader: Iterable[Any],
                   *, device: str | torch.device = "auto", precision: str = "fp32",
                   embed_fn: EmbedFn | None = None, **options: Any) -> EvalResult:
    """Embed both loaders with :func:`embed`, then :func:`embeval.evaluate` (query, gallery).

    ``device``, ``precision`` and ``embed_fn`` are the embedding's (see :func:`embed`); an
    explicit ``device`` also runs the evaluation there. Every other keyword (``ks``,
    ``knn_k``, ``pr``, ``metric``, ``exclude_self``, ``exclude_same_camera``, ``aggregate``,
    ``no_positive``, ...) goes to :func:`embeval.evaluate` unchanged, as do its errors.
    Returns its :class:`embeval.EvalResult`.
    """
    from embeval.evaluation import evaluate  # the ranking engine loads only when evaluating

    query = embed(model, query_loader, device=device, precision=precision, embed_fn=embed_fn,
                  name="query")
    gallery = embed(model, gallery_loader, device=device, precision=precision,
                    embed_fn=embed_fn, name="gallery")
    if str(device) != "auto" and "device" not in options:
        options["device"] = str(device)
    return evaluate(query, gallery, **options)


def _run(runner: BatchRunner, loader: Iterable[Any],
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Every batch through ``runner``: (embeddings [N, D], labels [N], cameras [N] or None)."""
    outputs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    cameras: list[torch.Tensor] = []
    with_cameras: bool | None = None
    for i, batch in enumerate(loader):
        images, batch_labels, batch_cameras = _unpack(batch, i)
        if with_cameras is None:
            with_cameras = batch_cameras is not None
        elif with_cameras != (batch_cameras is not None):
            raise OptionError(f"loader: batch {i} has {'no ' if with_cameras else ''}cameras, "
                              f"unlike batch 0")
        outputs.append(runner(images, f" in batch {i}"))
        labels.append(_ids(batch_labels, len(images), "labels", i))
        if batch_cameras is not None:
            cameras.append(_ids(batch_cameras, len(images), "cameras", i))
    if not outputs:
        raise OptionError("loader: yielded no batch")
    dims = {y.shape[1] for y in outputs}
    if len(dims) > 1:
        raise OptionError(f"{runner.label}: embedding sizes differ between batches "
                          f"({sorted(dims)})")
    return torch.cat(outputs), torch.cat(labels), torch.cat(cameras) if with_cameras else None


def _unpack(batch: Any, i: int) -> tuple[torch.Tensor, Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3) \
            and isinstance(batch[0], torch.Tensor) and batch[0].dim() >= 1:
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    what = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
            else f"a {type(batch).__name__}")
    raise OptionError(f"loader: batch {i} is {what}, not (images, labels) or "
                      "(images, labels, cameras) with images a tensor [B, ...]")


def _ids(values: Any, n: int, what: str, i: int) -> torch.Tensor:
    """[B] int64 from a tensor or a sequence of ints."""
    try:
        t = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool \
            or t.dim() != 1 or len(t) != n:
        shape = list(t.shape) if t is not None else type(values).__name__
        raise OptionError(f"loader: batch {i}: {what} must be {n} integers (a [B] tensor or "
                          f"a sequence of ints), got {shape}"
                          + (f" {t.dtype}" if t is not None else ""))
    return t.to(device="cpu", dtype=torch.int64)


def _single_device(model: nn.Module) -> torch.device | None:
    """The one device holding every parameter and buffer (None: none, or several)."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    return devices.pop() if len(devices) == 1 else None


def _first_device(model: nn.Module) -> torch.device | None:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return None
