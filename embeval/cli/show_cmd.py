"""``embeval show Q G --out DIR``: ranked-result images of chosen queries, and a contact sheet.

Importing this module does not import torch or Pillow: the arguments and input files are
checked first. The work is in :mod:`embeval.visual.rankings` (which queries, what they
ranked first: no Q × G matrix) and :mod:`embeval.visual.ranked` (the images).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from embeval.errors import InputFileError, OptionError
from embeval.options import EvalOptions

from ._app import app
from .evaluate_cmds import GalleryArg, QueryArg, evaluation_flags, examples, require_files

SHOW_EXAMPLES = examples(
    "embeval show runs/small/query.safetensors runs/small/gallery.safetensors --out show --worst 5",
    "embeval show q.safetensors g.safetensors --out show --queries 3,17,42 --top 8 "
    "--images-root /data/market1501")
SHEET = "contact-sheet.png"


def _query_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise OptionError(f"--queries {text}: expected query indices separated by commas "
                          "(3,17,42)") from None


@app.command(epilog=SHOW_EXAMPLES)
@evaluation_flags("metric", "device", "memory", "precision", "exclude_same_camera", "exclude_self")
def show(
    query: QueryArg,
    gallery: GalleryArg,
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="DIR", help="Folder for one PNG per query and contact-sheet.png.")] = None,
    worst: Annotated[int | None, typer.Option(
        "--worst", metavar="N", min=1, help="The N queries with the lowest AP (default: 10).")] = None,
    best: Annotated[int | None, typer.Option(
        "--best", metavar="N", min=1, help="The N queries with the highest AP.")] = None,
    queries: Annotated[str | None, typer.Option(
        "--queries", metavar="I,J,...", help="These query indices (0-based, as --per-query).")] = None,
    top: Annotated[int, typer.Option("--top", metavar="K", min=1,
                                     help="Results shown per query.")] = 10,
    images_root: Annotated[Path | None, typer.Option(
        "--images-root", metavar="DIR",
        help="Folder the files' item paths are relative to (default: each file's recorded "
             "source folder).")] = None,
    *,
    options: EvalOptions,
) -> None:
    """Images of ranked results: each chosen query and its top results, framed by ground truth.

    Frames: green = positive, red = negative, grey = excluded; with rank and score; plus a
    contact sheet of all chosen queries.
    """
    if out is None:
        raise OptionError("--out DIR: give the folder for the images")
    if sum(x is not None for x in (worst, best, queries)) > 1:
        raise OptionError("--worst, --best, --queries: choose one")
    chosen_list = _query_list(queries)
    if worst is None and best is None and chosen_list is None:
        worst = 10
    if out.exists() and not out.is_dir():
        raise InputFileError(out, "--out: is a file, expected a folder for the images")
    require_files([query, *gallery])
    _run(query, gallery, out, options, worst=worst, best=best, chosen=chosen_list, top=top,
         images_root=images_root)


def _run(query: Path, gallery: list[Path], out: Path, options: EvalOptions, *, worst: int | None,
         best: int | None, chosen: list[int] | None, top: int, images_root: Path | None) -> None:
    from embeval.data.concat import expand_paths, load_many
    from embeval.data.store import load
    from embeval.evaluation import evaluate
    from embeval.outputs import atomic_path, check_members, transaction
    from embeval.visual.ranked import contact_sheet, item_image_paths, ranked_image
    from embeval.visual.rankings import choose_queries, query_rankings

    from ._app import progress_bar, stdout

    q, g = load(query), load_many(gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    with progress_bar("ranking", "items") as update:
        result = evaluate(q, g, options, ks=(1,), progress=update)
    ap, first = result.per_query["ap"], result.per_query["first_rank"]
    picked = choose_queries(ap, worst=worst, best=best, queries=chosen)
    if not picked:
        raise OptionError("no query has a positive in the gallery: no AP to choose by "
                          "(name queries with --queries)")
    rankings = query_rankings(q, g, picked, top=min(top, g.n), options=options)
    paths = {"query": item_image_paths(q, images_root), "gallery": item_image_paths(g, images_root)}

    _check_images(rankings, paths, images_root, [q, g])

    def image_of(which: str, index: int) -> Path | None:
        found = paths[which]
        return found[index] if found is not None else None

    names = g.label_names
    width = len(str(q.n - 1))
    members = {r.index: f"query-{r.index:0{width}d}.png" for r in rankings}
    shown = [image_of("query", r.index) for r in rankings] + \
        [image_of("gallery", item.index) for r in rankings for item in r.items]
    check_members(out, [*members.values(), SHEET],
                  inputs=[query, *expand_paths(gallery), *(p for p in shown if p is not None)])
    rows, lines = [], []
    with transaction():
        for r in rankings:
            r.ap, r.first_rank = float(ap[r.index]), float(first[r.index])
            image = ranked_image(r, image_of, label_names=names)
            rows.append(image)
            target = out / members[r.index]
            with atomic_path(target, member=True) as tmp:
                image.save(tmp, format="PNG", optimize=True)
            lines.append(f"query {r.index}\tAP {r.ap:.4f}\t-> {target}")
        n = len(picked)
        queries = "query" if n == 1 else "queries"
        what = (f"{n} worst {queries} by AP" if worst is not None else
                f"{n} best {queries} by AP" if best is not None else
                f"{queries} {', '.join(map(str, picked))}")
        sheet = contact_sheet(rows, title=f"{what}  ·  {query.name} vs {gallery[0].name} "
                                          f"({options.metric})")
        with atomic_path(out / SHEET, member=True) as tmp:
            sheet.save(tmp, format="PNG", optimize=True)
    for line in [*lines, f"contact sheet\t-> {out / SHEET}"]:
        stdout.print(line, highlight=False)
    if all(p is None for p in paths.values()):
        from ._app import stderr

        stderr.print("embeval show: note: the files record no item paths: every image is a "
                     "placeholder", highlight=False, soft_wrap=True)


def _check_images(rankings: list, paths: dict[str, list[Path] | None], images_root: Path | None,
                  sets: list) -> None:
    """Say how many of the images to show are missing and where they were looked for (stderr);
    refuse (exit 2) when none is found: a wrong ``--images-root`` (or moved images)."""
    wanted = []
    for r in rankings:
        if paths["query"] is not None:
            wanted.append(paths["query"][r.index])
        if paths["gallery"] is not None:
            wanted += [paths["gallery"][item.index] for item in r.items]
    if not wanted:
        return
    from embeval.visual.ranked import is_regular_file

    missing = [p for p in wanted if not is_regular_file(p)]
    if not missing:
        return
    from ._app import stderr

    if images_root is not None:
        where = f"under --images-root {images_root}"
    else:
        sources = sorted({str(part.metadata.get("source", "")) for s in sets
                          for part in getattr(s, "parts", [s])})
        if not any(os.path.isdir(x) for x in sources):  # nowhere to look: as without paths
            stderr.print(f"embeval show: note: the files' source ({', '.join(sources)}) is not a "
                         "folder: every image is a placeholder (give --images-root DIR)",
                         highlight=False, soft_wrap=True)
            return
        where = "under the files' source " + ", ".join(sources) + " (or give --images-root DIR)"
    if len(missing) == len(wanted):
        raise OptionError(f"--images-root: none of the {len(wanted)} images to show was found {where}, "
                          f"e.g. {missing[0]}")
    stderr.print(f"embeval show: warning: {len(missing)} of {len(wanted)} images not found {where} "
                 f"(placeholders), e.g. {missing[0]}", highlight=False, soft_wrap=True)
