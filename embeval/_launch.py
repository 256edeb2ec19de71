"""How this process was launched (torchrun or not), from the environment alone: no torch.

:mod:`embeval.engine.distributed` re-exports these; the command line asks them on its error path,
before (or without) importing torch.
"""

from __future__ import annotations

import os

__all__ = ["requested", "is_leader"]


def requested() -> bool:
    """True when launched by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_leader() -> bool:
    """True on rank 0, or outside torchrun: the process that prints."""
    return not requested() or int(os.environ.get("RANK", "0")) == 0
