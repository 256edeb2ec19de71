"""Exceptions raised by the embeval core.

Every user mistake (bad file, bad option value) raises an :class:`EmbevalError`
whose message names the file or argument and the problem; the CLI prints it as
one line and exits with code 2. Anything else is a bug (exit code 1).
"""

from __future__ import annotations

__all__ = ["EmbevalError", "InputFileError", "OptionError"]


class EmbevalError(ValueError):
    """Base class of errors caused by user input."""


class InputFileError(EmbevalError):
    """A file is missing, unreadable, or does not hold what embeval needs."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OptionError(EmbevalError):
    """An option or argument value is out of range or inconsistent."""
