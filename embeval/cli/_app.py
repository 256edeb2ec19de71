"""The Typer app object and what every command shares: consoles and progress."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        yield lambda done, total: bar.update(task, completed=done, total=total)
