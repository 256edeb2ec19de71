"""``embeval`` command line: Typer commands over the core. No arithmetic here.

Exit codes: 0 success, 2 bad input or usage (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import sys

import click
import typer.main

from ..errors import EmbevalError
from . import evaluate_cmds  # noqa: F401  (registers score, knn, cmc, pr)
from ._app import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map errors to exit codes."""
    cmd = typer.main.get_command(app)
    prog = "embeval"
    try:
        rc = cmd.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # `embeval` alone: show help, exit 2
        print(e.ctx.get_help() if e.ctx else str(e), file=sys.stderr)
        sys.exit(2)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else prog
        print(f"{where}: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as e:
        print(f"{prog}: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except EmbevalError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
