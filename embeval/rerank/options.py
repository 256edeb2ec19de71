"""What to re-rank with: one validated, frozen type shared by the command line and Python.

Importing this module costs nothing (no torch): the command line builds a
:class:`RerankOptions` from its flags while it parses them.

>>> from embeval.rerank.options import RerankOptions
>>> RerankOptions(method="k-reciprocal").to_dict()
{'method': 'k-reciprocal', 'k1': 20, 'k2': 6, 'lambda': 0.3}
>>> RerankOptions(qe="alpha", qe_k=2).to_dict()
{'qe': 'alpha', 'qe_k': 2, 'qe_alpha': 3.0}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from embeval.errors import OptionError

__all__ = ["RerankOptions", "RerankMethod", "QeMethod", "RERANK_METHODS", "QE_METHODS"]

RerankMethod = Literal["k-reciprocal"]
QeMethod = Literal["average", "alpha"]
#: re-ranking methods (``--rerank``)
RERANK_METHODS: tuple[str, ...] = get_args(RerankMethod)
#: query expansions (``--qe``)
QE_METHODS: tuple[str, ...] = get_args(QeMethod)


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OptionError(f"{name}: must be an integer >= 1, got {value!r}", param=name)


@dataclass(frozen=True)
class RerankOptions:
    """Re-ranking (``method``) or expansion (``qe`` and/or ``dba``); see :mod:`embeval.rerank`.

    ``method``: ``"k-reciprocal"`` (Zhong et al. 2017) with ``k1`` (reciprocal neighbours),
    ``k2`` (local query expansion) and ``lam`` (weight of the original distance, in (0, 1]).
    ``qe``: ``"average"`` or ``"alpha"`` query expansion over the query's ``qe_k`` best gallery
    items (``qe_alpha``: the exponent of alpha-QE). ``dba``: database-side augmentation over
    each gallery item's ``dba`` nearest gallery items (itself first). ``method`` does not
    combine with ``qe`` / ``dba``; ``qe`` and ``dba`` do (DBA first).
    """

    method: str | None = None
    k1: int = 20
    k2: int = 6
    lam: float = 0.3
    qe: str | None = None
    qe_k: int = 10
    qe_alpha: float = 3.0
    dba: int | None = None

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in RERANK_METHODS:
            raise OptionError(f"rerank: unknown method {self.method!r} "
                              f"({', '.join(RERANK_METHODS)})", param="rerank")
        if self.qe is not None and self.qe not in QE_METHODS:
            raise OptionError(f"qe: unknown query expansion {self.qe!r} "
                              f"({', '.join(QE_METHODS)})", param="qe")
        for name in ("k1", "k2", "qe_k"):
            _positive_int(name, getattr(self, name))
        if self.dba is not None:
            _positive_int("dba", self.dba)
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam <= 1:
            raise OptionError(f"lam: must be in (0, 1], got {lam!r} (lambda 0 would tie every "
                              "item outside the reciprocal sets)", param="lam")
        a = self.qe_alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
            raise OptionError(f"qe_alpha: must be a finite number >= 0, got {a!r}",
                              param="qe_alpha")
        if self.method is not None and (self.qe is not None or self.dba is not None):
            raise OptionError("rerank: k-reciprocal re-ranking does not combine with qe or dba "
                              "(choose one)", param=("rerank", "qe", "dba"))

    @property
    def active(self) -> bool:
        """Whether anything is re-ranked or expanded."""
        return self.method is not None or self.qe is not None or self.dba is not None

    @property
    def expands(self) -> bool:
        """Whether new embeddings are computed (qe or dba) before the usual pass."""
        return self.qe is not None or self.dba is not None

    def to_dict(self) -> dict[str, Any]:
        """The settings in force (the JSON ``rerank`` object; part of a shard's identity)."""
        out: dict[str, Any] = {}
        if self.method is not None:
            out.update(method=self.method, k1=self.k1, k2=self.k2, **{"lambda": float(self.lam)})
        if self.dba is not None:
            out["dba"] = self.dba
        if self.qe is not None:
            out.update(qe=self.qe, qe_k=self.qe_k)
            if self.qe == "alpha":
                out["qe_alpha"] = float(self.qe_alpha)
        return out

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> RerankOptions:
        """The options of :meth:`to_dict`'s object (a shard's recorded settings)."""
        names = {"method": "method", "k1": "k1", "k2": "k2", "lambda": "lam", "qe": "qe",
                 "qe_k": "qe_k", "qe_alpha": "qe_alpha", "dba": "dba"}
        return cls(**{names[k]: v for k, v in settings.items()})

    @classmethod
    def from_flags(cls, rerank: str | None = None, k1: int | None = None, k2: int | None = None,
                   lambda_: float | None = None, qe: str | None = None, qe_k: int | None = None,
                   qe_alpha: float | None = None, dba: int | None = None) -> RerankOptions | None:
        """From the command line's flags (None: not given); None when nothing is asked.

        A setting without its method (``--k1`` without ``--rerank``, ``--qe-k`` without
        ``--qe``) is an error naming the flag."""
        for flag, value, needs, given in (("--k1", k1, "--rerank", rerank),
                                          ("--k2", k2, "--rerank", rerank),
                                          ("--lambda", lambda_, "--rerank", rerank),
                                          ("--qe-k", qe_k, "--qe", qe),
                                          ("--qe-alpha", qe_alpha, "--qe alpha",
                                           qe if qe == "alpha" else None)):
            if value is not None and given is None:
                raise OptionError(f"{flag}: needs {needs}")
        if rerank is None and qe is None and dba is None:
            return None
        given_values: dict[str, Any] = {"k1": k1, "k2": k2, "lam": lambda_, "qe_k": qe_k,
                                        "qe_alpha": qe_alpha}
        return cls(method=rerank, qe=qe, dba=dba,
                   **{k: v for k, v in given_values.items() if v is not None})
