"""``score``, ``knn``, ``cmc``, ``pr``: options → a :class:`~embeval.jobs.Job`, run by
:func:`~embeval.jobs.run_job`, rendered by :func:`~.report.render_job`.

Every command also takes ``--shard i/n`` / ``--out-part FILE`` (an array-job shard, merged by
``embeval merge``) and runs as one rank of a group under torchrun.

Importing this module does not import torch: the commands check their arguments and input
files first, then load the core (``embeval --help``, a typo or a missing file answer at once).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import inspect
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from embeval.errors import InputFileError, OptionError
from embeval.options import (
    Aggregate,
    ApRule,
    Backend,
    EvalOptions,
    IntervalOptions,
    Metric,
    NoPositive,
    Precision,
    ResamplingUnit,
)
from embeval.rerank.options import QeMethod, RerankMethod, RerankOptions

from ._app import app, check_plot, results_off_stdout

QueryArg = Annotated[Path, typer.Argument(
    metavar="QUERY", help="Query embeddings (.safetensors).", show_default=False)]
GalleryArg = Annotated[list[Path], typer.Argument(
    metavar="GALLERY...",
    help="Gallery embeddings (.safetensors): one file, several, or a quoted glob ('g/*.safetensors'), "
         "evaluated as one gallery.", show_default=False)]
KsOpt = Annotated[list[int] | None, typer.Option(
    "-k", metavar="K...",
    help="Rank cut-offs, e.g. -k 1 5 10 (default: 1 5 10, capped at the gallery size).")]
MetricOpt = Annotated[Metric, typer.Option(
    "--metric", metavar="METRIC",
    help="Similarity, higher = more similar: inner, cosine, euclid or sq_euclid.")]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]
MemoryOpt = Annotated[str | None, typer.Option(
    metavar="SIZE", help="Block memory budget, e.g. 2GB (default: 60% of free GPU memory, 1GB on CPU).")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", metavar="PRECISION",
    help="Matmul precision: fp32, tf32, bf16 or fp16 (all but fp32 are approximate).")]
CameraOpt = Annotated[bool, typer.Option("--exclude-same-camera",
                                         help="Drop gallery items with the query's label AND camera.")]
SelfOpt = Annotated[bool, typer.Option("--exclude-self",
                                       help="Leave-one-out: query i ignores gallery item i.")]
AggregateOpt = Annotated[Aggregate, typer.Option(
    metavar="HOW", help="Gallery as is (none), or one normalised prototype per label (mean).")]
NoPosOpt = Annotated[NoPositive, typer.Option(
    "--no-positive", metavar="HOW",
    help="Queries without positives: skip them (torchreid), or zero: count AP 0.")]
ApOpt = Annotated[ApRule | None, typer.Option(
    "--ap", metavar="RULE",
    help="AP behind mAP and the per-query ap: standard ((1/P) Σ TP_j/N_j), or trapezoid "
         "(revisitop's trapezoidal area, as Revisited Oxford/Paris tables). Default: standard; "
         "trapezoid under cmc --protocol.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
BlockOpt = Annotated[int | None, typer.Option(hidden=True, min=1, help="Gallery rows per block.")]
BackendOpt = Annotated[Backend, typer.Option(
    "--backend", metavar="ENGINE",
    help="Pass: auto (numba on CPU; triton on CUDA GPUs of compute capability 8.0+ with the "
         "gpu extra, else torch), numba (CPU), torch, or triton (one fused GPU kernel: fp32 "
         "without top-k).")]
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", metavar="I/N",
    help="Array jobs: evaluate gallery shard I of N (0 <= I < N) and write its partial "
         "statistics to --out-part; combine the N parts with `embeval merge`.")]
RelevanceOpt = Annotated[Path | None, typer.Option(
    "--relevance", metavar="FILE",
    help="Per-query positives and junk instead of label equality: CSV with header "
         "query,gallery,relevance (1 positive, -1 junk; unlisted = negative), or .safetensors "
         "CSR. Junk is invisible to its query; --exclude-* still apply.")]
CiOpt = Annotated[float | None, typer.Option(
    "--ci", metavar="LEVEL",
    help="Add a LEVEL (e.g. 0.95) percentile-bootstrap interval to every metric that has one "
         "(README: How sure is this number?).")]
BootstrapOpt = Annotated[int | None, typer.Option(
    "--bootstrap", metavar="N", help="Bootstrap resamples of --ci (default 1000).")]
SeedOpt = Annotated[int | None, typer.Option(
    "--seed", metavar="S", help="Seed of --ci's resamples (default 0): same seed, same intervals.")]
CiByOpt = Annotated[ResamplingUnit | None, typer.Option(
    "--ci-by", metavar="UNIT",
    help="What --ci resamples: query (default), or label (all queries of an identity together).")]
SaveResultOpt = Annotated[Path | None, typer.Option(
    "--save-result", metavar="FILE",
    help="Save the whole result (.safetensors: metrics, options, per-query values, input "
         "fingerprints) for `embeval compare` and `embeval report`.")]
PartOpt = Annotated[Path | None, typer.Option(
    "--out-part", metavar="FILE", help="Partial-statistics file of a --shard run "
                                       "(default: COMMAND.part-I-of-N.safetensors in the current folder).")]


def file_option(help_: str, name: str) -> typer.models.OptionInfo:
    """An optional output file option ``name FILE``."""
    return typer.Option(name, metavar="FILE", help=help_)


def examples(*lines: str) -> str:
    """A help epilog: ``Examples:`` and one ``$ command`` per line (shown as written)."""
    return "Examples:\n" + "\n".join(f"  $ {line}" for line in lines)


_GLOB = re.compile(r"[*?\[]")


def require_files(paths: Sequence[Path], expected: str = "a .safetensors embedding file") -> None:
    """Fail (exit 2, one line) on a missing input file or a glob that matches nothing.

    The same checks and messages as :func:`embeval.load` / ``expand_paths`` (which check
    again), made here so that a wrong path is reported before torch is imported. ``expected``:
    what the files should be, for the message about a folder.
    """
    for path in paths:
        text = str(path)
        if _GLOB.search(text) and not path.exists():
            if not glob.glob(text):
                raise InputFileError(text, "no file matches this pattern")
        elif not path.exists():
            raise InputFileError(path, "no such file")
        elif path.is_dir():
            raise InputFileError(path, f"is a folder, expected {expected}")


def rates(values: list[float] | None, default: Sequence[float], flag: str) -> list[float]:
    """The user's rates (``--far``, ``--fpir``) or ``default``; each must lie in (0, 1)."""
    chosen = list(values or default)
    for f in chosen:
        if not 0.0 < f < 1.0:
            raise OptionError(f"{flag} {f:g}: must be between 0 and 1 (exclusive)")
    return chosen


