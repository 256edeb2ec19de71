"""``embeval verify``: verification (ROC, TAR@FAR, EER, AUC) of all pairs or listed pairs.

Importing this module does not import torch: the command checks its arguments and input
files first. An all-pairs run also runs as a ``--shard i/n`` of an array job (its part holds
the trial counts of its gallery items; ``embeval merge`` sums them and prints, and writes
``--roc``/``--plot``) or under torchrun (ranks take gallery shards, counts summed on rank 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from embeval.errors import InputFileError, OptionError
from embeval.options import EvalOptions, IntervalOptions

from .evaluate_cmds import (
    QueryArg,
    examples,
    file_option,
    metric_command,
    rates,
    require_files,
)

FarRule = Literal["step", "nearest"]

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
           roc: Annotated[Path | None, file_option(
               "CSV of ROC points (fpr, tpr, threshold), at most ~2000.", "--roc")] = None,
           plot: Annotated[Path | None, file_option(
               "PNG, SVG or PDF (by the suffix): ROC, DET and the score histograms.", "--plot")] = None,
           *, options: EvalOptions, json: bool, shard: str | None,
           out_part: Path | None, intervals: IntervalOptions | None,
           save_result: Path | None) -> None:
    """Verification: TAR@FAR, EER and AUC of every pair (or the listed pairs)."""
    from embeval._launch import requested

    fars = rates(far, (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), "--far")
    if not gallery:  # one file: its own gallery, with the pairs it names
        require_files([query])
        gallery, pairs = [query], pairs or _named_pairs(query)
    if folds is not None and pairs is None:
        raise OptionError("--folds: the LFW protocol splits listed pairs: give --pairs too")
    if pairs is not None and (options.exclude_self or options.exclude_same_camera):
        raise OptionError("--exclude-self/--exclude-same-camera: with --pairs the trials are "
                          "the listed ones")
    split = "--shard" if shard is not None else "torchrun" if requested() else None
    if split is None and out_part is not None:
        raise OptionError("--out-part needs --shard i/n")
    if split is not None:
        given = [flag for flag, used in (("--pairs", pairs), ("--templates", templates),
                                         ("--far-rule nearest", far_rule == "nearest")) if used]
        if given:
            raise OptionError(f"{given[0]}: not with {split} (listed pairs, templates and the "
                              "nearest rule are computed in one process)")
        if split == "--shard" and (roc or plot or save_result):
            flag = "--roc" if roc else "--plot" if plot else "--save-result"
            raise OptionError(f"{flag}: a --shard run writes only its partial statistics; give "
                              "output files to `embeval merge`")
    require_files([query, *gallery])
    if pairs is not None:
        from embeval.data.int_csv import check_file

        check_file(pairs, "a CSV pairs file")
    if plot:
        from embeval.visual.figures import require_matplotlib

        require_matplotlib()
    from embeval.jobs import Job

    job = Job("verify", query, gallery, options, [1],
              outputs={"--roc": roc, "--plot": plot, "--save-result": save_result},
              extra={"fars": fars, "far_rule": far_rule, "templates": templates}, as_json=json,
              intervals=intervals)
    if shard is not None:
        _shard(job, shard, out_part)
    elif requested():
        _torchrun(job)
    else:
        _whole(job, pairs, folds)


def _named_pairs(query: Path) -> Path:
    """The pairs CSV that an embedding file names in its metadata (``pairs_file``: a file name,
    looked for beside it, never a path elsewhere), as ``extract --layout`` writes it."""
    from embeval.data.store import load

    name = load(query).metadata.get("pairs_file")
    if not name:
        raise OptionError(f"GALLERY: missing, and {query} names no pairs file: give the gallery "
                          "file(s), or --pairs CSV")
    pairs = query.parent / Path(name).name
    if not pairs.is_file():
        raise InputFileError(query, f"names its pairs file {Path(name).name!r}, which is not beside "
                                    "it: give --pairs CSV")
    return pairs


def _load(job, listed: bool = False):  # noqa: ANN001, ANN202
    """Load the job's sets (torch is imported here); warn when all pairs of one file include
    every item paired with itself."""
    from embeval._launch import is_leader
    from embeval.data.concat import load_many, source_files
    from embeval.data.store import load
    from embeval.engine.similarity import resolve_device
    from embeval.jobs.run import _same_file

    from ._app import stderr

    resolve_device(job.options.device)
    q, g = load(job.query), load_many(job.gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    same = _same_file(job.query, source_files(g))
    if same and not listed and not job.options.exclude_self and is_leader():
        stderr.print(f"embeval: warning: {job.query} is the query set and the gallery, so every "
                     "item's pair with itself is a genuine trial; add --exclude-self to leave "
                     "them out (this note goes away with it)", highlight=False, soft_wrap=True)
    if job.extra["templates"] and same:
        g = q  # one file, pooled once
    return q, g


def _whole(job, pairs: Path | None, folds: int | None) -> None:  # noqa: ANN001
    from embeval.data.concat import expand_paths, source_files
    from embeval.jobs.run import _inputs
    from embeval.outputs import check_outputs
    from embeval.verification.verify import verify as run_verify

    from ._app import progress_bar, results_off_stdout

    results_off_stdout(job.outputs.values())
    check_outputs(job.outputs, inputs=[job.query, *expand_paths(job.gallery),
                                       *([pairs] if pairs else [])])
    q, g = _load(job, listed=pairs is not None)
    with progress_bar("counting trials", "items", enabled=pairs is None) as update:
        result = run_verify(q, g, job.options, fars=job.extra["fars"],
                            far_rule=job.extra["far_rule"], pairs=pairs,
                            templates=job.extra["templates"], folds=folds, progress=update)
    finish_verify(job, result, _inputs(job.query, source_files(q), source_files(g)))


def _shard(job, shard: str, out_part: Path | None) -> None:  # noqa: ANN001
    """One gallery shard of an array job: its trial counts, written as a part for `merge`."""
    import platform
    import time

    from embeval.data.concat import expand_paths
    from embeval.engine import parse_shard, shard_range
    from embeval.outputs import check_outputs
    from embeval.results.partials import Partial, save_partial
    from embeval.verification.verify import verification_stats

    from ._app import progress_bar, stderr

    i, n = parse_shard(shard)
    out_part = out_part or Path(f"verify.part-{i}-of-{n}.safetensors")
    check_outputs({"--out-part": out_part}, inputs=[job.query, *expand_paths(job.gallery)])
    t0 = time.perf_counter()
    q, g = _load(job)
    a, b = shard_range(g.n, i, n)
    with progress_bar("counting trials", "items") as update:
        stats = verification_stats(q, g, job.options, gallery_range=(a, b), progress=update)
    header = {"job": job.identity(q, g), "kind": "trials", "n_query": q.n, "shard": [i, n],
              "gallery_range": [a, b],
              "info": {"device": job.options.device, "memory": job.options.memory,
                       "host": platform.node(), "seconds": round(time.perf_counter() - t0, 3)}}
    save_partial(out_part, Partial(stats, g.labels[a:b], header))
    stderr.print(f"embeval verify: shard {i}/{n} (gallery items {a}:{b} of {g.n}) written to "
                 f"{out_part}", highlight=False, soft_wrap=True)


def _torchrun(job) -> None:  # noqa: ANN001
    """One rank of a torchrun group: a gallery shard each; counts summed onto rank 0."""
    import dataclasses
    import time

    import torch
    import torch.distributed as dist

    from embeval.data.concat import expand_paths, source_files
    from embeval.engine import distributed, shard_range
    from embeval.jobs.run import _inputs
    from embeval.outputs import check_outputs
    from embeval.verification.verify import summarize_verification, verification_stats

    from ._app import results_off_stdout, stderr

    if distributed.is_leader():
        results_off_stdout(job.outputs.values())
        check_outputs(job.outputs, inputs=[job.query, *expand_paths(job.gallery)])
    t0 = time.perf_counter()
    q, g = _load(job)
    with distributed.process_group(job.options.device) as group:
        a, b = shard_range(g.n, group.rank, group.world)
        stats = verification_stats(q, g, dataclasses.replace(job.options, device=group.device),
                                   gallery_range=(a, b))
        counts = torch.cat([stats.imp_slots, stats.imp_keys])
        dist.reduce(counts, dst=0, op=dist.ReduceOp.SUM)  # int64 on CPU (gloo and nccl)
        if group.rank != 0:
            return
        n_slots = len(stats.imp_slots)
        stats.imp_slots, stats.imp_keys = counts[:n_slots], counts[n_slots:]
        result = summarize_verification(stats, job.options, fars=job.extra["fars"], t0=t0)
        stderr.print(f"embeval verify: {group.world} ranks (gallery shards, {group.device}) "
                     "reduced onto rank 0", highlight=False, soft_wrap=True)
        finish_verify(job, result, _inputs(job.query, source_files(q), source_files(g)))


def finish_verify(job, result, inputs: dict) -> None:  # noqa: ANN001
    """Write the job's outputs (all or none), then print: a whole run, rank 0, or `merge`."""
    import sys

    from embeval import __version__
    from embeval.outputs import transaction

    from .report import render

    roc, plot = job.outputs.get("--roc"), job.outputs.get("--plot")
    ci = None
    if job.intervals is not None:
        from embeval.uncertainty import intervals

        ci = intervals(result, job.intervals)
    with transaction():
        if roc is not None:
            _write_roc(roc, result)
        if plot is not None:
            names = job.gallery[0].name + (f" (+{len(job.gallery) - 1} files)"
                                           if len(job.gallery) > 1 else "")
            _write_plot(plot, result, f"{job.query.name} vs {names} ({job.options.metric})")
        if job.outputs.get("--save-result"):
            from embeval.jobs.run import save_result

            save_result(job, result, inputs, ci)
    extra: dict = {"far_rule": job.extra["far_rule"]}
    if job.as_json:
        extra |= {"embeval": __version__, "inputs": inputs}
    m = result.metrics
    note = (f"{m['n_genuine']:,} genuine and {m['n_impostor']:,} impostor trials · accept iff "
            f"score >= threshold · {result.elapsed_s:.2f}s")
    render("verify", result, [], as_json=job.as_json, extra=extra, keys=list(m), note=note, ci=ci)
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
    from embeval.verification.plot import impostor_histogram
    from embeval.visual.figures import write_verification_plot

    c = result.curve()
    edges, counts = impostor_histogram(result.stats.imp_keys)
    write_verification_plot(path, fpr=c.fpr.numpy(), tpr=c.tpr.numpy(),
                            gen_values=result.stats.gen_values.numpy(),
                            gen_counts=result.stats.gen_counts.numpy(), imp_edges=edges,
                            imp_counts=counts, far_points=_operating_points(result), title=title)
