"""What ``extract`` and its benchmark layouts (:mod:`.bench_cmd`) share: the summary table,
the output folder and the progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from embeval.errors import InputFileError

from ._app import interactive, stderr


def summary_table(rows: list[dict], title: str) -> Table:
    """One row per written file: set, N, D, skipped images, images/s (the files follow it)."""
    table = Table(title=title, title_justify="left")
    for col in ("set", "N", "D", "skipped", "images/s"):
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["set"], str(r["n"]), str(r["dim"]), str(len(r["skipped"])),
                      f"{r['images_per_second']:.0f}")
    return table


def make_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise InputFileError(path, "--out-dir: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputFileError(path, f"--out-dir: cannot create ({e.strerror or e})") from None


@contextmanager
def images_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """``update(done, total)`` drawing a bar with images/s on stderr, only on a terminal."""
    if not interactive():
        yield lambda done, total: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=None, rate="")
        state: dict[str, Any] = {"t0": time.perf_counter(), "first": None}

        def update(done: int, total: int) -> None:
            if state["first"] is None:  # resumed images do not count towards the rate
                state["first"], state["t0"] = done, time.perf_counter()
            dt = time.perf_counter() - state["t0"]
            rate = f"{(done - state['first']) / dt:,.0f} img/s" if dt > 0 and done else ""
            bar.update(task, completed=done, total=total, rate=rate)

        yield update
