"""embeval: exact, fast retrieval / re-identification metrics from saved embeddings.

>>> import embeval
>>> q, g = embeval.load("query.safetensors"), embeval.load("gallery.safetensors")  # doctest: +SKIP
>>> embeval.evaluate(q, g, ks=(1, 5, 10)).metrics                                   # doctest: +SKIP
"""

from ._blas import prefer_avx512_kernels

prefer_avx512_kernels()  # before numpy loads OpenBLAS: see embeval/_blas.py

from . import metrics
from .concat import ConcatSet, load_many
from .errors import EmbevalError, InputFileError, OptionError
from .evaluate import EvalResult, aggregate_mean, evaluate, evaluation_stats, summarize
from .ranking import Protocol, RankStats, positive_pairs, rank_stats
from .similarity import METRICS, scores
from .store import EmbeddingSet, load, save

__version__ = "0.1.0"

__all__ = [
    "EmbeddingSet", "load", "load_many", "ConcatSet", "save",
    "evaluate", "evaluation_stats", "summarize", "EvalResult", "aggregate_mean",
    "rank_stats", "RankStats", "Protocol", "positive_pairs", "scores", "METRICS", "metrics",
    "EmbevalError", "InputFileError", "OptionError", "__version__",
]
