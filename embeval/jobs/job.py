"""What a run is (:class:`Job`), what it returns (:class:`JobResult`) and how it talks while it
works (:class:`Hooks`). Importing this module does not import torch: the command line builds a
job and checks it before the core loads."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embeval.options import EvalOptions, IntervalOptions
from embeval.rerank.options import RerankOptions

if TYPE_CHECKING:
    from embeval.data.relevance import Relevance
    from embeval.data.store import EmbeddingSet

__all__ = ["Job", "JobResult", "Hooks", "same_file", "fingerprints"]


@contextlib.contextmanager
def _no_progress(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    yield lambda done, total: None


def _no_note(message: str) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """How a run talks while it works (the library never prints).

    ``note(message)``: a one-line note for the user (a warning, where a shard was written);
    ``progress(description, enabled)``: a context manager yielding ``update(done, total)``.
    The defaults are silent.
    """

    note: Callable[[str], None] = _no_note
    progress: Callable[[str, bool], AbstractContextManager[Callable[[int, int], None]]] = _no_progress


@dataclass
class JobResult:
    """A finished run: ``result`` (an ``EvalResult``; ``IdentifyResult`` for identify,
    ``VerifyResult`` for verify, ``RevisitedResult`` with ``extra["protocol"]``), ``ci`` (its
    intervals, None without ``job.intervals``) and ``inputs`` (the input files' fingerprints, as
    the JSON object names them). Its output files are written."""

    job: Job
    result: Any
    ci: Any
    inputs: dict


@dataclass
class Job:
    """``command`` (cmc, score, knn, pr, identify, verify) on ``query`` × ``gallery`` (files),
    its output files.

    ``outputs``: flag -> file (``--per-query``, ``--predictions``, ``--curves``, ``--plot``,
    ``--out``, ``--roc``, ``--save-result``; None: not written), as the command line names them.
    verify: ``extra`` holds ``fars`` (default 1e-6 … 1e-1), ``far_rule`` (``step``) and
    ``templates`` (False); an empty ``gallery`` is ``query`` itself, with the pairs file its
    metadata names (unless ``pairs`` is given).
    """

    command: str
    query: Path
    gallery: list[Path]
    options: EvalOptions
    ks: list[int]
    knn_k: int | None = None
    pr: bool = False
    extra: dict = field(default_factory=dict)  # printed in the JSON object (knn: {"k": 5})
    outputs: dict[str, Path | None] = field(default_factory=dict)
    out_topk: int | None = None  # score: top-N per query for --out (None: matrix when it fits)
    as_json: bool = False
    relevance: Path | None = None  # --relevance FILE: per-query positives and junk
    intervals: IntervalOptions | None = None  # --ci: bootstrap intervals
    rerank: RerankOptions | None = None  # --rerank / --qe / --dba (also in extra["rerank"])
    pairs: Path | None = None  # verify --pairs CSV: the listed trials
    folds: int | None = None  # verify --folds N: the LFW protocol on the listed pairs

    def __post_init__(self) -> None:
        self.query, self.gallery = Path(self.query), [Path(p) for p in self.gallery]
        self.pairs = None if self.pairs is None else Path(self.pairs)

    def read_relevance(self, q: EmbeddingSet, g: EmbeddingSet) -> Relevance | None:
        """The --relevance lists for ``q`` × ``g`` (None without the flag)."""
        from embeval.data.relevance import read_relevance

        return None if self.relevance is None else read_relevance(self.relevance, q.n, g.n)

    def identity(self, q: EmbeddingSet, g: EmbeddingSet) -> dict:
        """What every shard of one run shares (the ``job`` of a partial-statistics header)."""
        from embeval.data.concat import source_files

        return {"command": self.command, "ks": self.ks, "knn_k": self.knn_k, "pr": self.pr,
                "extra": self.extra, "out_topk": self.out_topk,
                "options": self.options.result_options(),
                "label_names": g.label_names,
                "inputs": fingerprints(self.query, source_files(q), source_files(g), self.relevance)}


def same_file(query: Path, gallery_files: list[Path]) -> bool:
    """True when ``query`` is one of ``gallery_files`` (the same inode)."""
    q = query.stat()
    return any((f.stat().st_dev, f.stat().st_ino) == (q.st_dev, q.st_ino) for f in gallery_files)


def fingerprints(query: Path, query_files: list[Path], gallery_files: list[Path],
           relevance: Path | None = None) -> dict:
    """The input files as the JSON object names them: path, size, sha256 of the first/last MiB
    (``relevance``: the --relevance file, listed only when given)."""
    from embeval.results.partials import fingerprint

    out = {"query": [fingerprint(f) for f in query_files or [query]],
           "gallery": [fingerprint(f) for f in gallery_files]}
    if relevance is not None:
        out["relevance"] = [fingerprint(relevance)]
    return out
