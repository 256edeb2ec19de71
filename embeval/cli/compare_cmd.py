"""``embeval compare A B``: two models on the same queries, metric by metric (paired).

Importing this module does not import torch: the arguments are checked first.
"""

from __future__ import annotations

import json as json_module
import math
from pathlib import Path
from typing import Annotated

import typer

from embeval.options import IntervalOptions, ResamplingUnit

from ._app import app, stdout
from .evaluate_cmds import JsonOpt, KsOpt, examples, require_files

COMPARE_EXAMPLES = examples(
    "embeval cmc q.safetensors g.safetensors --save-result a.safetensors   (model A's embeddings)",
    "embeval cmc q2.safetensors g2.safetensors --save-result b.safetensors   (model B's)",
    "embeval compare a.safetensors b.safetensors",
    "embeval compare a_per_query.csv b_per_query.csv -k 1 5 --json")

ResultArg = Annotated[Path, typer.Argument(
    help="A result file (--save-result) or a --per-query CSV.", show_default=False)]


@app.command(epilog=COMPARE_EXAMPLES)
def compare(
    a: Annotated[Path, typer.Argument(metavar="A", help="The baseline: a result file "
                                                        "(--save-result) or a --per-query CSV.",
                                      show_default=False)],
    b: Annotated[Path, typer.Argument(metavar="B", help="The other model, on the same queries.",
                                      show_default=False)],
    ci: Annotated[float, typer.Option("--ci", metavar="LEVEL",
                                      help="Level of the difference's bootstrap interval.")] = 0.95,
    bootstrap: Annotated[int, typer.Option("--bootstrap", metavar="N",
                                           help="Bootstrap resamples.")] = 1000,
    permutations: Annotated[int, typer.Option(
        "--permutations", metavar="N",
        help="Random assignments of the randomisation test (all 2^d are enumerated when the d "
             "units that differ allow no more than N).")] = 10000,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Seed of both.")] = 0,
    ci_by: Annotated[ResamplingUnit, typer.Option(
        "--ci-by", metavar="UNIT",
        help="Resample and swap queries, or labels (all queries of an identity together).")
    ] = "query",
    ks: KsOpt = None,
    json: JsonOpt = False,
) -> None:
    """Is B better than A? Differences, paired bootstrap intervals and randomisation p-values."""
    from .evaluate_cmds import interval_options

    options = interval_options(ci, bootstrap, seed, ci_by)
    require_files([a, b], "a result file or a --per-query CSV")
    from embeval.uncertainty import compare as run

    ra, rb = _read(a, ks), _read(b, ks)
    result = run(ra, rb, options, n_permutations=permutations)
    out = _payload(ra, rb, result, options, permutations)
    if json:
        print(json_module.dumps(out))
        return
    _table(out, result)


def _read(path: Path, ks: list[int] | None):  # noqa: ANN202
    from embeval.uncertainty import load_result
    from embeval.uncertainty.per_query_csv import read_per_query_csv

    if path.suffix.lower() == ".csv":
        return read_per_query_csv(path, ks or [1, 5, 10])
    return load_result(path)


def _clean(x: float) -> float | None:
    return None if math.isnan(x) else x


def _payload(ra, rb, result, options: IntervalOptions | None, permutations: int) -> dict:  # noqa: ANN001
    return {
        "command": "compare",
        "a": {"file": str(ra.path), "command": ra.command},
        "b": {"file": str(rb.path), "command": rb.command},
        "n_query": ra.n_query, "paired": "trials" if ra.listed is not None else "queries",
        "n_paired": len(ra.listed.scores) if ra.listed is not None else ra.n_query,
        "n_units": result.n_units,
        "metrics": {k: {"a": _clean(m.a), "b": _clean(m.b), "diff": _clean(m.diff),
                        "ci": list(m.ci) if m.ci is not None else None, "p_value": m.p_value,
                        "p_holm": m.p_holm, "exact": m.exact, "n_differing": m.n_differing}
                    for k, m in result.metrics.items()},
        "skipped": result.skipped,
        "options": {**(options.to_dict() if options else {}),
                    "test": "paired randomisation (sign-flip), two-sided",
                    "permutations": permutations,
                    "p_adjustment": "none (p_holm: Holm's step-down over the metrics compared)"},
    }


def _table(out: dict, result) -> None:  # noqa: ANN001
    from rich.table import Table

    from .report import shown

    table = Table(title=f"embeval compare · A: {out['a']['file']} · B: {out['b']['file']}",
                  title_justify="left", show_edge=False)
    for name in ("metric", "A", "B", "B − A", "interval", "p"):
        table.add_column(name, justify="left" if name == "metric" else "right", no_wrap=True)
    for key, m in out["metrics"].items():
        diff = "n/a" if m["diff"] is None else _points(key, m["diff"])
        ci = "n/a" if m["ci"] is None else f"[{_points(key, m['ci'][0])}, {_points(key, m['ci'][1])}]"
        table.add_row(key, shown(key, m["a"]), shown(key, m["b"]), diff, ci,
                      f"{m['p_value']:.3g}" + ("*" if m["exact"] else ""))
    stdout.print(table)
    o = out["options"]
    stdout.print(f"{out['n_paired']} paired {out['paired']} ({out['n_units']} "
                 f"{out['paired'] if o['ci_by'] == 'query' else 'labels'} resampled) · B − A in "
                 f"percentage points (scores as they are), its {100 * o['ci_level']:g}% "
                 f"percentile bootstrap interval ({o['ci_resamples']} resamples, seed "
                 f"{o['ci_seed']}) · p: two-sided paired randomisation (sign-flip) test over "
                 f"{o['permutations']} random assignments, or all of them where marked * (exact) "
                 f"· p-values are not corrected for the {len(out['metrics'])} metrics compared "
                 "(--json: p_holm, Holm's adjustment)", style="dim", highlight=False,
                 soft_wrap=True)


def _points(key: str, value: float) -> str:
    """A difference: percentage points with a sign (fractions), or a signed score."""
    from .report import COUNTS, SCORE_PREFIXES, SCORES

    score = key in SCORES or key.startswith(SCORE_PREFIXES) or key in COUNTS
    text = f"{abs(value):.4f}" if score else f"{100 * abs(value):.2f}"
    return text if float(text) == 0 else ("−" if value < 0 else "+") + text
