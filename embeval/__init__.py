"""embeval: exact, fast retrieval / re-identification metrics from saved embeddings.

>>> import embeval
>>> q, g = embeval.load("query.safetensors"), embeval.load("gallery.safetensors")  # doctest: +SKIP
>>> embeval.evaluate(q, g, ks=(1, 5, 10)).metrics                                   # doctest: +SKIP

The public names below load on first use (PEP 562): ``import embeval`` and the command
line's argument parsing stay free of torch, numpy and numba until a name is needed.
"""

from embeval._blas import prefer_avx512_kernels

prefer_avx512_kernels()  # before numpy loads OpenBLAS: see embeval/_blas.py

import importlib  # noqa: E402  (after the OpenBLAS set-up, as every import here)
import importlib.util  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from embeval.errors import EmbevalError, InputFileError, OptionError  # noqa: E402  (no torch)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these
    from embeval import metrics
    from embeval.data.concat import ConcatSet, load_many
    from embeval.data.relevance import Relevance, read_relevance, save_relevance
    from embeval.data.store import EmbeddingSet, load, save
    from embeval.engine.rank import positive_pairs, rank_stats
    from embeval.engine.similarity import METRICS, scores
    from embeval.engine.stats import Protocol, RankStats
    from embeval.engine.trial_pass import trial_stats
    from embeval.engine.trials import VerifyStats
    from embeval.evaluate import EvalResult, aggregate_mean, evaluate, evaluation_stats, summarize
    from embeval.extract.embed import embed, evaluate_model
    from embeval.options import EvalOptions
    from embeval.protocols.revisited import RevisitedResult, read_revisited, revisited
    from embeval.results.partials import merge_partials
    from embeval.results.writers import write_curves, write_per_query, write_pr_plot, write_predictions
    from embeval.uncertainty import compare, intervals, load_result, save_result, saved_result
    from embeval.verification.identify import IdentifyResult, identify
    from embeval.verification.verify import VerifyResult, verify

__version__ = "0.1.0"

#: public name -> the submodule that defines it (None: the name is the submodule itself)
_LAZY: dict[str, str | None] = {
    "metrics": None,
    "ConcatSet": "data.concat", "load_many": "data.concat",
    "Relevance": "data.relevance", "read_relevance": "data.relevance",
    "save_relevance": "data.relevance",
    "read_revisited": "protocols.revisited", "revisited": "protocols.revisited",
    "RevisitedResult": "protocols.revisited",
    "EvalResult": "evaluate", "aggregate_mean": "evaluate", "evaluate": "evaluate",
    "evaluation_stats": "evaluate", "summarize": "evaluate",
    "Protocol": "engine.stats", "RankStats": "engine.stats", "positive_pairs": "engine.rank",
    "rank_stats": "engine.rank",
    "METRICS": "engine.similarity", "scores": "engine.similarity",
    "EmbeddingSet": "data.store", "load": "data.store", "save": "data.store",
    "embed": "extract.embed", "evaluate_model": "extract.embed",
    "EvalOptions": "options", "merge_partials": "results.partials",
    "write_per_query": "results.writers", "write_predictions": "results.writers",
    "write_curves": "results.writers", "write_pr_plot": "results.writers",
    "verify": "verification.verify", "VerifyResult": "verification.verify",
    "identify": "verification.identify", "IdentifyResult": "verification.identify",
    "VerifyStats": "engine.trials", "trial_stats": "engine.trial_pass",
    "intervals": "uncertainty", "compare": "uncertainty", "load_result": "uncertainty",
    "save_result": "uncertainty", "saved_result": "uncertainty",
}

__all__ = [
    "EmbeddingSet", "load", "load_many", "ConcatSet", "save",
    "Relevance", "read_relevance", "save_relevance", "read_revisited", "revisited", "RevisitedResult",
    "evaluate", "evaluation_stats", "summarize", "EvalResult", "EvalOptions", "aggregate_mean",
    "embed", "evaluate_model", "verify", "VerifyResult", "identify", "IdentifyResult",
    "VerifyStats", "trial_stats", "intervals", "compare", "load_result", "save_result",
    "saved_result",
    "merge_partials", "write_per_query", "write_predictions", "write_curves", "write_pr_plot",
    "rank_stats", "RankStats", "Protocol", "positive_pairs", "scores", "METRICS", "metrics",
    "EmbevalError", "InputFileError", "OptionError", "__version__",
]


def __getattr__(name: str) -> Any:
    """Import the submodule behind a public name on first access, then cache the value.

    A subpackage name (``embeval.data``) imports that subpackage, as the eager package did.
    """
    if name in _LAZY:
        where = _LAZY[name]
        module = importlib.import_module(f".{where or name}", __name__)
        value = module if where is None else getattr(module, name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``embeval.evaluate`` is the function, as when this package imported it eagerly: importing
    the submodule of the same name (which sets the package's attribute) keeps the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
