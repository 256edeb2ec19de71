"""``score``, ``knn``, ``cmc``, ``pr``: load two embedding files, evaluate, render, write files."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from embeval import exports
from embeval.concat import load_many
from embeval.errors import OptionError
from embeval.evaluate import EvalResult, evaluate
from embeval.ranking import parse_memory
from embeval.similarity import resolve_device, scores
from embeval.store import EmbeddingSet, load

from ._app import app, check_writable, progress_bar
from .report import render


class Metric(str, Enum):
    inner = "inner"
    cosine = "cosine"
    euclid = "euclid"
    sq_euclid = "sq_euclid"


class Precision(str, Enum):
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"
    fp16 = "fp16"


class Aggregate(str, Enum):
    none = "none"
    mean = "mean"


class NoPositive(str, Enum):
    skip = "skip"
    zero = "zero"


QueryArg = Annotated[Path, typer.Argument(help="Query embeddings (.safetensors).", show_default=False)]
GalleryArg = Annotated[list[Path], typer.Argument(
    help="Gallery embeddings (.safetensors): one file, several, or a quoted glob ('g/*.safetensors'), "
         "evaluated as one gallery.", show_default=False)]
KsOpt = Annotated[list[int] | None, typer.Option(
    "-k", "--k", help="Rank cut-offs, e.g. -k 1 5 10 (default: 1 5 10, capped at the gallery size).")]
MetricOpt = Annotated[Metric, typer.Option(help="Similarity: higher = more similar.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
MemoryOpt = Annotated[str | None, typer.Option(help="Block memory budget, e.g. 2GB "
                                                    "(default: 60% of free GPU memory, 1GB on CPU).")]
PrecisionOpt = Annotated[Precision, typer.Option(help="Matmul precision; all but fp32 are approximate.")]
CameraOpt = Annotated[bool, typer.Option("--exclude-same-camera",
                                         help="Drop gallery items with the query's label AND camera.")]
SelfOpt = Annotated[bool, typer.Option("--exclude-self",
                                       help="Leave-one-out: query i ignores gallery item i.")]
AggregateOpt = Annotated[Aggregate, typer.Option(help="mean: one normalised prototype per label.")]
NoPosOpt = Annotated[NoPositive, typer.Option(
    "--no-positive", help="Queries without positives: skip them (torchreid) or count AP 0.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
BlockOpt = Annotated[int | None, typer.Option(hidden=True, min=1, help="Gallery rows per block.")]


@dataclass
class Common:
    metric: Metric
    device: str
    memory: str | None
    precision: Precision
    exclude_same_camera: bool
    exclude_self: bool
    aggregate: Aggregate
    no_positive: NoPositive
    block_size: int | None


def default_ks(ks: list[int] | None, query: Path, gallery: list[Path]) -> list[int]:
    """The user's -k values, or 1 5 10 capped at the gallery size."""
    if ks:
        return ks
    n = load_many(gallery).n
    return [k for k in (1, 5, 10) if k <= n] or [n]