def default_ks(ks: list[int] | None, gallery: list[Path]) -> list[int]:
    """The user's -k values, or 1 5 10 capped at the gallery size."""
    if ks:
        return ks
    from embeval.data.concat import load_many

    n = load_many(gallery).n
    return [k for k in (1, 5, 10) if k <= n] or [n]


#: the evaluation flags, in the order of their help: EvalOptions fields (their defaults are
#: EvalOptions') and what every metric command runs with (--json, --shard, --out-part)
SHARED: dict[str, Any] = {
    "metric": MetricOpt, "device": DeviceOpt, "memory": MemoryOpt, "precision": PrecisionOpt,
    "exclude_same_camera": CameraOpt, "exclude_self": SelfOpt, "aggregate": AggregateOpt,
    "no_positive": NoPosOpt, "json": JsonOpt, "block_size": BlockOpt, "shard": ShardOpt,
    "out_part": PartOpt, "backend": BackendOpt,
}
#: the flags of every metric command that say how sure a number is, and save the result
INTERVALS: dict[str, Any] = {"ci": CiOpt, "bootstrap": BootstrapOpt, "seed": SeedOpt,
                             "ci_by": CiByOpt, "save_result": SaveResultOpt}
#: the flags of the commands that rank the gallery per query (all metric commands but verify)
RANKED: dict[str, Any] = {"relevance": RelevanceOpt}
#: the flag of the commands that report mAP (cmc, pr)
MAP: dict[str, Any] = {"ap": ApOpt}
#: re-ranking and expansion flags (cmc, pr, score, knn): bundled into one RerankOptions
RERANK: dict[str, Any] = {
    "rerank_method": Annotated[RerankMethod | None, typer.Option(
        "--rerank", metavar="METHOD",
        help="k-reciprocal: re-rank by Zhong et al.'s k-reciprocal distance over queries ∪ "
             "gallery (--k1, --k2, --lambda), exactly, without the (Q+G)² matrix; cosine, "
             "euclid or sq_euclid. Shards (--shard, torchrun) each build the whole neighbour "
             "graph and rank their gallery range.")],
    "k1": Annotated[int | None, typer.Option("--k1", metavar="K", min=1,
                                             help="k-reciprocal neighbours (default 20).")],
    "k2": Annotated[int | None, typer.Option("--k2", metavar="K", min=1,
                                             help="Local query expansion (default 6).")],
    "lambda_": Annotated[float | None, typer.Option(
        "--lambda", metavar="L", help="Weight of the original distance, in (0, 1] (default 0.3).")],
    "qe": Annotated[QeMethod | None, typer.Option(
        "--qe", metavar="HOW",
        help="Query expansion from each query's top-k gallery items (itself included): "
             "average or alpha (alpha: cosine / inner).")],
    "qe_k": Annotated[int | None, typer.Option("--qe-k", metavar="K", min=1,
                                               help="Neighbours of --qe (default 10).")],
    "qe_alpha": Annotated[float | None, typer.Option(
        "--qe-alpha", metavar="A", help="Exponent of --qe alpha's weights (default 3).")],
    "dba": Annotated[int | None, typer.Option(
        "--dba", metavar="K", min=1,
        help="Database-side augmentation: each gallery item becomes the weighted mean of its K "
             "best gallery items (itself first), before --qe.")],
}
_DEFAULTS = EvalOptions()
_FIELDS = {f.name for f in dataclasses.fields(EvalOptions)}


