"""``score``, ``knn``, ``cmc``, ``pr``: options → a :class:`~._job.Job`, run by :func:`~._job.execute`.

Every command also takes ``--shard i/n`` / ``--out-part FILE`` (an array-job shard, merged by
``embeval merge``) and runs as one rank of a group under torchrun.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from embeval import exports
from embeval.concat import load_many
from embeval.errors import OptionError

from ._app import app
from ._job import Common, Job, execute


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
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", help="Array jobs: evaluate gallery shard i of n (0 <= i < n) and write its partial "
                    "statistics to --out-part; combine the n parts with `embeval merge`.")]
PartOpt = Annotated[Path | None, typer.Option(
    "--out-part", help="Partial-statistics file of a --shard run "
                       "(default: COMMAND.part-I-of-N.safetensors in the current folder).")]


def default_ks(ks: list[int] | None, gallery: list[Path]) -> list[int]:
    """The user's -k values, or 1 5 10 capped at the gallery size."""
    if ks:
        return ks
    n = load_many(gallery).n
    return [k for k in (1, 5, 10) if k <= n] or [n]


def _common(metric, device, memory, precision, exclude_same_camera, exclude_self, aggregate,
            no_positive, block_size) -> Common:
    return Common(metric.value, device, memory, precision.value, exclude_same_camera, exclude_self,
                  aggregate.value, no_positive.value, block_size)


@app.command()
def cmc(query: QueryArg, gallery: GalleryArg, ks: KsOpt = None,
        per_query: Annotated[Path | None, typer.Option(
            "--per-query", help="CSV, one row per query: ranks of first/last positive, AP.")] = None,
        metric: MetricOpt = Metric.cosine, device: DeviceOpt = "auto", memory: MemoryOpt = None,
        precision: PrecisionOpt = Precision.fp32, exclude_same_camera: CameraOpt = False,
        exclude_self: SelfOpt = False, aggregate: AggregateOpt = Aggregate.none,
        no_positive: NoPosOpt = NoPositive.skip, json: JsonOpt = False,
        block_size: BlockOpt = None, shard: ShardOpt = None, out_part: PartOpt = None) -> None:
    """CMC rank-k, mAP and mINP (retrieval / re-identification)."""
    common = _common(metric, device, memory, precision, exclude_same_camera, exclude_self,
                     aggregate, no_positive, block_size)
    execute(Job("cmc", query, gallery, common, default_ks(ks, gallery),
                outputs={"--per-query": per_query}, as_json=json), shard=shard, out_part=out_part)


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
          block_size: BlockOpt = None, shard: ShardOpt = None, out_part: PartOpt = None) -> None:
    """Accuracy, top-k accuracy and hardest positive / negative scores."""
    common = _common(metric, device, memory, precision, exclude_same_camera, exclude_self,
                     aggregate, no_positive, block_size)
    execute(Job("score", query, gallery, common, default_ks(ks, gallery), outputs={"--out": out},
                out_topk=out_topk, as_json=json), shard=shard, out_part=out_part)


@app.command()
def knn(query: QueryArg, gallery: GalleryArg,
        k: Annotated[int, typer.Option("-k", "--k", help="Neighbours that vote.")] = 5,
        predictions: Annotated[Path | None, typer.Option(
            "--predictions", help="CSV, one row per query: label, prediction, correct.")] = None,
        metric: MetricOpt = Metric.cosine, device: DeviceOpt = "auto", memory: MemoryOpt = None,
        precision: PrecisionOpt = Precision.fp32, exclude_same_camera: CameraOpt = False,
        exclude_self: SelfOpt = False, aggregate: AggregateOpt = Aggregate.none,
        no_positive: NoPosOpt = NoPositive.skip, json: JsonOpt = False,
        block_size: BlockOpt = None, shard: ShardOpt = None, out_part: PartOpt = None) -> None:
    """k-nearest-neighbour classification accuracy (majority vote)."""
    common = _common(metric, device, memory, precision, exclude_same_camera, exclude_self,
                     aggregate, no_positive, block_size)
    if k <= 0:
        raise OptionError(f"-k {k}: must be at least 1")
    execute(Job("knn", query, gallery, common, [1], knn_k=k, extra={"k": k},
                outputs={"--predictions": predictions}, as_json=json), shard=shard, out_part=out_part)


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
       block_size: BlockOpt = None, shard: ShardOpt = None, out_part: PartOpt = None) -> None:
    """Precision-recall: mAP and the best F1 with its precision, recall and threshold."""
    common = _common(metric, device, memory, precision, exclude_same_camera, exclude_self,
                     aggregate, no_positive, block_size)
    if plot:
        exports.require_matplotlib()
    execute(Job("pr", query, gallery, common, [1], pr=True,
                outputs={"--curves": curves, "--plot": plot, "--per-query": per_query}, as_json=json),
            shard=shard, out_part=out_part)
