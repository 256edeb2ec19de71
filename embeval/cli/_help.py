"""Help rendering: click's conventions where this Typer version departs from them.

Typer >= 0.2x (with its own copy of click) renders help with Rich and, in doing so,

* shows a value type for every option, flags included (``--json <bool>``, even
  ``--help <bool>``), although a flag takes no value: its plain formatter skips flags;
* writes required arguments in braces in the usage line (``{query} {gallery}...``), where
  click writes ``QUERY GALLERY...`` (and ``[IMAGES]`` for an optional one);
* shows an argument's Python type next to its name (``<list[Path]>``) even when it has a
  metavar.

Importing this module adjusts those three methods of Typer's parameter classes, for the
``embeval`` process only. Older Typer releases (click-based) lack these methods and are left
as they are: they already render help this way.
"""

from __future__ import annotations

from typing import Any

from typer import core

__all__ = ["ELLIPSIS"]

ELLIPSIS = "..."


def _option_type(original: Any) -> Any:
    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if self.is_flag and not self.count:
            return None  # a flag takes no value
        return original(self, ctx)

    return display_type_rich


def _argument_type(original: Any) -> Any:
    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if self.metavar is not None:
            return None  # the metavar, in the name column, says it
        return original(self, ctx)

    return display_type_rich


def _usage_display_name(self: Any) -> str:
    name = self.display_name_raw
    if self.nargs != 1 and not name.endswith(ELLIPSIS):
        name += ELLIPSIS
    return name if self.required else f"[{name}]"


def _patch() -> None:
    opt, arg = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if opt is None or arg is None or getattr(opt, "_embeval_help", False):
        return
    if "display_type_rich" in vars(opt):
        opt.display_type_rich = _option_type(opt.display_type_rich)
    if hasattr(arg, "display_type_rich"):
        arg.display_type_rich = _argument_type(arg.display_type_rich)
    if hasattr(arg, "_usage_display_name"):
        arg._usage_display_name = _usage_display_name
    opt._embeval_help = True


_patch()
