"""``embeval extract MODEL BENCH_ROOT --layout NAME -o OUT`` (a benchmark read as it ships) and
``embeval layouts`` (the registry). Registered by the package; no torch at import."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from embeval.errors import OptionError
from embeval.layouts.registry import LAYOUTS, LayoutInfo
from embeval.outputs import check_outputs

from ._app import app, stdout

__all__ = ["benchmark_outputs", "run_benchmark", "layouts"]


def benchmark_outputs(info: LayoutInfo, out: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(set -> embedding file, sidecar -> CSV file): one set writes ``out`` and puts its
    sidecars beside it (``lfw.safetensors`` -> ``lfw.pairs.csv``); query and gallery sets
    write ``out/query.safetensors`` and ``out/gallery.safetensors`` (and ``out/<sidecar>.csv``)."""
    if len(info.sets) == 1:
        stem = out.with_suffix("") if out.suffix == ".safetensors" else out
        return ({info.sets[0]: out},
                {s: stem.parent / f"{stem.name}.{s}.csv" for s in info.sidecars})
    return ({s: out / f"{s}.safetensors" for s in info.sets},
            {s: out / f"{s}.csv" for s in info.sidecars})


def protocol_command(info: LayoutInfo, files: dict[str, Path], sidecars: dict[str, Path],
                     counts: dict[str, int]) -> str:
    """The layout's metric command with the written files (and counts read) filled in."""
    return info.command.format(**{k: str(v) for k, v in {**counts, **files, **sidecars}.items()})


def run_benchmark(info: LayoutInfo, model: str, root: Path, out: Path | None, *,
                  model_options: dict[str, Any], prep_options: dict[str, Any],
                  run_options: dict[str, Any], resume: bool, json_out: bool) -> None:
    """Read the benchmark, embed every set, write the embeddings and sidecars together."""
    from ._app import stderr
    from ._extract_common import images_bar, make_dir, summary_table

    if out is None:
        raise OptionError(f"--layout {info.name}: give -o/--out "
                          f"{'FILE' if len(info.sets) == 1 else 'DIR (query and gallery files)'}")
    files, sidecars = benchmark_outputs(info, out)
    sidecars_or_pooled = {**sidecars, **{n: _pooled_path(info, out, n) for n in _POOLED.get(
        info.name, ())}}
    check_outputs({f"--out ({k})": v for k, v in {**files, **sidecars_or_pooled}.items()},
                  inputs=[root] + [p for p in (Path(model), model_options.get("weights")) if p])
    from embeval.engine.similarity import resolve_device
    from embeval.extract import ExtractOptions, extract_to_files
    from embeval.extract.images import Preprocessing
    from embeval.extract.models import load_model
    from embeval.layouts.registry import read_layout
    from embeval.outputs import atomic_path, transaction

    dev = resolve_device(run_options["device"])
    bench = read_layout(info, root)
    if bench.indexed and run_options["skip_bad"]:
        raise OptionError(f"--skip-bad: not with --layout {info.name} (its pairs / ground truth "
                          "index every item: a skipped image would shift them)")
    counts = ", ".join(f"{k} {v}" for k, v in bench.counts.items())
    stderr.print(f"embeval extract: {info.name} at {root}: read {counts}", highlight=False,
                 soft_wrap=True)
    weights = model_options.get("weights")
    loaded = load_model(model, weights=None if weights is None else str(weights),
                        layer=model_options.get("layer"), head=model_options.get("head"))
    base = loaded.preprocessing or Preprocessing()
    prep = Preprocessing.from_dict(base.to_dict(), **prep_options)
    flip_sum = run_options.pop("flip_sum")
    options = ExtractOptions(prep, device=dev, **{k: v for k, v in run_options.items()
                                                  if k != "device"})
    if len(info.sets) > 1:
        make_dir(out)
    meta = {"layout": info.name, **bench.metadata, **({"flip_sum": "true"} if flip_sum else {}),
            **{f"{name}_file": path.name for name, path in sidecars.items()}}  # found beside it
    start = time.perf_counter()
    with images_bar("extracting") as update:
        results = extract_to_files(loaded, [(bench.sets[s], files[s]) for s in info.sets],
                                   options, resume=resume, progress=update, metadata=meta)
    pooled = {name: _pooled_path(info, out, name) for name in bench.pooled}
    try:
        with transaction():
            for name, path in sidecars.items():
                with atomic_path(path) as tmp:
                    tmp.write_text(bench.sidecars[name], encoding="utf-8")
            if pooled:
                _write_pooled(bench, files[info.sets[0]], pooled)
    except BaseException:  # the embeddings without their pairs would be half a benchmark
        for path in files.values():
            path.unlink(missing_ok=True)
        raise
    wall = time.perf_counter() - start
    command = protocol_command(info, files, sidecars, bench.counts)
    more = [c.format(**{k: str(v) for k, v in pooled.items()}) for c in bench.commands]
    rows = [{"set": s, "path": str(path), "n": ext.embeddings.shape[0],
             "dim": ext.embeddings.shape[1], "skipped": [n for n, _ in ext.skipped],
             "resumed": len(ext.images) - ext.computed, "seconds": round(ext.seconds, 3),
             "images_per_second": round(ext.images_per_second, 1)}
            for s, (path, ext) in zip(info.sets, results)]
    if json_out:
        print(json.dumps({"command": "extract", "layout": info.name, "model": loaded.name,
                          "device": str(dev), "preprocessing": prep.to_dict(),
                          "flip": options.flip, "flip_sum": flip_sum,
                          "normalized": options.normalize, "seconds": round(wall, 3),
                          "counts": bench.counts, "files": rows,
                          "sidecars": {k: str(v) for k, v in {**sidecars, **pooled}.items()},
                          "protocol": command, "protocols": [command, *more]}))
        return
    stdout.print(summary_table(rows, f"extract: {loaded.name} on {dev}, layout {info.name}"))
    print(f"read: {counts}", flush=True)
    for r in rows:
        print(f"{r['set']}: {r['path']}", flush=True)
    for name, path in {**sidecars, **pooled}.items():
        print(f"{name}: {path}", flush=True)
    for c in (command, *more):
        print(f"protocol: {c}", flush=True)


