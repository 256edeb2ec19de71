"""``embeval merge PARTS...``: the result of one run from the partial statistics of its shards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from embeval.errors import InputFileError, OptionError
from embeval.outputs import check_outputs

from ._app import app, check_plot, results_off_stdout
from .evaluate_cmds import (
    BootstrapOpt,
    CiByOpt,
    CiOpt,
    JsonOpt,
    SaveResultOpt,
    SeedOpt,
    examples,
    file_option,
    interval_options,
    require_files,
)

OUTPUTS = {"cmc": ("--per-query", "--plot"), "score": ("--out",), "knn": ("--predictions",),
           "pr": ("--curves", "--plot", "--per-query"), "identify": (), "verify": ("--roc", "--plot")}
OUTPUTS = {command: (*files, "--save-result") for command, files in OUTPUTS.items()}


MERGE_EXAMPLES = examples(
    "embeval cmc query.safetensors gallery.safetensors --shard 0/4   (array task 0 of 4, etc.)",
    "embeval merge 'cmc.part-*-of-4.safetensors' --per-query per_query.csv")


@app.command(epilog=MERGE_EXAMPLES)
def merge(
    parts: Annotated[list[Path], typer.Argument(
        metavar="PARTS...",
        help="Partial-statistics files of `--shard i/n` runs (every shard once; globs allowed).",
        show_default=False)],
    json: JsonOpt = False,
    per_query: Annotated[Path | None, file_option("cmc, pr: CSV, one row per query.", "--per-query")] = None,
    predictions: Annotated[Path | None, file_option("knn: CSV, one row per query.", "--predictions")] = None,
    curves: Annotated[Path | None, file_option("pr: per-query PR points.", "--curves")] = None,
    plot: Annotated[Path | None, file_option("cmc: the CMC curve; pr: PNG of the mean PR curve; "
                                             "verify: ROC, DET, histograms.", "--plot")] = None,
    roc: Annotated[Path | None, file_option("verify: CSV of ROC points.", "--roc")] = None,
    out: Annotated[Path | None, file_option(
        "score: scores file (top-k when the shards kept one, else the matrix, "
        "recomputed from the input files).", "--out")] = None,
    save_result: SaveResultOpt = None,
    ci: CiOpt = None,
    bootstrap: BootstrapOpt = None,
    seed: SeedOpt = None,
    ci_by: CiByOpt = None,
) -> None:
    """Combine the shards of an array job: prints exactly what one run prints (table or --json)."""
    t0 = time.perf_counter()
    intervals = interval_options(ci, bootstrap, seed, ci_by)
    require_files(parts)  # before torch loads
    from embeval.data.concat import expand_paths
    from embeval.jobs import Job, finish
    from embeval.options import RESULT_OPTIONS, EvalOptions
    from embeval.results.partials import load_parts, summarize_parts

    from .report import render_job

    part_files = expand_paths(parts)
    merged = load_parts(part_files)
    job = merged.job
    command = job["command"]
    given = {"--per-query": per_query, "--predictions": predictions, "--curves": curves,
             "--plot": plot, "--out": out, "--roc": roc, "--save-result": save_result}
    for option, path in given.items():
        if path is not None and option not in OUTPUTS[command]:
            raise OptionError(f"{option}: not an output of `embeval {command}` (the parts' command); "
                              f"it writes {', '.join(OUTPUTS[command])}")
    inputs = merged.job["inputs"]
    results_off_stdout(given.values())
    check_outputs(given, inputs=[*part_files, *(f["file"] for f in inputs["query"] + inputs["gallery"])])
    check_plot(plot)
    if command == "score" and out is not None and getattr(merged.stats, "topk_scores", None) is None:
        _check_inputs_unchanged(job)
    options = EvalOptions(**{k: job["options"][k] for k in RESULT_OPTIONS if k in job["options"]},
                          device="cpu")
    if command == "verify":
        _finish_verify(merged, job, options, given, json, t0, intervals)
        return
    run = Job(command, Path(inputs["query"][0]["file"]), [Path(f["file"]) for f in inputs["gallery"]],
              options, job["ks"], knn_k=job["knn_k"], pr=job["pr"], extra=job["extra"],
              outputs={k: v for k, v in given.items() if k in OUTPUTS[command]},
              out_topk=job["out_topk"], as_json=json, intervals=intervals,
              rerank=_rerank(job["extra"]),
              relevance=Path(inputs["relevance"][0]["file"]) if "relevance" in inputs else None)
    result = summarize_parts(merged, t0=t0)
    topn = result.stats.topk_scores.shape[1] if result.stats.topk_scores is not None else None
    render_job(finish(run, result, job["label_names"], topn if command == "score" else job["knn_k"],
                      inputs=_files(inputs)))


def _rerank(extra: dict):  # noqa: ANN202 - RerankOptions | None
    """The parts' --qe / --dba settings (the Job of the whole run), None without them."""
    if "rerank" not in extra:
        return None
    from embeval.rerank.options import RerankOptions

    return RerankOptions.from_dict(extra["rerank"])


def _files(inputs: dict) -> dict:
    """The parts' input fingerprints as a whole run's JSON object lists them (same key order, so
    the merged ``--json`` line is the single run's, byte for byte but for the elapsed time)."""
    return {side: [{"file": f["file"], "size": f["size"], "sha256": f["sha256"]}
                   for f in inputs[side]] for side in ("query", "gallery", "relevance")
            if side in inputs}


def _check_inputs_unchanged(job: dict) -> None:
    """score --out recomputes the matrix from the input files: they must be the ones ranked."""
    from embeval.results.partials import changed

    for fp in [*job["inputs"]["query"], *job["inputs"]["gallery"]]:
        if (problem := changed(fp)) is not None:
            raise InputFileError(fp["file"], f"score --out needs the input files again to write "
                                             f"the matrix, and this one {problem}")


def _finish_verify(merged, job: dict, options, given: dict, as_json: bool, t0: float,  # noqa: ANN001
                   intervals) -> None:  # noqa: ANN001
    """Sum verification parts' trial counts and print what the whole run prints."""
    from embeval.jobs import Job, finish
    from embeval.verification.verify import summarize_verification

    from .report import render_job

    inputs = job["inputs"]
    run = Job("verify", Path(inputs["query"][0]["file"]), [Path(f["file"]) for f in inputs["gallery"]],
              options, job["ks"], extra=job["extra"], as_json=as_json, intervals=intervals,
              outputs={k: v for k, v in given.items() if k in OUTPUTS["verify"]})
    result = summarize_verification(merged.stats, options, fars=job["extra"]["fars"],
                                    far_rule=job["extra"]["far_rule"],
                                    templates=job["extra"]["templates"], t0=t0)
    render_job(finish(run, result, None, None, inputs=_files(inputs)))
