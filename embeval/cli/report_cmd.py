"""``embeval report``: one self-contained HTML report (:mod:`embeval.visual.report`).

Two forms: ``embeval report QUERY GALLERY... --out report.html`` evaluates (as ``cmc`` with
``pr``'s metrics, and bootstrap intervals at 95% unless ``--no-ci``), and ``embeval report
RESULT.safetensors --out report.html [--query Q --gallery G]`` draws a saved result (the
embedding files, when given, add the worst queries' thumbnails). Importing this module does
not import torch: the arguments and input files are checked first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from embeval.errors import InputFileError, OptionError
from embeval.options import EvalOptions

from ._app import app
from .evaluate_cmds import (
    BootstrapOpt,
    CiByOpt,
    KsOpt,
    SaveResultOpt,
    SeedOpt,
    evaluation_flags,
    examples,
    interval_options,
    require_files,
)

REPORT_EXAMPLES = examples(
    "embeval report runs/small/query.safetensors runs/small/gallery.safetensors --out report.html",
    "embeval report best.result.safetensors --out best.html --query q.safetensors --gallery g.safetensors",
    "embeval report q.safetensors g.safetensors --out r.html --no-ci --worst 20 --top 10")


@app.command(epilog=REPORT_EXAMPLES)
@evaluation_flags("metric", "device", "memory", "precision", "exclude_same_camera", "exclude_self",
                  "aggregate", "no_positive", "ap")
def report(
    inputs: Annotated[list[Path], typer.Argument(
        metavar="INPUT...", show_default=False,
        help="QUERY GALLERY... embedding files (evaluated here), or one result file "
             "(--save-result of a metric command).")],
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="FILE", help="The HTML report (one file: plots and images inline).")] = None,
    ks: KsOpt = None,
    worst: Annotated[int, typer.Option(
        "--worst", metavar="N", min=0, help="Show the N queries with the lowest AP (0: none).")] = 10,
    top: Annotated[int, typer.Option("--top", metavar="K", min=1,
                                     help="Ranked results shown per worst query.")] = 8,
    query_file: Annotated[Path | None, typer.Option(
        "--query", metavar="FILE",
        help="With a result file: the query embeddings it ranked (for thumbnails).")] = None,
    gallery_file: Annotated[list[Path] | None, typer.Option(
        "--gallery", metavar="FILE",
        help="With a result file: the gallery embeddings it ranked (repeat for several files).")
    ] = None,
    images_root: Annotated[Path | None, typer.Option(
        "--images-root", metavar="DIR",
        help="Folder the files' item paths are relative to (default: each file's recorded "
             "source folder).")] = None,
    title: Annotated[str, typer.Option("--title", metavar="TEXT", help="The report's title.")] = "",
    ci: Annotated[float | None, typer.Option(
        "--ci", metavar="LEVEL", help="Interval level when evaluating (default 0.95).")] = None,
    no_ci: Annotated[bool, typer.Option("--no-ci", help="Evaluate without intervals.")] = False,
    bootstrap: BootstrapOpt = None,
    seed: SeedOpt = None,
    ci_by: CiByOpt = None,
    save_result: SaveResultOpt = None,
    *,
    options: EvalOptions,
) -> None:
    """One offline HTML report: metrics with intervals, plots, per-query table, worst queries.

    It holds the options and input fingerprints, CMC / PR / score plots (ROC / DET for verify
    results), a sortable per-query table and the worst queries with their ranked thumbnails.
    """
    if out is None:
        raise OptionError("--out FILE: give the report's file name (e.g. --out report.html)")
    saved_form = len(inputs) == 1 and inputs[0].is_file() and _is_result(inputs[0])
    if saved_form:
        given = [f for f, v in (("-k", ks), ("--ci", ci), ("--bootstrap", bootstrap),
                                ("--seed", seed), ("--ci-by", ci_by),
                                ("--save-result", save_result)) if v] + (["--no-ci"] if no_ci else [])
        if given:
            raise OptionError(f"{given[0]}: sets how QUERY GALLERY are evaluated; a result file "
                              "is shown as it was saved")
        if (query_file is None) != (not gallery_file):
            raise OptionError("--query, --gallery: give both (the embedding files the result "
                              "ranked) or neither")
        require_files([inputs[0], *([query_file] if query_file else []), *(gallery_file or [])])
        _check_outputs(out, None, [inputs[0], *([query_file] if query_file else []),
                                   *(gallery_file or [])])
        _from_result(inputs[0], out, query_file, gallery_file or None, worst=worst, top=top,
                     images_root=images_root, title=title, device=options.device,
                     memory=options.memory)
        return
    if query_file is not None or gallery_file:
        raise OptionError("--query, --gallery: only with a result file (give QUERY GALLERY as "
                          "arguments to evaluate them)")
    if len(inputs) < 2:
        require_files(inputs, "a result file or QUERY GALLERY embedding files")
        if not inputs[0].is_file():  # never opened: a FIFO would block
            raise InputFileError(inputs[0], "is not a regular file (a FIFO, device or socket?), "
                                            "expected a result file")
        raise InputFileError(inputs[0], "is not an embeval result file: give a result file "
                                        "(--save-result), or QUERY GALLERY embedding files")
    require_files(inputs)
    if no_ci and ci is not None:
        raise OptionError("--ci, --no-ci: choose one")
    intervals = None if no_ci else interval_options(0.95 if ci is None else ci, bootstrap, seed,
                                                    ci_by)
    if no_ci:
        interval_options(None, bootstrap, seed, ci_by)  # --bootstrap & co. need intervals
    _check_outputs(out, save_result, inputs)
    _evaluate(inputs[0], inputs[1:], out, options, ks, intervals, save_result, worst=worst,
              top=top, images_root=images_root, title=title)


def _is_result(path: Path) -> bool:
    """Whether ``path`` is a safetensors file whose metadata says it is a result file (read from
    its header alone, without torch)."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return False
            n = struct.unpack("<Q", head)[0]
            if not 2 <= n <= 100 << 20:
                return False
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(meta, dict) and "embeval.result" in meta


