"""Render an :class:`~embeval.EvalResult` or a finished run (:class:`~embeval.jobs.JobResult`):
a Rich table, or one JSON object (``--json``)."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any

from rich.table import Table

from embeval.evaluation import EvalResult

if TYPE_CHECKING:
    from embeval.jobs import Hooks, JobResult
    from embeval.uncertainty import Intervals

from ._app import progress_bar, stderr, stdout

KEYS = {
    "score": lambda ks: ["accuracy", *(f"top{k}_accuracy" for k in ks), "hard_pos", "hard_neg"],
    "knn": lambda ks: ["knn_accuracy"],
    "cmc": lambda ks: [*(f"rank{k}" for k in ks), "mAP", "mINP", "MRR", "MAP@R", "R-precision",
                       *(f"P@{k}" for k in ks), *(f"nDCG@{k}" for k in ks)],
    "pr": lambda ks: ["mAP", "maxF1", "P@maxF1", "R@maxF1", "T@maxF1"],
}
SCORES = {"hard_pos", "hard_neg", "T@maxF1", "EER_threshold"}  # similarity scores, not fractions
SCORE_PREFIXES = ("threshold@",)  # threshold@FPIR=f, threshold@FAR=f (scores)
COUNTS = {"n_mated", "n_nonmated", "n_genuine", "n_impostor"}  # integers, shown as such


def _clean(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else x


def _approximate(result: EvalResult) -> bool:
    """Reduced-precision matmuls (tf32, bf16, fp16) give approximate scores and ranks."""
    return str(result.options.get("precision", "fp32")) != "fp32"


def payload(command: str, result: EvalResult, ks: list[int], extra: dict | None = None,
            keys: list[str] | None = None, ci: Intervals | None = None) -> dict:
    """The ``--json`` object of DESIGN.md section 5 (NaN → null); ``keys``: the metrics shown
    (default: the command's :data:`KEYS`); ``ci``: intervals, as ``"ci"`` (metric → [lo, hi])
    and their options in ``"options"``."""
    metrics = {k: _clean(result.metrics.get(k)) for k in (keys or KEYS[command](ks))}
    out = {"command": command, "metric": result.stats.metric, "n_query": result.n_query,
           "n_gallery": result.n_gallery}
    if hasattr(result, "n_valid"):
        out["n_valid"] = result.n_valid
    out.update(extra or {})
    out["approximate"] = _approximate(result)
    out["metrics"] = metrics
    out["options"] = result.options
    if ci is not None:
        out["ci"] = {k: v for k, v in ci.to_json().items() if k in metrics}
        out["options"] = {**result.options, **ci.options.to_dict()}
    out["elapsed_s"] = round(result.elapsed_s, 4)
    return out


def shown(key: str, value: float | None) -> str:
    """A metric as the table shows it: a percentage, a score (4 decimals) or a count."""
    if value is None:
        return "n/a"
    if key in SCORES or key.startswith(SCORE_PREFIXES):
        return f"{value:.4f}"
    if key in COUNTS:
        return f"{value:d}"
    return f"{100 * value:.2f}%"


def ci_note(ci: Intervals, keys: list[str]) -> str:
    """The table's line saying how its intervals were computed, and which metrics have none."""
    o = ci.options
    unit = ci.records if o.by == "query" else (
        "labels (identities)" if ci.records == "queries" else "query-side labels")
    text = (f"[{100 * o.level:g}% interval: percentile bootstrap over {unit}, {o.n_resamples} "
            f"resamples, seed {o.seed}]") if any(k in ci.bounds for k in keys) else ""
    missing = sorted({why for k, why in ci.reasons.items() if k in keys})
    return " · ".join([text, *(f"no interval: {why}" for why in missing)] if text else
                      [f"no interval: {why}" for why in missing])


def reranked(settings: dict) -> str:
    """The title's words for a ``rerank`` object (RerankOptions.to_dict): what changed the ranking."""
    parts = []
    if "method" in settings:
        parts.append(f"{settings['method']} k1={settings['k1']} k2={settings['k2']} "
                     f"lambda={settings['lambda']:g}")
    if "dba" in settings:
        parts.append(f"DBA k={settings['dba']}")
    if "qe" in settings:
        parts.append(f"QE {settings['qe']} k={settings['qe_k']}"
                     + (f" alpha={settings['qe_alpha']:g}" if "qe_alpha" in settings else ""))
    return "re-ranked (" + ", ".join(parts) + ")"


def render(command: str, result: EvalResult, ks: list[int], *, as_json: bool,
           extra: dict | None = None, keys: list[str] | None = None,
           note: str | None = None, ci: Intervals | None = None) -> None:
    """Print the result on stdout: one JSON object, or a table (``note``: its last line;
    ``ci``: intervals shown beside the values)."""
    data = payload(command, result, ks, extra, keys, ci)
    if as_json:
        print(json.dumps(data), file=stdout.file)
        return
    opts = result.options
    protocol = [name for name in ("exclude_same_camera", "exclude_self") if opts.get(name)]
    if opts.get("aggregate", "none") != "none":
        protocol.append(f"aggregate {opts['aggregate']}")
    title = (f"embeval {command} · {data['metric']}"
             + (f" · k={extra['k']}" if extra and "k" in extra else "")
             + (f" · --fpir-rule {extra['fpir_rule']}" if extra and extra.get("fpir_rule")
                not in (None, "embeval") else "")
             + (f" · {', '.join(protocol)}" if protocol else "")
             + (f" · {reranked(extra['rerank'])}" if extra and extra.get("rerank") else "")
             + (f" · {opts['precision']} (approximate)" if data["approximate"] else ""))
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    bounds = data.get("ci", {})
    for key, value in data["metrics"].items():
        text = shown(key, value)
        if bounds.get(key) is not None:
            lo, hi = bounds[key]
            text += f" [{shown(key, lo)}, {shown(key, hi)}]"
        table.add_row(key, text)
    stdout.print(table)
    if note is None:
        skipped = result.n_query - result.n_valid
        note = (f"{result.n_query} queries × {result.n_gallery} gallery items · {result.n_valid} with "
                f"positives" + (f" ({skipped} without: " + ("skipped" if opts.get("no_positive") == "skip"
                                                            else "counted as 0") + " for rank/mAP)"
                                if skipped else "")
                + f" · {result.elapsed_s:.2f}s")
    if ci is not None:
        note += " · " + ci_note(ci, list(data["metrics"]))
    stdout.print(note, style="dim", highlight=False, soft_wrap=True)


def cli_hooks() -> Hooks:
    """A run's notes as one stderr line each, its progress as a bar (on a terminal)."""
    from embeval.jobs import Hooks

    return Hooks(note=lambda message: stderr.print(message, highlight=False, soft_wrap=True),
                 progress=lambda description, enabled: progress_bar(description, "items",
                                                                    enabled=enabled))


def render_job(run: JobResult) -> None:
    """Print a finished run (:func:`embeval.jobs.run_job`, ``merge``): the table or the JSON object."""
    from embeval import __version__

    job, result, ci = run.job, run.result, run.ci
    provenance = {"embeval": __version__, "inputs": run.inputs} if job.as_json else {}
    if job.command == "identify":
        render_identification(job, result, job.as_json, provenance, ci)
    elif job.command == "verify":
        m = result.metrics
        note = (f"{m['n_genuine']:,} genuine and {m['n_impostor']:,} impostor trials · accept iff "
                f"score >= threshold · {result.elapsed_s:.2f}s")
        render("verify", result, [], as_json=job.as_json,
               extra={"far_rule": job.extra["far_rule"], **provenance}, keys=list(m), note=note,
               ci=ci)
    elif job.extra.get("protocol"):
        n_valid = ", ".join(f"{s} {n}" for s, n in result.n_valid.items())
        note = (f"{job.extra['protocol']}: {result.n_query} queries × {result.n_gallery} gallery "
                f"items · with positives: {n_valid} (the others skipped) · "
                f"{result.options['ap']} AP · 3 ranking passes · {result.elapsed_s:.2f}s")
        render(job.command, result, job.ks, as_json=job.as_json,
               extra={**job.extra, **provenance}, keys=list(result.metrics), note=note, ci=ci)
    else:
        render(job.command, result, job.ks, as_json=job.as_json,
               extra={**job.extra, **provenance} or None, ci=ci)
    sys.stdout.flush()


def render_identification(job: Any, ident: Any, as_json: bool, provenance: dict,
                          ci: Any = None) -> None:
    """Print an identification result (``job``: its :class:`~embeval.jobs.Job`; ``ident``: its
    ``IdentifyResult``; ``ci``: its intervals or None)."""
    omitted = getattr(ident, "omitted", {})
    # an omitted row stays, n/a, and the note says why (null in the JSON, with "omitted")
    note = (f"{ident.n_query} queries ({ident.n_mated} mated, {ident.n_nonmated} non-mated) × "
            f"{ident.n_gallery} gallery items · TPIR/rank over mated queries, FPIR over "
            f"non-mated" + "".join(f" · {key}: n/a, {why}" for key, why in omitted.items())
            + f" · {ident.elapsed_s:.2f}s")
    keys: list[str] = []
    for f in job.extra["fpirs"]:
        head = f"TPIR@FPIR={f:g}"
        keys += [head] if head in omitted else [k for k in ident.metrics if k == head or k.startswith(
            (head + ",", f"threshold@FPIR={f:g}"))]
    keys += [k for k in ident.metrics if k not in keys]
    render("identify", ident, job.ks, as_json=as_json,
           extra={"fpir_rule": job.extra["fpir_rule"], **provenance,
                  **({"omitted": omitted} if omitted else {})}, keys=keys, note=note, ci=ci)
