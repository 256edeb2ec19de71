"""Images -> embedding files with any model: the extraction loop (no CLI, no printing).

Pipeline: a ``DataLoader`` whose workers decode with Pillow and preprocess in torch
(:class:`embeval.extract.images.ImageDataset`), pinned memory and non-blocking copies on
CUDA, ``torch.inference_mode``, optional autocast (``bf16`` / ``fp16``), channels_last.
With ``flip`` the embedding is the mean of the image's and its mirror's; with
``normalize`` it is L2-normalised. Embeddings are stored as float32.

Resuming (``resume=True``): while a set is embedded, every finished chunk of
``chunk_size`` consecutive images is written (atomically) to a hidden folder beside
the output, ``.<name>.partial/`` (``chunk-000000.safetensors``, ... plus
``manifest.json`` holding a fingerprint of the model, preprocessing, options and
image list). An interrupted run leaves that folder; a run with ``resume=True`` and
the same fingerprint reuses its chunks and embeds only the missing ones (a
different fingerprint is an error). Without ``resume`` a stale folder is discarded.
The output files are written only once every set is complete (so a failure in the
gallery leaves no query file either), then the partial folders are removed. A
failed run that finished no chunk leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from embeval.data.store import save
from embeval.engine.similarity import PRECISIONS, resolve_device
from embeval.errors import InputFileError, OptionError
from embeval.extract.embed import BatchRunner
from embeval.extract.images import ImageDataset, ImageList, Preprocessing
from embeval.extract.models import LoadedModel
from embeval.outputs import atomic_path

__all__ = ["ExtractOptions", "Extraction", "embed_images", "extract_to_files", "partial_dir"]

Progress = Callable[[int, int], None]


@dataclass
class ExtractOptions:
    """How to embed: ``batch_size`` images per forward, ``workers`` decoding processes
    (None: min(4, CPU count)), ``precision`` one of fp32 / tf32 / bf16 / fp16."""

    preprocessing: Preprocessing
    device: str | torch.device = "auto"
    batch_size: int = 64
    workers: int | None = None
    precision: str = "fp32"
    flip: bool = False
    normalize: bool = False
    skip_bad: bool = False
    chunk_size: int = 4096

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise OptionError(f"batch_size: must be >= 1, got {self.batch_size}", param="batch_size")
        if self.workers is not None and self.workers < 0:
            raise OptionError(f"workers: must be >= 0, got {self.workers}", param="workers")
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision: unknown precision {self.precision!r} "
                              f"(choose from {', '.join(PRECISIONS)})", param="precision")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")


@dataclass
class Extraction:
    """One embedded set: ``embeddings`` [M, D] float32 for the items ``kept`` [M] (indices
    into the image list); ``skipped`` = (name, problem) of undecodable images;
    ``computed`` = images embedded by this run (the rest came from a resumed run)."""

    images: ImageList
    embeddings: torch.Tensor
    kept: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    computed: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def partial_dir(out: str | os.PathLike[str]) -> Path:
    """The hidden folder that holds finished chunks of ``out`` while it is being made."""
    p = Path(out)
    return p.parent / f".{p.name}.partial"


def embed_images(model: LoadedModel, images: ImageList, options: ExtractOptions, *,
                 partial: Path | None = None, resume: bool = False,
                 progress: Progress | None = None, progress_offset: int = 0,
                 progress_total: int | None = None) -> Extraction:
    """Embed one image set; chunks go to ``partial`` (a folder) when it is given.

    Raises :class:`InputFileError` for an undecodable image (unless ``skip_bad``) or
    when no image at all could be decoded.
    """
    o = options
    device = resolve_device(str(o.device))
    n, c = len(images), o.chunk_size
    n_chunks = -(-n // c)
    done: dict[int, tuple[torch.Tensor, torch.Tensor, list[int], list[str]]] = {}
    if partial is not None:
        done = _open_partial(partial, _fingerprint(model, images, o), n_chunks, resume)
    total = progress_total if progress_total is not None else n
    finished = sum(_chunk_len(k, c, n) for k in done)
    report = progress or (lambda done_, total_: None)
    report(progress_offset + finished, total)

    run = _runner(model, device, o)
    pending = [k for k in range(n_chunks) if k not in done]
    batches = [list(range(a, min(a + o.batch_size, (k + 1) * c, n)))
               for k in pending for a in range(k * c, min((k + 1) * c, n), o.batch_size)]
    workers = min(4, os.cpu_count() or 1) if o.workers is None else o.workers
    loader = DataLoader(ImageDataset.of(images, o.preprocessing), batch_sampler=batches,
                        num_workers=min(workers, len(batches)), collate_fn=ImageDataset.collate,
                        pin_memory=device.type == "cuda")
    parts: dict[int, _Chunk] = {}
    start = time.perf_counter()
    for index, batch, errors in loader:
        for i, problem in errors:
            if not o.skip_bad:
                raise InputFileError(images.files[i], problem)
        k = int(index[0] if len(index) else errors[0][0]) // c
        acc = parts.setdefault(k, _Chunk())
        if batch is not None:
            y = run(batch)
            acc.embeddings.append(y)
            acc.index.append(index)
        acc.bad_index += [i for i, _ in errors]
        acc.bad_problems += [p for _, p in errors]
        finished += len(index) + len(errors)
        if acc.count == _chunk_len(k, c, n):
            done[k] = acc.finish()
            del parts[k]
            if partial is not None:
                _write_chunk(partial, k, *done[k])
        report(progress_offset + finished, total)
    seconds = time.perf_counter() - start
    chunks = [done[k] for k in range(n_chunks)]
    bad = [(i, p) for ch in chunks for i, p in zip(ch[2], ch[3])]
    if bad and not o.skip_bad:  # a resumed chunk skipped it under --skip-bad
        raise InputFileError(images.files[bad[0][0]], bad[0][1])
    kept = torch.cat([ch[1] for ch in chunks])
    if len(kept) == 0:
        raise InputFileError(images.source, f"no image could be decoded ({len(bad)} skipped)")
    emb = torch.cat([ch[0] for ch in chunks if len(ch[1])])
    skipped = [(images.names[i], p) for i, p in bad]
    return Extraction(images, emb, kept, skipped, computed=sum(_chunk_len(k, c, n) for k in pending),
                      seconds=seconds)


def extract_to_files(model: LoadedModel, jobs: Sequence[tuple[ImageList, str | os.PathLike[str]]],
                     options: ExtractOptions, *, resume: bool = False,
                     progress: Progress | None = None,
                     metadata: Mapping[str, str] | None = None) -> list[tuple[Path, Extraction]]:
    """Embed every (images, output file) job, then write all outputs atomically.

    Metadata written: ``model``, ``normalized``, ``source``, ``label_names`` (when
    known), ``preprocessing``, ``flip``, ``skipped`` (JSON list, when any) plus
    ``metadata``. Returns [(path, extraction)] in job order.
    """
    outs = [Path(p) for _, p in jobs]
    if len(set(outs)) != len(outs):
        raise OptionError("two image sets would be written to the same output file")
    total = sum(len(images) for images, _ in jobs)
    results: list[Extraction] = []
    partials = [partial_dir(p) for p in outs]
    try:
        offset = 0
        for (images, _), partial in zip(jobs, partials):
            results.append(embed_images(model, images, options, partial=partial, resume=resume,
                                        progress=progress, progress_offset=offset,
                                        progress_total=total))
            offset += len(images)
        for out, ext in zip(outs, results):
            _save(out, ext, model, options, metadata or {})
    except BaseException:
        for partial in partials:  # keep only what a --resume can use
            if partial.is_dir() and not any(partial.glob("chunk-*.safetensors")):
                shutil.rmtree(partial, ignore_errors=True)
        raise
    for partial in partials:
        shutil.rmtree(partial, ignore_errors=True)
    return list(zip(outs, results))


def _save(out: Path, ext: Extraction, model: LoadedModel, o: ExtractOptions,
          extra: Mapping[str, str]) -> None:
    im, kept = ext.images, ext.kept.tolist()
    meta = {"model": model.name, "normalized": "true" if o.normalize else "false",
            "source": str(im.source), "preprocessing": json.dumps(o.preprocessing.to_dict()),
            "flip": "true" if o.flip else "false", **extra}
    if im.label_names is not None:
        meta["label_names"] = json.dumps(im.label_names)
    if ext.skipped:
        meta["skipped"] = json.dumps([name for name, _ in ext.skipped])
    if im.junk_skipped:
        meta["junk_skipped"] = str(im.junk_skipped)
    save(out, ext.embeddings, [im.labels[i] for i in kept],
         None if im.cameras is None else [im.cameras[i] for i in kept],
         metadata=meta, paths=[im.names[i] for i in kept],
         extra={k: v[ext.kept] for k, v in im.tensors.items()})


# ---------------------------------------------------------------- forward pass


def _runner(model: LoadedModel, device: torch.device, o: ExtractOptions) -> BatchRunner:
    """The shared forward pass (:class:`BatchRunner`), set up as ``embeval extract`` runs it."""
    module = model.module.to(device)
    with contextlib.suppress(Exception):  # some compiled archives refuse a layout change
        # through Any: torch's stubs for Module.to(memory_format=...) differ between releases
        module = cast(Any, module).to(memory_format=torch.channels_last)
    return BatchRunner(module, device, o.precision, label=f"MODEL {model.name}", flip=o.flip,
                       normalize=o.normalize, channels_last=True, inference=True,
                       oom_hint="; lower batch_size",
                       assert_hint="; a .pt2 needs a dynamic batch dimension, "
                                   "or use batch_size 1", hint_params=("batch_size",))



# ---------------------------------------------------------------- resumable chunks


def _chunk_len(k: int, c: int, n: int) -> int:
    return min(c, n - k * c)


@dataclass
class _Chunk:
    """A chunk being embedded: per-batch ``embeddings`` [B, D] and ``index`` [B] (image
    indices), and the images that did not decode (``bad_index``, ``bad_problems``)."""

    embeddings: list[torch.Tensor] = field(default_factory=list)
    index: list[torch.Tensor] = field(default_factory=list)
    bad_index: list[int] = field(default_factory=list)
    bad_problems: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(x) for x in self.index) + len(self.bad_index)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
        """(embeddings [M, D], index [M], bad_index, bad_problems): a chunk file's content."""
        emb = torch.cat(self.embeddings) if self.embeddings else torch.empty(0, 0)
        index = torch.cat(self.index) if self.index else torch.empty(0, dtype=torch.int64)
        return emb, index, self.bad_index, self.bad_problems


