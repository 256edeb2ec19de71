"""``embeval`` command line: Typer commands over the core. No arithmetic here.

Exit codes: 0 success, 2 bad input or usage (one line on stderr), 1 internal error,
130 interrupted (Ctrl-C), 141 standard output closed early (``embeval ... | head``: quietly,
as a Unix tool stopped by SIGPIPE).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

import typer
import typer.main

from embeval.errors import EmbevalError, EmbevalWarning, InputFileError

from . import (
    _help,  # noqa: F401  (click's usage conventions in the help of this Typer version)
    bench_cmd,  # noqa: F401  (registers layouts)
    compare_cmd,  # noqa: F401  (registers compare)
    convert_cmd,  # noqa: F401  (registers convert)
    evaluate_cmds,  # noqa: F401  (registers score, knn, cmc, pr)
    extract_cmd,  # noqa: F401  (registers extract)
    identify_cmd,  # noqa: F401  (registers identify)
    merge_cmd,  # noqa: F401  (registers merge)
    report_cmd,  # noqa: F401  (registers report)
    show_cmd,  # noqa: F401  (registers show)
    train_cmd,  # noqa: F401  (registers train)
    verify_cmd,  # noqa: F401  (registers verify)
)
from ._app import app
from ._lazy import LazyModule
from .evaluate_cmds import examples

app.info.epilog = examples(  # the commands' own --help shows theirs
    "embeval cmc query.safetensors gallery.safetensors -k 1 5 10",
    "embeval extract run/best.safetensors --query data/query --gallery data/gallery --out-dir emb",
    "embeval cmc --help")

# Nothing above imports torch: arguments are parsed and checked first (DESIGN: start-up).
distributed = LazyModule("embeval.engine.distributed", light="embeval._launch")  # is_leader(): no torch

__all__ = ["app", "main"]

try:  # Typer >= 0.22 ships its own copy of click
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - older Typer uses click itself
    from click import exceptions as _click_errors  # type: ignore[no-redef]

MULTI_VALUE = {"-k", "--k", "--fpir", "--far"}  # `-k 1 5 10` means `-k 1 -k 5 -k 10`
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
FLOAT_VALUED = {"--fpir", "--far"}  # multi-value flags whose values are decimals (1e-3 0.01)


def expand_multi(argv: list[str]) -> list[str]:
    """Rewrite ``-k 1 5 10`` into repeated options, the form click parses."""
    out: list[str] = []
    flag, taken = None, 0
    for arg in argv:
        if flag and (_INT.match(arg) or flag in FLOAT_VALUED and _FLOAT.match(arg)):
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


SINGLE_K = {"knn"}  # commands whose -k takes one number
INTERRUPTED, BROKEN_PIPE = 130, 141


def _single_k(args: list[str]) -> str | None:
    """The error for ``knn -k 1 5`` (click would silently keep the last value), else None."""
    command = next((a for a in args if not a.startswith("-")), None)
    values = [b for a, b in zip(args, args[1:]) if a in MULTI_VALUE]
    if command in SINGLE_K and len(values) > 1:
        return f"embeval {command}: error: -k takes one number, got {' '.join(values)}"
    return None


def _broken_pipe(e: SystemExit) -> bool:
    """True for the ``exit(1)`` that Rich and Typer raise when standard output is closed."""
    cause = e.__context__
    return e.code == 1 and isinstance(cause, OSError) and cause.errno == errno.EPIPE


#: Python parameter -> the flag that sets it, where it is not ``--`` + the name with dashes
FLAGS = {"ks": "-k", "knn_k": "-k (kNN)", "train": "TRAIN_DIR", "level": "--ci",
         "n_resamples": "--bootstrap", "n_permutations": "--permutations", "by": "--ci-by",
         "lam": "--lambda"}
_WORD = r"(?<![\w-]){}(?!\w)"


def flag_message(e: EmbevalError) -> str:
    """The error's message as the command line says it: each Python parameter the core names
    (``e.params``, first whole-word occurrence) shown as its flag (``exclude_self`` ->
    ``--exclude-self``, ``ks`` -> ``-k``). The one place where parameters become flags."""
    text = e.problem if isinstance(e, InputFileError) else str(e)  # not in the file's name
    for name in e.params:
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        text = re.sub(_WORD.format(re.escape(name)), flag.replace("\\", r"\\"), text, count=1)
    return f"{e.path}: {text}" if isinstance(e, InputFileError) else text


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map errors to exit codes."""
    args = expand_multi(sys.argv[1:] if argv is None else list(argv))
    if (problem := _single_k(args)) is not None:
        print(problem, file=sys.stderr)
        sys.exit(2)
    cmd = typer.main.get_command(app)
    prog = "embeval"
    interrupted = _Interrupted()
    try:
        with interrupted, _warnings_as_lines(prog):
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
            print(f"{prog}: error: {flag_message(e)}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        rc = INTERRUPTED
    except BrokenPipeError:
        rc = BROKEN_PIPE
    except SystemExit as e:
        if _broken_pipe(e):
            rc = BROKEN_PIPE
        else:
            raise
    except Exception:
        if not interrupted.seen:
            raise
        rc = INTERRUPTED  # what a Ctrl-C broke is the interrupt, not a bug (numba, for one,
        # turns it into a RuntimeError when it arrives while compiling)
    finally:
        from ._app import stdout

        stdout.file = None  # type: ignore[assignment]  # back to sys.stdout (results_off_stdout)
    if rc == INTERRUPTED and interrupted.seen:  # Typer turns Ctrl-C into a silent exit code 130
        print(f"{prog}: interrupted", file=sys.stderr)
    if rc == BROKEN_PIPE:  # the reader is gone: nothing to say, and no one to say it to
        _silence_stdout()
    sys.exit(rc if isinstance(rc, int) else 0)


@contextlib.contextmanager
def _warnings_as_lines(prog: str) -> Iterator[None]:
    """Within the block, an :class:`EmbevalWarning` is printed as one line on stderr
    (``embeval: warning: ...``, by the leader rank only); other warnings as Python prints them."""
    with warnings.catch_warnings():
        python = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if not issubclass(category, EmbevalWarning):
                python(message, category, filename, lineno, file, line)
            elif distributed.is_leader():
                print(f"{prog}: warning: {message}", file=sys.stderr)

        warnings.showwarning = show
        yield


class _Interrupted:
    """Within the block, Ctrl-C raises KeyboardInterrupt as usual and is remembered (``seen``),
    so that the one-line note is ours to print; a command that handles SIGINT itself (train
    stops after its step and says how to resume) installs its own handler and says its own line.
    An interrupt raised where Python can only report it (a C callback: numba compiling) is not
    reported as "Exception ignored ..." but left to the one line."""

    def __init__(self) -> None:
        self.seen = False
        self._old: object = None
        self._old_hook = sys.unraisablehook

    def _handler(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def _unraisable(self, info: object) -> None:
        if not (self.seen and getattr(info, "exc_type", None) is KeyboardInterrupt):
            self._old_hook(info)  # type: ignore[arg-type]

    def __enter__(self) -> _Interrupted:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
            sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)  # type: ignore[arg-type]
            sys.unraisablehook = self._old_hook


def _silence_stdout() -> None:
    """Point standard output at /dev/null so the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
