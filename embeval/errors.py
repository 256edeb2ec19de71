"""Exceptions raised by the embeval core.

Every user mistake (bad file, bad option value) raises an :class:`EmbevalError`
whose message names the file or argument and the problem; the CLI prints it as
one line and exits with code 2. Anything else is a bug (exit code 1).
"""

from __future__ import annotations

__all__ = ["EmbevalError", "InputFileError", "OptionError", "EmbevalWarning"]


class EmbevalError(ValueError):
    """Base class of errors caused by user input.

    ``params``: the Python parameters the message names (``"metric"``, ``"exclude_self"``),
    each by its first whole-word occurrence; the command line shows its flags there instead.
    """

    params: tuple[str, ...] = ()

    @property
    def param(self) -> str | None:
        """The parameter the error is about (the first of ``params``), or None."""
        return self.params[0] if self.params else None


def _names(param: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if param is None else (param,) if isinstance(param, str) else tuple(param)


class InputFileError(EmbevalError):
    """A file is missing, unreadable, or does not hold what embeval needs."""

    def __init__(self, path: object, problem: str, *,
                 param: str | tuple[str, ...] | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.params = _names(param)
        super().__init__(f"{self.path}: {problem}")


class OptionError(EmbevalError):
    """An option or argument value is out of range or inconsistent.

    ``param``: the parameter(s) the message names, e.g. ``OptionError("metric: unknown metric
    'l2' (...)", param="metric")``.
    """

    def __init__(self, message: str, *, param: str | tuple[str, ...] | None = None) -> None:
        self.params = _names(param)
        super().__init__(message)


class EmbevalWarning(UserWarning):
    """Something the user should know that changes no number (a slower path taken); the CLI
    prints it as one line, ``embeval: warning: ...``."""
