"""``embeval verify``: verification (ROC, TAR@FAR, EER, AUC) of all pairs or listed pairs.

Importing this module does not import torch: the command checks its arguments and input
files first. ``--shard``/``--out-part`` and torchrun are refused (one line): the trial
statistics merge by addition (``VerifyStats.merge``), but ``embeval merge`` does not read
verification parts yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from embeval.errors import OptionError
from embeval.options import EvalOptions

from .evaluate_cmds import GalleryArg, QueryArg, examples, file_option, metric_command, require_files

FarRule = Literal["step", "nearest"]

VERIFY_EXAMPLES = examples(
    "embeval verify faces.safetensors faces.safetensors --exclude-self --far 1e-4 1e-3",
    "embeval verify lfw.safetensors lfw.safetensors --pairs pairs.csv --folds 10",
    "embeval verify ijbc.safetensors ijbc.safetensors --templates --pairs ijbc_pairs.csv "
    "--far-rule nearest --roc roc.csv --plot roc.png")


@metric_command(VERIFY_EXAMPLES)
def verify(query: QueryArg, gallery: GalleryArg,
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
           roc: Annotated[Path | None, file_option(
               "CSV of ROC points (fpr, tpr, threshold), at most ~2000.", "--roc")] = None,
           plot: Annotated[Path | None, file_option(
               "PNG: ROC, DET and the score histograms (needs matplotlib).", "--plot")] = None,
           *, options: EvalOptions, json: bool, shard: str | None,
           out_part: Path | None) -> None:
    """Verification: TAR@FAR, EER and AUC of every pair (or the listed pairs)."""
    from embeval._launch import requested

    fars = far or [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    for f in fars:
        if not 0.0 < f < 1.0:
            raise OptionError(f"--far {f:g}: must be between 0 and 1 (exclusive)")
    if shard is not None or out_part is not None:
        flag = "--shard" if shard is not None else "--out-part"
        raise OptionError(f"{flag}: embeval verify runs whole (no array-job shards yet)")
    if requested():
        raise OptionError("embeval verify: not under torchrun yet; run it as one process")
    if options.no_positive != "skip":
        raise OptionError("--no-positive: verify counts trials, not queries")
    if folds is not None and pairs is None:
        raise OptionError("--folds: the LFW protocol splits listed pairs: give --pairs too")
    if pairs is not None and (options.exclude_self or options.exclude_same_camera):
        raise OptionError("--exclude-self/--exclude-same-camera: with --pairs the trials are "
                          "the listed ones")
    require_files([query, *gallery, *([pairs] if pairs else [])])
    if plot:
        from embeval.results.writers import require_matplotlib

        require_matplotlib()
    _run(query, gallery, options, fars, far_rule, pairs, templates, folds, roc, plot, json)


def _run(query: Path, gallery: list[Path], options: EvalOptions, fars: list[float],
         rule: str, pairs: Path | None, templates: bool, folds: int | None,
         roc: Path | None, plot: Path | None, as_json: bool) -> None:
    """Load, count (one pass), write the outputs, print: torch is imported here."""
    import sys

    from embeval import __version__
    from embeval.data.concat import expand_paths, load_many, source_files
    from embeval.data.store import load
    from embeval.engine.similarity import resolve_device
    from embeval.outputs import check_outputs, transaction
    from embeval.verification.verify import verify as run_verify

    from ._app import progress_bar
    from ._job import _inputs, _same_file
    from .report import render

    check_outputs({"--roc": roc, "--plot": plot},
                  inputs=[query, *expand_paths(gallery), *([pairs] if pairs else [])])
    resolve_device(options.device)
    q, g = load(query), load_many(gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    if templates and _same_file(query, source_files(g)):
        g = q  # one file, pooled once
    with progress_bar("counting trials", "items", enabled=pairs is None) as update:
        result = run_verify(q, g, options, fars=fars, far_rule=rule, pairs=pairs,
                            templates=templates, folds=folds, progress=update)
    with transaction():
        if roc is not None:
            _write_roc(roc, result)
        if plot is not None:
            _write_plot(plot, result, f"{query.name} vs {gallery[0].name} ({options.metric})")
    extra: dict = {"far_rule": rule}
    if as_json:
        extra |= {"embeval": __version__, "inputs": _inputs(query, source_files(q), source_files(g))}
    m = result.metrics
    note = (f"{m['n_genuine']:,} genuine and {m['n_impostor']:,} impostor trials · accept iff "
            f"score >= threshold · {result.elapsed_s:.2f}s")
    render("verify", result, [], as_json=as_json, extra=extra,  # type: ignore[arg-type]
           keys=list(m), note=note)
    sys.stdout.flush()


def _operating_points(result) -> dict[float, tuple[float, float]]:  # noqa: ANN001
    """{FAR: (TAR, threshold)} of the requested FARs that were computed."""
    m = result.metrics
    return {float(k.split("=", 1)[1]): (m[k], m.get(k.replace("TAR@", "threshold@"), float("nan")))
            for k in m if k.startswith("TAR@FAR=")}


def _write_roc(path: Path, result) -> None:  # noqa: ANN001
    import torch

    from embeval.verification.plot import thin_roc, write_roc_csv

    c = result.curve()
    keep = [int(torch.searchsorted(c.tp, c.tp[i].reshape(1))[0])  # the TAR@FAR points
            for i in _far_vertices(c, result)]
    idx = thin_roc(c.fpr.numpy(), c.tpr.numpy(), c.threshold.numpy(), keep_fprs=keep)
    write_roc_csv(path, c.fpr.numpy()[idx], c.tpr.numpy()[idx], c.threshold.numpy()[idx])


def _far_vertices(c, result) -> list[int]:  # noqa: ANN001
    """Index of the last ROC point with FAR <= F, for each requested F."""
    import torch

    from embeval.verification.roc import far_count

    out = []
    for f in _operating_points(result):
        m = far_count(f, c.n_impostor)
        out.append(int(torch.searchsorted(c.fp, torch.tensor([m]), right=True)[0]) - 1)
    return out


def _write_plot(path: Path, result, title: str) -> None:  # noqa: ANN001
    from embeval.verification.plot import impostor_histogram, write_verification_plot

    c = result.curve()
    edges, counts = impostor_histogram(result.stats.imp_keys)
    write_verification_plot(path, fpr=c.fpr.numpy(), tpr=c.tpr.numpy(),
                            gen_values=result.stats.gen_values.numpy(),
                            gen_counts=result.stats.gen_counts.numpy(), imp_edges=edges,
                            imp_counts=counts, far_points=_operating_points(result), title=title)