#: template-level files a layout may write (IJB 1:N), checked before any work
_POOLED = {"ijbc": ("probe_mixed", "gallery_G1", "gallery_G2"),
           "ijbb": ("probe_mixed", "gallery_S1", "gallery_S2")}


def _pooled_path(info: LayoutInfo, out: Path, name: str) -> Path:
    """``ijbc.safetensors`` -> ``ijbc.<name>.safetensors`` (pooled templates)."""
    stem = out.with_suffix("") if out.suffix == ".safetensors" else out
    return stem.parent / f"{stem.name}.{name}.safetensors"


def _write_pooled(bench: Any, items_file: Path, pooled: dict[str, Path]) -> None:
    """Pool the written items into templates and write each 1:N list's templates (labels:
    the subject ids; rows in ascending template id)."""
    import torch

    from embeval.data.store import load, save
    from embeval.verification.pairs import pool_templates

    s = load(items_file)
    templates, ids = pool_templates(s)
    row = {int(t): i for i, t in enumerate(ids.tolist())}
    for name, path in pooled.items():
        subjects = bench.pooled[name]
        tids = sorted(subjects)
        index = torch.tensor([row[t] for t in tids], dtype=torch.int64)
        save(path, templates.embeddings[index], [subjects[t] for t in tids],
             metadata={**{k: v for k, v in s.metadata.items() if k != "label_names"},
                       "pooled": "templates", "list": name},
             extra={"templates": torch.tensor(tids, dtype=torch.int64)})


@app.command("layouts")
def layouts(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
) -> None:
    """List the benchmark layouts of [bold]extract --layout[/]: what each reads and the
    command that reproduces its protocol."""
    if json_out:
        print(json.dumps([{"name": i.name, "family": i.family, "reads": i.reads,
                           "writes": list(i.sets) + [f"{s}.csv" for s in i.sidecars],
                           "command": i.command, "note": i.note} for i in LAYOUTS]))
        return
    table = Table(title="benchmark layouts (embeval extract MODEL BENCH_ROOT --layout NAME -o OUT)",
                  title_justify="left", show_lines=True)
    for col in ("layout", "family", "reads", "then"):
        table.add_column(col, overflow="fold")
    for i in LAYOUTS:
        then = i.command + (f"  ({i.note})" if i.note else "")
        table.add_row(i.name, i.family, i.reads, then)
    stdout.print(table)