def _fingerprint(model: LoadedModel, images: ImageList, o: ExtractOptions) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([model.fingerprint, o.preprocessing.to_dict(), o.flip, o.normalize,
                         o.precision, o.chunk_size, len(images)]).encode())
    for f in images.files:
        h.update(str(f).encode() + b"\0")
    for extra in (images.boxes, images.landmarks):
        if extra is not None:
            h.update(json.dumps(extra.tolist() if hasattr(extra, "tolist") else extra).encode())
    if images.blobs is not None:
        for b in images.blobs:
            h.update(hashlib.sha256(b).digest())
    return h.hexdigest()


def _open_partial(partial: Path, fingerprint: str, n_chunks: int, resume: bool) -> dict:
    """Finished chunks to reuse (resume) or none (fresh start: stale chunks removed)."""
    manifest = partial / "manifest.json"
    if partial.is_dir():
        try:
            old = json.loads(manifest.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            old = None
        if resume and old is not None and old != fingerprint:
            raise OptionError(f"resume: {partial} was started with another model, image list "
                              "or options; run without resume to start over",
                              param=("resume", "resume"))
        if not resume or old != fingerprint:
            shutil.rmtree(partial)
    partial.mkdir(exist_ok=True)
    if not manifest.exists():
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps({"version": 1, "fingerprint": fingerprint}))
    done = {}
    for k in range(n_chunks):
        f = partial / f"chunk-{k:06d}.safetensors"
        if f.exists():
            try:
                t = load_file(str(f))
                bad = json.loads(t["bad_problems"].numpy().tobytes().decode() or "[]")
                done[k] = (t["embeddings"], t["index"], t["bad_index"].tolist(), bad)
            except (SafetensorError, KeyError, ValueError, OSError):
                f.unlink(missing_ok=True)  # unreadable: embed that chunk again
    return done


def _write_chunk(partial: Path, k: int, emb: torch.Tensor, index: torch.Tensor,
                 bad_index: list[int], bad_problems: list[str]) -> None:
    problems = json.dumps(bad_problems).encode()
    tensors = {"embeddings": emb.contiguous(), "index": index.contiguous(),
               "bad_index": torch.tensor(bad_index, dtype=torch.int64),
               "bad_problems": torch.frombuffer(bytearray(problems), dtype=torch.uint8).clone()}
    with atomic_path(partial / f"chunk-{k:06d}.safetensors") as tmp:
        save_file(tensors, str(tmp))
