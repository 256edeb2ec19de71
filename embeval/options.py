"""The evaluation options, as one validated type, and their vocabularies (defined here only).

Importing this module costs nothing (no torch, numpy or numba): the command line builds an
:class:`EvalOptions` from its flags while it parses them, the core takes the same object.

>>> from embeval.options import EvalOptions
>>> EvalOptions(metric="euclid", exclude_self=True).result_options()["metric"]
'euclid'
>>> EvalOptions(metric="l2")
Traceback (most recent call last):
...
embeval.errors.OptionError: metric: unknown metric 'l2' (inner, cosine, euclid, sq_euclid)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

from embeval.errors import OptionError

__all__ = [
    "EvalOptions", "IntervalOptions", "Metric", "Precision", "Aggregate", "NoPositive", "Backend", "ApRule",
    "METRICS", "PRECISIONS", "AGGREGATES", "NO_POSITIVE", "BACKENDS", "AP_RULES", "RESULT_OPTIONS",
    "RESAMPLING_UNITS", "MAX_RESAMPLES", "MAX_SEED", "MAX_RESAMPLE_WORK", "check_resample_work",
    "short_repr",
    "parse_memory",
]

Metric = Literal["inner", "cosine", "euclid", "sq_euclid"]
Precision = Literal["fp32", "tf32", "bf16", "fp16"]
Aggregate = Literal["none", "mean"]
NoPositive = Literal["skip", "zero"]
Backend = Literal["auto", "numba", "torch", "triton"]
ApRule = Literal["standard", "trapezoid"]
ResamplingUnit = Literal["query", "label"]

#: similarity metrics (higher = more similar), see :mod:`embeval.engine.similarity`
METRICS: tuple[str, ...] = get_args(Metric)
#: matmul precisions of the score pass (all but fp32 approximate)
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: gallery as is (none) or one normalised mean prototype per label (mean)
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
#: queries without positives: skipped, or counted with AP 0 / no hit (zero)
NO_POSITIVE: tuple[str, ...] = get_args(NoPositive)
#: engines of the ranking pass (:func:`embeval.engine.rank_stats`)
BACKENDS: tuple[str, ...] = get_args(Backend)
#: the AP behind mAP and the per-query ``ap``: (1/P) Σ TP_j / N_j (standard) or revisitop's
#: trapezoids (:func:`embeval.metrics.trapezoid_average_precision`)
AP_RULES: tuple[str, ...] = get_args(ApRule)
#: what a bootstrap resamples: queries, or identities (all queries of a label together)
RESAMPLING_UNITS: tuple[str, ...] = get_args(ResamplingUnit)

#: the options that shape the result, in the order of the JSON ``options`` object
RESULT_OPTIONS = ("metric", "exclude_same_camera", "exclude_self", "aggregate", "no_positive",
                  "precision", "ap")

_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "KIB": 2**10, "M": 1e6, "MB": 1e6, "MIB": 2**20,
          "G": 1e9, "GB": 1e9, "GIB": 2**30, "T": 1e12, "TB": 1e12, "TIB": 2**40}


def _one_of(param: str, what: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(f"{param}: unknown {what} {value!r} ({', '.join(allowed)})", param=param)


def parse_memory(text: str | int | None) -> int | None:
    """``"2GB"``, ``"512MB"``, ``"1.5GiB"`` or a byte count → bytes (None passes through)."""
    if text is None or isinstance(text, int):
        return text
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    try:
        value = float(num) * _UNITS[s[len(num):]]
    except (ValueError, KeyError):
        raise OptionError(f"memory: cannot read {text!r} (examples: 512MB, 2GB)",
                          param="memory") from None
    if not math.isfinite(value):  # nan, inf, 1e400
        raise OptionError(f"memory: {text!r} is not a finite size (examples: 512MB, 2GB)",
                          param="memory")
    if value < 1e6:
        raise OptionError(f"memory: {text!r} is too small (at least 1MB)", param="memory")
    return int(value)


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate: what shapes the result (the first six fields and ``ap``), then how it runs.

    ``metric``: similarity (:data:`METRICS`); ``exclude_same_camera`` / ``exclude_self``: the
    protocol (drop same-label same-camera items / leave-one-out); ``aggregate``: ``"mean"``
    ranks one prototype per label (``None`` means ``"none"``); ``no_positive``: queries
    without positives are skipped or count as 0; ``precision``: score matmul precision.
    ``device``: auto, cpu, cuda or cuda:N (checked when the pass starts: ``resolve_device``);
    ``memory``: block budget in bytes or text such as ``"2GB"`` (None: 60% of free GPU memory,
    1 GB on CPU); ``block_size``: gallery rows per block (None: from ``memory``);
    ``backend``: auto, numba, torch or triton; ``ap``: the AP of ``mAP`` and the per-query ``ap``
    (:data:`AP_RULES`: standard, or trapezoid as revisitop).
    Invalid values raise :class:`~embeval.errors.OptionError` naming the parameter.
    """

    metric: str = "cosine"
    exclude_same_camera: bool = False
    exclude_self: bool = False
    aggregate: str | None = "none"
    no_positive: str = "skip"
    precision: str = "fp32"
    device: str = "auto"
    memory: int | str | None = None
    block_size: int | None = None
    backend: str = "auto"
    ap: str = "standard"

    def __post_init__(self) -> None:
        if self.aggregate is None:
            object.__setattr__(self, "aggregate", "none")
        _one_of("metric", "metric", self.metric, METRICS)
        _one_of("precision", "precision", self.precision, PRECISIONS)
        _one_of("aggregate", "mode", self.aggregate, AGGREGATES)
        _one_of("no_positive", "policy", self.no_positive, NO_POSITIVE)
        _one_of("backend", "backend", self.backend, BACKENDS)
        _one_of("ap", "AP rule", self.ap, AP_RULES)
        for name in ("exclude_same_camera", "exclude_self"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name}: expected True or False, got {getattr(self, name)!r}",
                                  param=name)
        if self.aggregate == "mean" and (self.exclude_same_camera or self.exclude_self):
            raise OptionError("aggregate mean cannot be combined with exclude_same_camera or "
                              "exclude_self (prototypes have no camera or index)",
                              param=("aggregate", "exclude_same_camera", "exclude_self"))
        if not isinstance(self.device, str):  # its name is checked when the pass starts
            raise OptionError(f"device: expected a name such as 'cuda:0', got {self.device!r}",
                              param="device")
        parse_memory(self.memory)
        b = self.block_size
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise OptionError(f"block_size: must be a positive integer, got {b!r}",
                              param="block_size")

    @classmethod
    def build(cls, options: EvalOptions | None = None, **overrides: Any) -> EvalOptions:
        """``options`` (default: the defaults) with the fields in ``overrides`` replaced.

        An unknown keyword raises :class:`TypeError`, as a misspelt keyword argument does.
        """
        base = options if options is not None else cls()
        if not isinstance(base, EvalOptions):
            raise TypeError(f"options must be an EvalOptions, got {type(base).__name__}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
        return replace(base, **overrides) if overrides else base

    def result_options(self) -> dict[str, object]:
        """The options that shape the result: ``EvalResult.options``, the JSON ``options``
        object and the ``options`` of a partial-statistics header (same keys, same order)."""
        return {name: getattr(self, name) for name in RESULT_OPTIONS}

    to_dict = result_options


#: the most bootstrap resamples (or paired-test permutations) one run may ask for
MAX_RESAMPLES = 1_000_000
#: the largest seed (the resamples' generator takes 64-bit seeds; 2^63 - 1, a signed int64)
MAX_SEED = 2**63 - 1
#: the most resample × record cells one bootstrap or randomisation test may cost (~10^9: minutes
#: on one core); more is refused before any work
MAX_RESAMPLE_WORK = 10**9


def short_repr(v: object) -> str:
    """``repr(v)``, shortened to 40 characters (a 5,000-digit integer stays one short line)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**30:
        return f"{'-' if v < 0 else ''}10^{len(str(abs(v))) - 1}+"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resample_work(n: int, n_records: int, what: str = "n_resamples") -> None:
    """Refuse ``n`` resamples (or permutations) of ``n_records`` records when ``n × n_records``
    exceeds :data:`MAX_RESAMPLE_WORK` (``what``: the parameter named)."""
    if n * max(n_records, 1) > MAX_RESAMPLE_WORK:
        raise OptionError(f"{what} {n:,}: {n:,} x {n_records:,} records exceeds the limit of "
                          f"{MAX_RESAMPLE_WORK:,} resampled records per run (choose at most "
                          f"{max(1, MAX_RESAMPLE_WORK // max(n_records, 1)):,})", param=what)


@dataclass(frozen=True)
class IntervalOptions:
    """How sure a number is: a percentile bootstrap (DESIGN.md section 7).

    ``level``: the interval's coverage in (0, 1), e.g. 0.95; ``n_resamples``: bootstrap
    resamples (and the permutations of a paired test); ``seed``: the resamples are a function
    of the seed alone (same intervals for any block size, shard split, device or thread count);
    ``by``: resample queries, or labels (all queries of an identity together; a query with an
    unknown label is its own unit).
    """

    level: float = 0.95
    n_resamples: int = 1000
    seed: int = 0
    by: str = "query"

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, (int, float)) \
                or not 0.0 < self.level < 1.0:
            raise OptionError(f"level {self.level!r}: must be between 0 and 1 (exclusive), "
                              "e.g. 0.95", param="level")
        for name, low, high in (("n_resamples", 1, MAX_RESAMPLES), ("seed", 0, MAX_SEED)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise OptionError(f"{name} {short_repr(v)}: must be an integer from {low} to {high:,}"
                                  + (" (a limit on the work)" if name == "n_resamples" else ""),
                                  param=name)
        _one_of("by", "resampling unit", self.by, RESAMPLING_UNITS)

    @classmethod
    def build(cls, options: IntervalOptions | None = None, **overrides: Any) -> IntervalOptions:
        """``options`` (default: the defaults) with the fields in ``overrides`` replaced."""
        base = options if options is not None else cls()
        return replace(base, **overrides) if overrides else base

    def to_dict(self) -> dict[str, object]:
        """The JSON ``options`` entries: level, method, resamples, seed, unit."""
        return {"ci_level": self.level, "ci_method": "percentile bootstrap",
                "ci_resamples": self.n_resamples, "ci_seed": self.seed, "ci_by": self.by}