def _check_outputs(out: Path, save_result: Path | None, inputs: list[Path]) -> None:
    from embeval.data.concat import expand_paths
    from embeval.outputs import check_outputs

    check_outputs({"--out": out, "--save-result": save_result}, inputs=expand_paths(inputs))


def _from_result(path: Path, out: Path, query_file: Path | None, gallery_files: list[Path] | None,
                 **kw: Any) -> None:
    from embeval.uncertainty import load_result

    saved = load_result(path)
    q = g = None
    if query_file is not None and gallery_files:
        from embeval.data.concat import load_many
        from embeval.data.store import load

        q, g = load(query_file), load_many(gallery_files)
    _write(out, saved, q, g, None, **kw)


def _evaluate(query: Path, gallery: list[Path], out: Path, options: EvalOptions,
              ks: list[int] | None, intervals: Any, save_result: Path | None, **kw: Any) -> None:
    from embeval.data.concat import load_many, source_files
    from embeval.data.store import load
    from embeval.evaluation import evaluate
    from embeval.jobs.job import fingerprints
    from embeval.uncertainty import intervals as compute_intervals
    from embeval.uncertainty import saved_result
    from embeval.uncertainty.saved import query_items

    from ._app import progress_bar
    from .evaluate_cmds import default_ks

    q, g = load(query), load_many(gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    chosen = default_ks(ks, gallery)
    with progress_bar("ranking", "items") as update:
        result = evaluate(q, g, options, ks=chosen, pr=True, progress=update)
    ci = compute_intervals(result, intervals) if intervals is not None else None
    inputs = fingerprints(query, source_files(q), source_files(g))
    saved = saved_result("cmc", result, inputs={**inputs, "query_items": query_items(
        q.labels, q.cameras, q.paths)}, extra={"ks": chosen, "knn_k": None, "pr": True},
        intervals=None if ci is None else {"ci": ci.to_json(), "options": ci.options.to_dict()})
    from embeval.outputs import transaction

    with transaction():
        if save_result is not None:
            from embeval.uncertainty import save_result as save

            save(save_result, saved)
        _write(out, saved, q, g, result.pr_curves, options=options, **kw)


def _write(out: Path, saved: Any, q: Any, g: Any, pr_curves: Any, *, worst: int, top: int,
           images_root: Path | None, title: str, options: EvalOptions | None = None,
           device: str = "auto", memory: str | None = None) -> None:
    from embeval.visual.report import write_report

    from ._app import stdout

    ranking = None
    if options is not None:
        ranking = EvalOptions(metric=options.metric, exclude_same_camera=options.exclude_same_camera,
                              exclude_self=options.exclude_self, precision=options.precision,
                              device=options.device, memory=options.memory)
    elif q is not None:
        o = saved.options
        ranking = EvalOptions(metric=o.get("metric", "cosine"),
                              exclude_same_camera=bool(o.get("exclude_same_camera", False)),
                              exclude_self=bool(o.get("exclude_self", False)),
                              precision=o.get("precision", "fp32"), device=device, memory=memory)
    write_report(out, saved, query=q, gallery=g, pr_curves=pr_curves, worst=worst, top=top,
                 options=ranking, images_root=images_root, title=title)
    stdout.print(f"report\t-> {out}", highlight=False)