def metric_command(epilog: str, *, ranked: bool = True, reports_map: bool = False,
                   reranks: bool = False, without: tuple[str, ...] = ()
                   ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn(query, gallery, <its own options>, *, options, json, shard, out_part)`` as a
    command whose evaluation flags are written once, here (:data:`SHARED`, and :data:`RANKED`
    when ``ranked``: ``fn`` then also takes ``relevance``; :data:`MAP` when ``reports_map``):
    the command line gets them appended to ``fn``'s own; ``fn`` gets one checked
    :class:`EvalOptions`. :data:`MAP` flags default to None on the command line (the
    EvalOptions default then): ``fn`` may take ``unset``, the names of those not given.
    :data:`INTERVALS`: ``fn`` takes ``intervals`` (an :class:`IntervalOptions`, None without
    --ci) and ``save_result``. ``reranks``: also the :data:`RERANK` flags, given to ``fn`` as
    one ``rerank`` (:class:`RerankOptions`, None when none is asked). ``without``: shared
    flags the command does not accept (not offered; the EvalOptions default applies)."""
    flags = {**SHARED, **INTERVALS, **(RANKED if ranked else {}), **(MAP if reports_map else {}),
             **(RERANK if reranks else {})}
    flags = {k: v for k, v in flags.items() if k not in without}

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        params = inspect.signature(fn, eval_str=True).parameters
        own = [p for p in params.values()
               if p.name not in {"options", "unset", "intervals", "rerank", *flags}]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                    default=None if name in MAP else
                                    getattr(_DEFAULTS, name, None if name != "json" else False))
                  for name, annotation in flags.items()]

        @functools.wraps(fn)
        def command(**values: Any) -> None:
            unset = frozenset(k for k in MAP if k in values and values[k] is None)
            options = EvalOptions(**{k: values.pop(k) for k in list(values)
                                     if k in _FIELDS and k not in unset})
            for k in unset:
                values.pop(k)
            intervals = interval_options(*(values.pop(k) for k in ("ci", "bootstrap", "seed", "ci_by")))
            if reranks:
                values["rerank"] = RerankOptions.from_flags(
                    values.pop("rerank_method"), **{k: values.pop(k) for k in list(RERANK)[1:]})
            fn(**values, options=options, intervals=intervals,
               **({"unset": unset} if "unset" in params else {}))

        command.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
        return app.command(epilog=epilog)(command)
    return register


def evaluation_flags(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Append the evaluation flags ``names`` (keys of :data:`SHARED` and :data:`MAP`: their one
    definition, with :class:`EvalOptions`' defaults) to a command's own flags, and give the
    command one checked :class:`EvalOptions` as ``options`` (a :data:`MAP` flag not given keeps
    EvalOptions' default). For the commands that evaluate without being metric commands
    (``report``, ``show``)."""
    catalogue = {**SHARED, **MAP}
    flags = {name: catalogue[name] for name in names}

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.name != "options"]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                    default=None if name in MAP else getattr(_DEFAULTS, name))
                  for name, annotation in flags.items()]

        @functools.wraps(fn)
        def command(**values: Any) -> None:
            given = {k: values.pop(k) for k in flags}
            fn(**values, options=EvalOptions(**{k: v for k, v in given.items()
                                                if not (k in MAP and v is None)}))

        command.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
        return command
    return register


