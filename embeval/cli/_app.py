"""The Typer app object and what every command shares: consoles and progress."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

app = typer.Typer(
    name="embeval",
    help="Exact, fast retrieval / re-identification metrics from saved embeddings.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from embeval import __version__
        print(f"embeval {__version__} (torch {version('torch')}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version of embeval (and of torch and Python) and exit.")] = False,
) -> None:
    """Exact, fast retrieval / re-identification metrics from saved embeddings."""


stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


def _is_stdout(path: object) -> bool:
    """``-``, ``/dev/stdout`` or any name of the file that standard output is."""
    if str(path) == "-":
        return True
    try:
        return os.path.samestat(os.stat(str(path)), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # a new file, or stdout without a descriptor
        return False


def results_off_stdout(outputs: Iterable[object]) -> None:
    """When one of ``outputs`` (paths, None: not given) is standard output, the command's table
    or JSON goes to stderr (``--per-query - | sort ...`` reads only the CSV); :func:`main` puts
    it back after the command."""
    if any(p is not None and _is_stdout(p) for p in outputs):
        stdout.file = sys.stderr


def check_plot(plot: Path | None) -> None:
    """Before any work: ``--plot``'s suffix names a format (.png, .svg, .pdf) and matplotlib
    loads (one line saying why not)."""
    if plot is not None:
        from embeval.visual.figures import plot_format, require_matplotlib

        plot_format(plot)
        require_matplotlib()


def interactive() -> bool:
    """True when stderr is a terminal: only then do progress bars and notes appear."""
    return sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, unit: str = "",
                 enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, total)``; draws a Rich bar on stderr only on a terminal."""
    if not enabled or not interactive():
        yield lambda done, total: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield _Update(lambda **kw: bar.update(task, **kw), description)


class _Update:
    """``update(done, total)``, and ``update.stage(text)``: a stage shown in place of the
    description until the next update (the engine's "compiling kernels (once)")."""

    def __init__(self, set_task: Callable[..., None], description: str) -> None:
        self._set, self._description, self._staged = set_task, description, False

    def __call__(self, done: int, total: int) -> None:
        extra = {"description": self._description} if self._staged else {}
        self._staged = False
        self._set(completed=done, total=total, **extra)

    def stage(self, text: str) -> None:
        self._staged = True
        self._set(description=text)
