"""``embeval identify``: open-set 1:N identification (TPIR@FPIR at rank k), one whole run.

Importing this module does not import torch: the command checks its arguments and input
files first. It runs as the other metric commands do (:mod:`embeval.jobs`): whole, as a ``--shard``
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
