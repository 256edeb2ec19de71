"""``embeval`` command line: Typer commands over the core. No arithmetic here.

Exit codes: 0 success, 2 bad input or usage (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import re
import sys

import typer
import typer.main

from embeval.errors import EmbevalError

from . import (
    _help,  # noqa: F401  (click's usage conventions in the help of this Typer version)
    evaluate_cmds,  # noqa: F401  (registers score, knn, cmc, pr)
    extract_cmd,  # noqa: F401  (registers extract)
    merge_cmd,  # noqa: F401  (registers merge)
    train_cmd,  # noqa: F401  (registers train)
)
from ._app import app
from ._lazy import LazyModule
from .evaluate_cmds import examples

app.info.epilog = examples(  # the commands' own --help shows theirs
    "embeval cmc query.safetensors gallery.safetensors -k 1 5 10",
    "embeval extract run/best.safetensors --query data/query --gallery data/gallery --out-dir emb",
    "embeval cmc --help")

# Nothing above imports torch: arguments are parsed and checked first (DESIGN: start-up).
distributed = LazyModule("embeval.distributed", light="embeval._launch")  # is_leader(): no torch

__all__ = ["app", "main"]

try:  # Typer >= 0.22 ships its own copy of click
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - older Typer uses click itself
    from click import exceptions as _click_errors

MULTI_VALUE = {"-k", "--k"}  # `-k 1 5 10` means `-k 1 -k 5 -k 10`
_INT = re.compile(r"^[+-]?\d+$")


def expand_multi(argv: list[str]) -> list[str]:
    """Rewrite ``-k 1 5 10`` into repeated options, the form click parses."""
    out: list[str] = []
    flag, taken = None, 0
    for arg in argv:
        if flag and _INT.match(arg):
            out += [flag, arg]
            taken += 1
            continue
        if flag and not taken:  # `-k` followed by a non-number: let click report it
            out.append(flag)
        flag, taken = (arg, 0) if arg in MULTI_VALUE else (None, 0)
        if not flag:
            out.append(arg)
    if flag and not taken:
        out.append(flag)
    return out


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map errors to exit codes."""
    args = expand_multi(sys.argv[1:] if argv is None else list(argv))
    cmd = typer.main.get_command(app)
    prog = "embeval"
    try:
        rc = cmd.main(args=args, prog_name=prog, standalone_mode=False)
    except _click_errors.NoArgsIsHelpError:  # `embeval` alone: help (already shown), exit 2
        sys.exit(2)
    except _click_errors.UsageError as e:
        where = e.ctx.command_path if e.ctx else prog
        print(f"{where}: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except _click_errors.ClickException as e:
        print(f"{prog}: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except EmbevalError as e:
        if distributed.is_leader():  # under torchrun every rank fails alike; rank 0 says why
            print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
