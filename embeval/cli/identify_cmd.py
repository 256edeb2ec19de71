"""``embeval identify``: open-set 1:N identification (TPIR@FPIR at rank k), one whole run.

Importing this module does not import torch: the command checks its arguments and input
files first. ``--shard``/``--out-part`` and torchrun are refused (one line): the statistics
would merge exactly, but ``embeval merge`` does not summarise identification yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from embeval.errors import OptionError
from embeval.options import EvalOptions

from .evaluate_cmds import (
    GalleryArg,
    KsOpt,
    QueryArg,
    default_ks,
    examples,
    metric_command,
    require_files,
)

FpirRule = Literal["embeval", "insightface"]
DEFAULT_FPIRS = [1e-3, 1e-2, 1e-1]

IDENTIFY_EXAMPLES = examples(
    "embeval identify probes.safetensors gallery.safetensors --fpir 0.01 0.1 -k 1 5",
    "embeval identify probes.safetensors gallery.safetensors --fpir-rule insightface --json")


@metric_command(IDENTIFY_EXAMPLES)
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
             out_part: Path | None) -> None:
    """Open-set identification: TPIR@FPIR at rank 1 and -k, thresholds, closed-set rank-k."""
    from embeval._launch import requested

    fpirs = fpir or DEFAULT_FPIRS
    for f in fpirs:
        if not 0.0 < f < 1.0:
            raise OptionError(f"--fpir {f:g}: must be between 0 and 1 (exclusive)")
    if shard is not None or out_part is not None:
        flag = "--shard" if shard is not None else "--out-part"
        raise OptionError(f"{flag}: embeval identify runs whole (no array-job shards yet)")
    if requested():
        raise OptionError("embeval identify: not under torchrun yet; run it as one process")
    if options.no_positive != "skip":
        raise OptionError("--no-positive: identify ranks mated queries only (the others are "
                          "its non-mated searches)")
    require_files([query, *gallery])
    _run(query, gallery, options, default_ks(ks, gallery), fpirs, fpir_rule, json)


def _run(query: Path, gallery: list[Path], options: EvalOptions, ks: list[int],
         fpirs: list[float], rule: str, as_json: bool) -> None:
    """Load, rank (one pass), summarise and print: torch is imported here."""
    import sys

    from embeval import __version__
    from embeval.data.concat import load_many, source_files
    from embeval.data.store import load
    from embeval.engine.similarity import resolve_device
    from embeval.verification.identify import identify as run_identify

    from ._app import progress_bar, stderr
    from ._job import _inputs, _same_file
    from .report import render

    resolve_device(options.device)
    q, g = load(query), load_many(gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    if not options.exclude_self and options.aggregate == "none" and _same_file(query, source_files(g)):
        stderr.print(f"embeval: warning: {query} is the query set and the gallery, so every "
                     "query finds itself at rank 1; add --exclude-self for leave-one-out "
                     "(this note goes away with it)", highlight=False, soft_wrap=True)
    with progress_bar("ranking", "items") as update:
        result = run_identify(q, g, options, fpirs=fpirs, ks=ks, fpir_rule=rule, progress=update)
    extra: dict = {"fpir_rule": rule}
    if as_json:
        extra |= {"embeval": __version__, "inputs": _inputs(query, source_files(q), source_files(g))}
    note = (f"{result.n_query} queries ({result.n_mated} mated, {result.n_nonmated} non-mated) × "
            f"{result.n_gallery} gallery items · TPIR/rank over mated queries, FPIR over "
            f"non-mated · {result.elapsed_s:.2f}s")
    # IdentifyResult has the fields that render reads of an EvalResult
    render("identify", result, ks, as_json=as_json, extra=extra,  # type: ignore[arg-type]
           keys=list(result.metrics), note=note)
    sys.stdout.flush()