def _run(query: Path, gallery: list[Path], common: Common, *, ks: list[int], knn_k: int | None = None,
         pr: bool = False, outputs: dict[str, Path | None] | None = None) -> tuple[EvalResult, EmbeddingSet]:
    for option, path in (outputs or {}).items():
        check_writable(path, option)
    parse_memory(common.memory)
    resolve_device(common.device)
    q, g = load(query), load_many(gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    with progress_bar("ranking", "items") as update:
        result = evaluate(
            q, g, metric=common.metric.value, ks=ks, knn_k=knn_k,
            exclude_same_camera=common.exclude_same_camera, exclude_self=common.exclude_self,
            aggregate=common.aggregate.value, no_positive=common.no_positive.value, pr=pr,
            device=common.device, precision=common.precision.value, memory=common.memory,
            block_size=common.block_size, progress=update)
    return result, g


def _common(metric, device, memory, precision, exclude_same_camera, exclude_self, aggregate,
            no_positive, block_size) -> Common:
    return Common(metric, device, memory, precision, exclude_same_camera, exclude_self, aggregate,
                  no_positive, block_size)


@app.command()
def cmc(query: QueryArg, gallery: GalleryArg, ks: KsOpt = None,
        per_query: Annotated[Path | None, typer.Option(
            "--per-query", help="CSV, one row per query: ranks of first/last positive, AP.")] = None,
        metric: MetricOpt = Metric.cosine, device: DeviceOpt = "auto", memory: MemoryOpt = None,
        precision: PrecisionOpt = Precision.fp32, exclude_same_camera: CameraOpt = False,
        exclude_self: SelfOpt = False, aggregate: AggregateOpt = Aggregate.none,
        no_positive: NoPosOpt = NoPositive.skip, json: JsonOpt = False,
        block_size: BlockOpt = None) -> None:
    """CMC rank-k, mAP and mINP (retrieval / re-identification)."""
    common = _common(metric, device, memory, precision, exclude_same_camera, exclude_self,
                     aggregate, no_positive, block_size)
    ks = default_ks(ks, query, gallery)
    result, g = _run(query, gallery, common, ks=ks, outputs={"--per-query": per_query})
    if per_query:
        exports.write_per_query(per_query, result, g.label_names)
    render("cmc", result, ks, as_json=json)


@app.command()
def score(query: QueryArg, gallery: GalleryArg, ks: KsOpt = None,
          out: Annotated[Path | None, typer.Option(
              "--out", help="Write scores (.safetensors): the [Q, G] matrix when it fits 1 GB, "
                            "else the top-k per query.")] = None,
          out_topk: Annotated[int | None, typer.Option(
              "--out-topk", min=1, help="Write the top-N per query instead of the matrix.")] = None,
          metric: MetricOpt = Metric.cosine, device: DeviceOpt = "auto", memory: MemoryOpt = None,
          precision: PrecisionOpt = Precision.fp32, exclude_same_camera: CameraOpt = False,
          exclude_self: SelfOpt = False, aggregate: AggregateOpt = Aggregate.none,
          no_positive: NoPosOpt = NoPositive.skip, json: JsonOpt = False,
          block_size: BlockOpt = None) -> None:
    """Accuracy, top-k accuracy and hardest positive / negative scores."""
    common = _common(metric, device, memory, precision, exclude_same_camera, exclude_self,
                     aggregate, no_positive, block_size)
    ks = default_ks(ks, query, gallery)
    topn = None
    if out is not None:
        qn, gn = load(query).n, load_many(gallery).n
        topn = out_topk or (None if qn * gn * 4 <= 1 << 30 else max(ks))
        if topn is not None:
            topn = min(topn, gn)
    result, g = _run(query, gallery, common, ks=ks, knn_k=topn, outputs={"--out": out})
    if out is not None:
        _write_scores(out, query, g, result, common, topn)
    render("score", result, ks, as_json=json)


def _write_scores(out: Path, query: Path, g: EmbeddingSet, result: EvalResult, common: Common,
                  topn: int | None) -> None:
    meta = {"embeval.scores": "1", "metric": common.metric.value}
    stats = result.stats
    if topn is not None:
        idx = stats.topk_indices
        empty = idx == torch.iinfo(torch.int64).max
        exports.write_tensor_stream(
            out, [("topk_scores", torch.float32, tuple(idx.shape)),
                  ("topk_indices", torch.int64, tuple(idx.shape))],
            iter([{"topk_scores": stats.topk_scores, "topk_indices": idx.masked_fill(empty, -1)}]),
            {**meta, "layout": "topk"})
        return
    q = load(query)
    gallery_emb = g.embeddings
    rows = max(1, (parse_memory(common.memory) or 1 << 28) // max(1, 4 * g.n))

    def blocks():
        for a in range(0, q.n, rows):
            yield {"scores": scores(q.rows(a, min(a + rows, q.n)), gallery_emb, common.metric.value)}

    exports.write_tensor_stream(out, [("scores", torch.float32, (q.n, g.n))], blocks(),
                                {**meta, "layout": "matrix"})


@app.command()
def knn(query: QueryArg, gallery: GalleryArg,
        k: Annotated[int, typer.Option("-k", "--k", help="Neighbours that vote.")] = 5,
        predictions: Annotated[Path | None, typer.Option(
            "--predictions", help="CSV, one row per query: label, prediction, correct.")] = None,
        metric: MetricOpt = Metric.cosine, device: DeviceOpt = "auto", memory: MemoryOpt = None,
        precision: PrecisionOpt = Precision.fp32, exclude_same_camera: CameraOpt = False,
        exclude_self: SelfOpt = False, aggregate: AggregateOpt = Aggregate.none,
        no_positive: NoPosOpt = NoPositive.skip, json: JsonOpt = False,
        block_size: BlockOpt = None) -> None:
    """k-nearest-neighbour classification accuracy (majority vote)."""
    common = _common(metric, device, memory, precision, exclude_same_camera, exclude_self,
                     aggregate, no_positive, block_size)
    if k <= 0:
        raise OptionError(f"-k {k}: must be at least 1")
    result, _ = _run(query, gallery, common, ks=[1], knn_k=k,
                     outputs={"--predictions": predictions})
    if predictions:
        exports.write_predictions(predictions, result)
    render("knn", result, [1], as_json=json, extra={"k": k})


@app.command()
def pr(query: QueryArg, gallery: GalleryArg,
       curves: Annotated[Path | None, typer.Option(
           "--curves", help="Per-query PR points (.safetensors, values + offsets).")] = None,
       plot: Annotated[Path | None, typer.Option(
           "--plot", help="PNG of the mean interpolated PR curve (needs matplotlib).")] = None,
       per_query: Annotated[Path | None, typer.Option(
           "--per-query", help="CSV, one row per query: ranks, AP, max F1.")] = None,
       metric: MetricOpt = Metric.cosine, device: DeviceOpt = "auto", memory: MemoryOpt = None,
       precision: PrecisionOpt = Precision.fp32, exclude_same_camera: CameraOpt = False,
       exclude_self: SelfOpt = False, aggregate: AggregateOpt = Aggregate.none,
       no_positive: NoPosOpt = NoPositive.skip, json: JsonOpt = False,
       block_size: BlockOpt = None) -> None:
    """Precision-recall: mAP and the best F1 with its precision, recall and threshold."""
    common = _common(metric, device, memory, precision, exclude_same_camera, exclude_self,
                     aggregate, no_positive, block_size)
    if plot:
        exports.require_matplotlib()
    result, g = _run(query, gallery, common, ks=[1], pr=True,
                     outputs={"--curves": curves, "--plot": plot, "--per-query": per_query})
    if curves:
        exports.write_curves(curves, result)
    if per_query:
        exports.write_per_query(per_query, result, g.label_names)
    if plot:
        exports.write_pr_plot(plot, result, f"{query.name} vs {g.name} ({metric.value})")
    render("pr", result, [1], as_json=json)
