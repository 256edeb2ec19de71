"""``embeval verify``: verification (ROC, TAR@FAR, EER, AUC) of all pairs or listed pairs.

Importing this module does not import torch: the command checks its arguments and input
files first, then runs the job (:mod:`embeval.jobs.verify`: whole, a ``--shard i/n`` of an array
job, or a torchrun rank) and renders it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from embeval.options import EvalOptions, IntervalOptions

from ._app import check_plot, results_off_stdout
from .evaluate_cmds import (
    QueryArg,
    examples,
    file_option,
    metric_command,
    rates,
    require_files,
)

FarRule = Literal["step", "nearest"]
FoldRule = Literal["scores", "grid"]

VERIFY_EXAMPLES = examples(
    "embeval verify faces.safetensors faces.safetensors --exclude-self --far 1e-4 1e-3",
    "embeval verify lfw.safetensors --folds 10",
    "embeval verify ijbc.safetensors ijbc.safetensors --templates --pairs ijbc_pairs.csv "
    "--far-rule nearest --roc roc.csv --plot roc.png")


OneFileGalleryArg = Annotated[list[Path] | None, typer.Argument(
    metavar="[GALLERY...]",
    help="Gallery embeddings (.safetensors): one file, several, or a quoted glob. Left out: QUERY "
         "is the gallery and its listed pairs are the file that QUERY names (extract --layout "
         "writes one beside it): embeval verify lfw.safetensors --folds 10.", show_default=False)]


@metric_command(VERIFY_EXAMPLES, ranked=False, without=("aggregate", "no_positive"))
def verify(query: QueryArg, gallery: OneFileGalleryArg = None,
           far: Annotated[list[float] | None, typer.Option(
               "--far", metavar="F...",
               help="False accept rates in (0, 1) for TAR@FAR (default: 1e-6 1e-5 1e-4 1e-3 "
                    "1e-2 1e-1; those with fewer than 1/F impostors are skipped).")] = None,
           far_rule: Annotated[FarRule, typer.Option(
               "--far-rule", metavar="RULE",
               help="TAR@FAR: step (largest TAR with FAR <= F) or nearest (insightface: the ROC "
                    "point with FAR nearest to F).")] = "step",
           pairs: Annotated[Path | None, typer.Option(
               "--pairs", metavar="CSV",
               help="Listed trials: CSV with header query,gallery[,same] (row indices, or "
                    "template ids with --templates).")] = None,
           templates: Annotated[bool, typer.Option(
               "--templates", help="Pool items by the files' 'templates' (and 'media') tensors "
                                   "into L2-normalised template embeddings first.")] = False,
           folds: Annotated[int | None, typer.Option(
               "--folds", metavar="N", min=2,
               help="LFW protocol on --pairs: N consecutive folds, threshold chosen on the "
                    "others; accuracy and its standard deviation.")] = None,
           fold_thresholds: Annotated[FoldRule, typer.Option(
               "--fold-thresholds", metavar="RULE",
               help="--folds: each fold's threshold among the other folds' scores (scores), or "
                    "on insightface's and facenet's grid, squared L2 < 0, 0.01, ..., 3.99 "
                    "(grid: reproduces their LFW accuracy).")] = "scores",
           roc: Annotated[Path | None, file_option(
               "CSV of ROC points (fpr, tpr, threshold), at most ~2000.", "--roc")] = None,
           plot: Annotated[Path | None, file_option(
               "PNG, SVG or PDF (by the suffix): ROC, DET and the score histograms.", "--plot")] = None,
           *, options: EvalOptions, json: bool, shard: str | None,
           out_part: Path | None, intervals: IntervalOptions | None,
           save_result: Path | None) -> None:
    """Verification: TAR@FAR, EER and AUC of every pair (or the listed pairs)."""
    from embeval._launch import is_leader
    from embeval.jobs.job import Job
    from embeval.jobs.verify import check_verify, verify_job

    fars = rates(far, (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), "--far")
    if not gallery:  # one file: its own gallery, with the pairs it names
        require_files([query])
    job = verify_job(Job("verify", query, gallery or [], options, [1],
                         outputs={"--roc": roc, "--plot": plot, "--save-result": save_result},
                         extra={"fars": fars, "far_rule": far_rule, "templates": templates,
                                "fold_thresholds": fold_thresholds},
                         as_json=json, intervals=intervals, pairs=pairs, folds=folds))
    check_verify(job, shard, out_part)
    require_files([query, *job.gallery])
    if job.pairs is not None:
        from embeval.data.int_csv import check_file

        check_file(job.pairs, "a CSV pairs file")
    check_plot(plot)
    from embeval.jobs import run_job

    from .report import cli_hooks, render_job

    if shard is None and is_leader():  # an output on stdout: the table goes to stderr
        results_off_stdout(job.outputs.values())
    done = run_job(job, shard=shard, out_part=out_part, hooks=cli_hooks())
    if done is not None:  # None: a --shard run, or a torchrun rank other than 0
        render_job(done)
