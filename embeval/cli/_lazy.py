"""A module stand-in that imports the module on first attribute access.

The command line parses and checks its arguments before torch loads (``embeval --help``,
a typo or a missing file answer in a fraction of a second); module-level names that reach
the core go through :class:`LazyModule`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """``LazyModule("embeval.engine.distributed", light="embeval._launch")``: attributes that the
    ``light`` module has come from it (no heavy import); any other attribute imports the module.
    """

    def __init__(self, name: str, *, light: str | None = None) -> None:
        self._name, self._light = name, light
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None and self._light is not None:
            light = importlib.import_module(self._light)
            if hasattr(light, attr):
                return getattr(light, attr)
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (loaded)' if self._module else ''}>"