def interval_options(ci: float | None, bootstrap: int | None = None, seed: int | None = None,
                     ci_by: str | None = None) -> IntervalOptions | None:
    """The --ci flags as one :class:`IntervalOptions` (None without --ci)."""
    if ci is None:
        given = [flag for flag, v in (("--bootstrap", bootstrap), ("--seed", seed),
                                      ("--ci-by", ci_by)) if v is not None]
        if given:
            raise OptionError(f"{given[0]}: sets how --ci computes its intervals: give --ci LEVEL "
                              "too (e.g. --ci 0.95)")
        return None
    defaults = IntervalOptions()
    return IntervalOptions(ci, defaults.n_resamples if bootstrap is None else bootstrap,
                           defaults.seed if seed is None else seed, ci_by or defaults.by)


def _execute(command: str, query: Path, gallery: list[Path], options: EvalOptions,
             ks: list[int] | None, shard: str | None, out_part: Path | None, *,
             save_result: Path | None, outputs: dict[str, Path | None] | None = None,
             **job: Any) -> None:
    """Check the input files, then load the core and run the job: torch is imported here.

    ``ks``: the -k values (None: 1 5 10 capped at the gallery size); ``save_result``: the
    --save-result file (one of the job's ``outputs``); ``job``: the rest of
    :class:`~embeval.jobs.Job` (``intervals`` included).
    """
    require_files([query, *gallery])
    if job.get("rerank") is not None:
        job["extra"] = {**job.get("extra", {}), "rerank": job["rerank"].to_dict()}
    if job.get("relevance") is not None:
        from embeval.data.int_csv import check_file

        check_file(job["relevance"], "a relevance file (CSV or .safetensors)")
    from embeval.jobs import Job, run_job

    from .report import cli_hooks, render_job

    outputs = {**(outputs or {}), "--save-result": save_result}
    results_off_stdout(outputs.values())  # an output on stdout: the table goes to stderr
    done = run_job(Job(command, query, gallery, options, default_ks(ks, gallery),
                       outputs=outputs, **job),
                   shard=shard, out_part=out_part, hooks=cli_hooks())
    if done is not None:  # None: a --shard run, or a torchrun rank other than 0
        render_job(done)


CMC_EXAMPLES = examples(
    "embeval cmc query.safetensors gallery.safetensors -k 1 5 10",
    "embeval cmc query.safetensors 'gallery/*.safetensors' --exclude-same-camera --json",
    "embeval cmc query.npz gallery.npz -k 1 5 10 20 --plot cmc.png")


ProtocolName = Literal["roxford", "rparis"]


@metric_command(CMC_EXAMPLES, reports_map=True, reranks=True)
def cmc(query: QueryArg, gallery: GalleryArg, ks: KsOpt = None,
        per_query: Annotated[Path | None, file_option(
            "CSV, one row per query: ranks of first/last positive, AP, RR, AP@R, R-precision.",
            "--per-query")] = None,
        protocol: Annotated[ProtocolName | None, typer.Option(
            "--protocol", metavar="NAME",
            help="roxford or rparis (Revisited Oxford/Paris): mAP and mP@k in the easy, medium "
                 "and hard settings (three ranking passes), from --relevance FILE with "
                 "query,gallery,kind rows (kind: easy, hard, junk); --ap trapezoid unless given.")
        ] = None,
        plot: Annotated[Path | None, file_option(
            "PNG, SVG or PDF (by the suffix) of the CMC curve, rank 1 to the largest -k.",
            "--plot")] = None,
        *, options: EvalOptions, json: bool, shard: str | None, out_part: Path | None,
        relevance: Path | None, intervals: IntervalOptions | None, save_result: Path | None,
        unset: frozenset[str] = frozenset(), rerank: RerankOptions | None = None) -> None:
    """CMC rank-k, mAP, mINP, MRR, MAP@R, R-precision, P@k, nDCG@k (retrieval / re-identification)."""
    if plot and protocol is not None:
        raise OptionError("--plot: not with --protocol (three settings, no single CMC curve)")
    check_plot(plot)
    if protocol is not None:
        options = _protocol_options(protocol, options, relevance, shard, per_query)
        if "ap" in unset:
            options = dataclasses.replace(options, ap="trapezoid")
    _execute("cmc", query, gallery, options, ks, shard, out_part,
             outputs={"--per-query": per_query, "--plot": plot}, as_json=json,
             relevance=relevance, intervals=intervals, save_result=save_result, rerank=rerank,
             **({"extra": {"protocol": protocol}} if protocol else {}))


