"""``embeval identify``: open-set 1:N identification (TPIR@FPIR at rank k), one whole run.

Importing this module does not import torch: the command checks its arguments and input
files first. It runs as the other metric commands do (:mod:`._job`): whole, as a ``--shard``
of an array job (``embeval merge`` prints the identification), or under torchrun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from embeval.options import EvalOptions, IntervalOptions

from .evaluate_cmds import GalleryArg, KsOpt, QueryArg, _execute, examples, metric_command, rates

FpirRule = Literal["embeval", "insightface"]
DEFAULT_FPIRS = [1e-3, 1e-2, 1e-1]

IDENTIFY_EXAMPLES = examples(
    "embeval identify probes.safetensors gallery.safetensors --fpir 0.01 0.1 -k 1 5",
    "embeval identify probes.safetensors gallery.safetensors --fpir-rule insightface --json")


@metric_command(IDENTIFY_EXAMPLES, without=("no_positive",))
def identify(query: QueryArg, gallery: GalleryArg, ks: KsOpt = None,
             fpir: Annotated[list[float] | None, typer.Option(
                 "--fpir", metavar="F...",
                 help="False-positive identification rates in (0, 1), e.g. --fpir 0.01 0.1 "
                      "(default: 0.001 0.01 0.1).")] = None,
             fpir_rule: Annotated[FpirRule, typer.Option(
                 "--fpir-rule", metavar="RULE",
                 help="Threshold at FPIR f: embeval (above the (⌊f·N⌋+1)-th highest non-mated "
                      "top-1 score) or insightface (above the max(⌊f·N⌋, 1)-th).")] = "embeval",
             *, options: EvalOptions, json: bool, shard: str | None,
             out_part: Path | None, relevance: Path | None, intervals: IntervalOptions | None,
             save_result: Path | None) -> None:
    """Open-set identification: TPIR@FPIR at rank 1 and -k, thresholds, closed-set rank-k."""
    fpirs = rates(fpir, DEFAULT_FPIRS, "--fpir")
    _execute("identify", query, gallery, options, ks, shard, out_part,
             extra={"fpirs": fpirs, "fpir_rule": fpir_rule}, as_json=json, relevance=relevance,
             intervals=intervals, save_result=save_result)


def identification(job, result):  # noqa: ANN001, ANN201
    """The ``IdentifyResult`` of a ranking pass's ``EvalResult`` (whole or merged from shards)."""
    from embeval.verification.identify import summarize_identification

    ident = summarize_identification(result.stats, result.options, fpirs=job.extra["fpirs"],
                                     ks=job.ks, fpir_rule=job.extra["fpir_rule"])
    ident.elapsed_s = result.elapsed_s
    return ident


def render_identification(job, ident, as_json: bool, provenance: dict, ci=None) -> None:  # noqa: ANN001
    """Print an identification result (``job``: its :class:`~._job.Job`; ``ident``: its
    ``IdentifyResult``; ``ci``: its intervals or None)."""
    from .report import render

    omitted = getattr(ident, "omitted", {})
    # an omitted row stays, n/a, and the note says why (null in the JSON, with "omitted")
    note = (f"{ident.n_query} queries ({ident.n_mated} mated, {ident.n_nonmated} non-mated) × "
            f"{ident.n_gallery} gallery items · TPIR/rank over mated queries, FPIR over "
            f"non-mated" + "".join(f" · {key}: n/a, {why}" for key, why in omitted.items())
            + f" · {ident.elapsed_s:.2f}s")
    keys = []
    for f in job.extra["fpirs"]:
        head = f"TPIR@FPIR={f:g}"
        keys += [head] if head in omitted else [k for k in ident.metrics if k == head or k.startswith(
            (head + ",", f"threshold@FPIR={f:g}"))]
    keys += [k for k in ident.metrics if k not in keys]
    render("identify", ident, job.ks, as_json=as_json,
           extra={"fpir_rule": job.extra["fpir_rule"], **provenance,
                  **({"omitted": omitted} if omitted else {})}, keys=keys, note=note, ci=ci)
