"""The training engine: the loop (:mod:`.loop`), its configuration (:mod:`.config`), the model
and losses (:mod:`.model`, :mod:`.losses`), evaluation every epoch (:mod:`.evaluation`) and the
resumable run state (:mod:`.state`).

Names load on first use: the command line reads :mod:`.config` (no torch) for its defaults.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embeval.train.config import TrainConfig
    from embeval.train.loop import TrainInterrupted, TrainModel, TrainResult, build_model, train

__all__ = ["TrainConfig", "TrainResult", "TrainInterrupted", "TrainModel", "build_model", "train"]
_WHERE = {name: "config" if name == "TrainConfig" else "loop" for name in __all__}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
