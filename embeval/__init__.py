"""embeval: exact, fast retrieval / re-identification metrics from saved embeddings.

>>> import embeval
>>> q, g = embeval.load("query.safetensors"), embeval.load("gallery.safetensors")  # doctest: +SKIP
>>> embeval.evaluate(q, g, ks=(1, 5, 10)).metrics                                   # doctest: +SKIP

The public names, listed once in ``__init__.pyi``, load on first use (PEP 562, through
``lazy_loader``): ``import embeval`` and the command line's argument parsing stay free of torch,
numpy and numba until a name is needed.
"""

from embeval._blas import prefer_avx512_kernels

prefer_avx512_kernels()  # before numpy loads OpenBLAS: see embeval/_blas.py

import importlib  # noqa: E402  (after the OpenBLAS set-up, as every import here)
import importlib.util  # noqa: E402
from typing import Any  # noqa: E402

import lazy_loader  # noqa: E402  (torch-free: it imports nothing until a name is used)

__version__ = "0.1.0"

# every public name, written once in __init__.pyi (which type checkers read as well)
_stub_getattr, _, __all__ = lazy_loader.attach_stub(__name__, __file__)
__all__ = [*__all__, "__version__"]


def __getattr__(name: str) -> Any:
    """Import the submodule behind a public name on first access (``__init__.pyi``), then cache it.

    A subpackage name (``embeval.data``) imports that subpackage, as the eager package did.
    """
    try:
        return _stub_getattr(name)
    except AttributeError:
        if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
