"""A whole evaluation run as the command line does it, from Python: :func:`run_job` takes a
:class:`Job` (the command, the files, the options, the output files) through statistics and
result to the output files, and returns a :class:`JobResult` (:mod:`.run`; verify: :mod:`.verify`).

The names, listed once in ``__init__.pyi``, load on first use (``lazy_loader``): the command
line builds and checks a :class:`Job` (:mod:`.job`, torch-free) before the core loads.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