def _protocol_options(protocol: str, options: EvalOptions, relevance: Path | None,
                      shard: str | None, per_query: Path | None) -> EvalOptions:
    """Check ``cmc --protocol``'s flags."""
    if relevance is None:
        raise OptionError(f"--protocol {protocol}: needs --relevance FILE (query,gallery,kind "
                          "rows, kind: easy, hard or junk)")
    if shard is not None:
        raise OptionError("--shard: not with --protocol (three passes over a small gallery: "
                          "run it whole)")
    if per_query is not None:
        raise OptionError("--per-query: not with --protocol (one row per query and setting is "
                          "not written; use the Python API's RevisitedResult.settings)")
    if options.no_positive != "skip":
        raise OptionError("--no-positive: the revisited protocol skips queries without "
                          "positives (as revisitop)")
    return options


SCORE_EXAMPLES = examples(
    "embeval score query.safetensors gallery.safetensors -k 1 5",
    "embeval score query.safetensors gallery.safetensors --out scores.safetensors --out-topk 100")


@metric_command(SCORE_EXAMPLES, reranks=True)
def score(query: QueryArg, gallery: GalleryArg, ks: KsOpt = None,
          out: Annotated[Path | None, file_option(
              "Write scores (.safetensors): the [Q, G] matrix when it fits 1 GB, "
              "else the top-k per query.", "--out")] = None,
          out_topk: Annotated[int | None, typer.Option(
              "--out-topk", metavar="N", min=1,
              help="Write the top-N per query instead of the matrix.")] = None,
          *, options: EvalOptions, json: bool, shard: str | None, out_part: Path | None,
          relevance: Path | None, intervals: IntervalOptions | None,
          save_result: Path | None, rerank: RerankOptions | None = None) -> None:
    """Accuracy, top-k accuracy and hardest positive / negative scores."""
    _execute("score", query, gallery, options, ks, shard, out_part,
             outputs={"--out": out}, out_topk=out_topk, as_json=json, relevance=relevance,
             intervals=intervals, save_result=save_result, rerank=rerank)


KNN_EXAMPLES = examples(
    "embeval knn query.safetensors gallery.safetensors -k 5",
    "embeval knn train.safetensors train.safetensors --exclude-self --predictions knn.csv")


@metric_command(KNN_EXAMPLES, reranks=True)
def knn(query: QueryArg, gallery: GalleryArg,
        k: Annotated[int, typer.Option("-k", metavar="K", help="Neighbours that vote.")] = 5,
        predictions: Annotated[Path | None, file_option(
            "CSV, one row per query: label, prediction, correct.", "--predictions")] = None,
        *, options: EvalOptions, json: bool, shard: str | None, out_part: Path | None,
        relevance: Path | None, intervals: IntervalOptions | None,
        save_result: Path | None, rerank: RerankOptions | None = None) -> None:
    """k-nearest-neighbour classification accuracy (majority vote)."""
    if k <= 0:
        raise OptionError(f"-k {k}: must be at least 1")
    _execute("knn", query, gallery, options, [1], shard, out_part, knn_k=k, extra={"k": k},
             outputs={"--predictions": predictions}, as_json=json, relevance=relevance,
             intervals=intervals, save_result=save_result, rerank=rerank)


PR_EXAMPLES = examples(
    "embeval pr query.safetensors gallery.safetensors",
    "embeval pr query.safetensors gallery.safetensors --plot pr.png --curves pr.safetensors")


@metric_command(PR_EXAMPLES, reports_map=True, reranks=True)
def pr(query: QueryArg, gallery: GalleryArg,
       curves: Annotated[Path | None, file_option(
           "Per-query PR points (.safetensors, values + offsets).", "--curves")] = None,
       plot: Annotated[Path | None, file_option(
           "PNG, SVG or PDF (by the suffix) of the mean interpolated PR curve.", "--plot")] = None,
       per_query: Annotated[Path | None, file_option(
           "CSV, one row per query: ranks, AP, max F1.", "--per-query")] = None,
       *, options: EvalOptions, json: bool, shard: str | None, out_part: Path | None,
       relevance: Path | None, intervals: IntervalOptions | None,
       save_result: Path | None, rerank: RerankOptions | None = None) -> None:
    """Precision-recall: mAP and the best F1 with its precision, recall and threshold."""
    check_plot(plot)
    _execute("pr", query, gallery, options, [1], shard, out_part, pr=True,
             outputs={"--curves": curves, "--plot": plot, "--per-query": per_query}, as_json=json,
             relevance=relevance, intervals=intervals, save_result=save_result, rerank=rerank)
