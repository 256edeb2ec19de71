"""One evaluation run from options to output files: what ``embeval cmc|score|knn|pr|identify``
do, callable from Python (:func:`run_job`).

options → statistics → result → outputs: a whole run returns a :class:`JobResult` (the result,
its intervals and the input fingerprints, once its output files are written, all or none); a
``shard`` run writes a partial-statistics file; under torchrun every rank takes a shard and rank
0 gets the result. ``embeval merge`` ends in the same :func:`finish` as a whole run, so it
writes exactly what the single run would have. Nothing here prints: notes for the user and
progress go to :class:`Hooks` (the command line draws them).

>>> import embeval                                                     # doctest: +SKIP
>>> from embeval.jobs import Job, run_job                              # doctest: +SKIP
>>> job = Job("cmc", Path("query.safetensors"), [Path("gallery.safetensors")],
...           embeval.EvalOptions(metric="cosine"), ks=[1, 5],
...           outputs={"--per-query": Path("per_query.csv")})          # doctest: +SKIP
>>> run_job(job).result.metrics["rank1"]                               # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from embeval.data.concat import expand_paths, load_many, source_files
from embeval.data.relevance import Relevance, read_relevance
from embeval.data.store import EmbeddingSet, load
from embeval.engine import Protocol, distributed, parse_memory, parse_shard
from embeval.engine.hardest import hardest_negatives
from embeval.engine.similarity import resolve_device, scores
from embeval.errors import OptionError
from embeval.evaluation import EvalResult, aggregate_mean, evaluation_stats, summarize
from embeval.options import EvalOptions, IntervalOptions
from embeval.outputs import check_outputs, transaction
from embeval.rerank.options import RerankOptions
from embeval.results import writers as exports
from embeval.results.partials import Partial, changed, fingerprint, save_partial

__all__ = ["Job", "JobResult", "Hooks", "run_job", "finish", "identification",
           "save_result", "MATRIX_LIMIT"]

MATRIX_LIMIT = 1 << 30  # score --out: the full [Q, G] matrix up to 1 GB, else the top-k


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
    ``RevisitedResult`` with ``extra["protocol"]``), ``ci`` (its intervals, None without
    ``job.intervals``) and ``inputs`` (the input files' fingerprints, as the JSON object names
    them). Its output files are written."""

    job: Job
    result: Any
    ci: Any
    inputs: dict


@dataclass
class Job:
    """``command`` (cmc, score, knn, pr, identify) on ``query`` × ``gallery`` (files), its output files.

    ``outputs``: flag -> file (``--per-query``, ``--predictions``, ``--curves``, ``--plot``,
    ``--out``, ``--save-result``; None: not written), as the command line names them.
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

    def __post_init__(self) -> None:
        self.query, self.gallery = Path(self.query), [Path(p) for p in self.gallery]

    def read_relevance(self, q: EmbeddingSet, g: EmbeddingSet) -> Relevance | None:
        """The --relevance lists for ``q`` × ``g`` (None without the flag)."""
        return None if self.relevance is None else read_relevance(self.relevance, q.n, g.n)

    def identity(self, q: EmbeddingSet, g: EmbeddingSet) -> dict:
        """What every shard of one run shares (the ``job`` of a partial-statistics header)."""
        return {"command": self.command, "ks": self.ks, "knn_k": self.knn_k, "pr": self.pr,
                "extra": self.extra, "out_topk": self.out_topk,
                "options": self.options.result_options(),
                "label_names": g.label_names,
                "inputs": _inputs(self.query, source_files(q), source_files(g), self.relevance)}


def run_job(job: Job, *, shard: str | None = None, out_part: Path | None = None,
            hooks: Hooks | None = None) -> JobResult | None:
    """Run ``job``: alone, as shard ``i/n`` of an array job, or as one rank under torchrun.

    Returns the :class:`JobResult` of a whole run (on rank 0 under torchrun), its output files
    written (all or none); None for a ``shard`` run (its partial statistics are in ``out_part``,
    default ``COMMAND.part-I-of-N.safetensors``) and on the other torchrun ranks. Raises
    :class:`~embeval.errors.EmbevalError` subclasses (``OptionError``, ``InputFileError``) for
    what the user can fix. ``hooks``: notes and progress (default: silent).
    """
    hooks = hooks or Hooks()
    part = parse_shard(shard) if shard else None
    lead = distributed.is_leader()
    if job.out_topk is not None and part is None and job.outputs.get("--out") is None:
        raise OptionError("out_topk: needs out FILE (or shard i/n, whose part keeps the top-k "
                          "for `embeval merge --out`)", param=("out_topk", "out", "shard"))
    if part is not None:
        given = [option for option, path in job.outputs.items() if path is not None]
        if given:
            raise OptionError(f"{given[0]}: a shard run writes only its partial statistics; "
                              "give output files to `embeval merge`", param="shard")
        if distributed.requested():
            raise OptionError("shard: not under torchrun (torchrun shards by itself)", param="shard")
        out_part = out_part or Path(f"{job.command}.part-{part[0]}-of-{part[1]}.safetensors")
    elif out_part is not None:
        raise OptionError("out_part needs shard i/n", param=("out_part", "shard"))
    if lead:
        check_outputs({**job.outputs, "--out-part": out_part},
                      inputs=[job.query, *expand_paths(job.gallery),
                              *([job.relevance] if job.relevance else [])])
    c = job.options
    resolve_device(c.device)
    q, g = load(job.query), load_many(job.gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    if lead and not c.exclude_self and c.aggregate == "none" and _same_file(job.query, source_files(g)):
        hooks.note(f"embeval: warning: {job.query} is the query set and the gallery, so every "
                   "query finds itself at rank 1; add --exclude-self for leave-one-out "
                   "(this note goes away with it)")
    if job.relevance is not None and c.aggregate == "mean":
        raise OptionError("relevance cannot be combined with aggregate mean (the lists name "
                          "gallery items, not class prototypes)", param=("relevance", "aggregate"))
    _check_rerank(job)
    if job.extra.get("protocol"):
        return _revisited(job, q, g, hooks)
    rel = job.read_relevance(q, g)
    knn_k = job.knn_k
    if job.command == "score":
        knn_k = _score_topn(job, q, g) if (part or job.outputs.get("--out")) else None
    if not distributed.requested():
        return _compute(job, q, g, knn_k, part, out_part, None, rel, hooks)
    with distributed.process_group(c.device) as group:
        return _compute(job, q, g, knn_k, None, None, group, rel, hooks)


def _compute(job: Job, q: EmbeddingSet, g: EmbeddingSet, knn_k: int | None,
             part: tuple[int, int] | None, out_part: Path | None, group,
             rel: Relevance | None, hooks: Hooks) -> JobResult | None:
    c = job.options
    t0 = time.perf_counter()
    # k-reciprocal re-ranking splits the gallery: its neighbour graph needs every query
    by_query = group is not None and distributed.split_axis(
        q.n, g.n, group.world, exclude_self=c.exclude_self) == "query" and not (
        job.rerank is not None and job.rerank.method is not None)
    if by_query:
        a, b = group.query_range(q.n)
        q = EmbeddingSet(q.rows(a, b), q.labels[a:b], None if q.cameras is None else q.cameras[a:b],
                         metadata=q.metadata, name=q.name)
        rel = rel.rows(a, b) if rel is not None else None
    with hooks.progress("ranking", distributed.is_leader()) as update:
        ev = evaluation_stats(
            q, g, replace(c, device=group.device) if group else c, ks=job.ks, knn_k=knn_k,
            shard=part or (group.shard if group and not by_query else None), progress=update,
            relevance=rel, rerank=job.rerank)
    if part is not None:
        a, b = ev.gallery_range
        header = {"job": job.identity(q, g), "shard": list(part), "gallery_range": [a, b],
                  "info": {"device": c.device, "memory": c.memory, "host": platform.node(),
                           "seconds": round(time.perf_counter() - t0, 3)}}
        save_partial(out_part, Partial(ev.stats, ev.gallery.labels[a:b], header))  # type: ignore[arg-type]
        hooks.note(f"embeval {job.command}: shard {part[0]}/{part[1]} (gallery items {a}:{b} of "
                   f"{ev.gallery.n}) written to {out_part}")
        return None
    stats = ev.stats if group is None else (group.concat(ev.stats) if by_query
                                           else group.reduce(ev.stats))
    if stats is None:  # a rank other than 0: nothing to print
        return None
    result = summarize(stats, ev.gallery.labels, ks=ev.ks, knn_k=knn_k, no_positive=c.no_positive,
                       pr=job.pr, options=ev.options, t0=t0)
    if group is not None:
        hooks.note(f"embeval {job.command}: {group.world} ranks ({'query' if by_query else 'gallery'}"
                   f" shards, {group.device}) reduced onto rank 0")
    return finish(job, result, g.label_names, knn_k,
                  inputs=_inputs(job.query, source_files(q), source_files(g), job.relevance))


def _revisited(job: Job, q: EmbeddingSet, g: EmbeddingSet, hooks: Hooks) -> JobResult:
    """``cmc --protocol roxford|rparis``: three ranking passes (easy, medium, hard), one table."""
    from embeval.protocols.revisited import read_revisited, revisited

    if distributed.requested():
        raise OptionError("protocol: not under torchrun (three passes over a small gallery: "
                          "run it as one process)", param="protocol")
    assert job.relevance is not None  # checked by the cmc command
    truth = read_revisited(job.relevance, q.n, g.n)
    with hooks.progress("ranking (easy, medium, hard)", True) as update:
        result = revisited(q, g, truth, job.options, ks=job.ks, progress=update,
                           rerank=job.rerank)
    return finish(job, result, g.label_names, None,  # type: ignore[arg-type]
                  inputs=_inputs(job.query, source_files(q), source_files(g), job.relevance))


def _check_rerank(job: Job) -> None:
    """What --rerank / --qe / --dba do not combine with (exit 2, one line)."""
    r = job.rerank
    if r is None:
        return
    if job.extra.get("protocol") and r.method is not None:
        raise OptionError("rerank: not with protocol (qe and dba are)",
                          param=("rerank", "protocol", "qe", "dba"))


def _score_topn(job: Job, q: EmbeddingSet, g: EmbeddingSet) -> int | None:
    if job.rerank is not None:  # the scores are re-ranked: the top-k, never the raw matrix
        return min(job.out_topk or max(job.ks), g.n)
    if job.out_topk is not None:
        return min(job.out_topk, g.n)
    return None if q.n * g.n * 4 <= MATRIX_LIMIT else min(max(job.ks), g.n)


def _item_paths(s: EmbeddingSet) -> list[str] | None:
    """The items' paths when the file records them, joined to each file's ``source`` when that is
    a folder (as extract wrote it: openable from where extract ran); a ``source`` that is not a
    folder (``sklearn.datasets.load_digits (query split)``, a moved image set) is not joined."""
    parts = getattr(s, "parts", [s])
    if any(p.paths is None for p in parts):
        return None
    out = []
    for p in parts:
        source = p.metadata.get("source", "")
        base = source if source and os.path.isdir(source) else ""
        out += [os.path.join(base, x) for x in p.paths]
    return out


def _query_paths(job: Job) -> list[str] | None:
    return _item_paths(load(job.query)) if job.query.is_file() else None


def _hard_neg_items(job: Job, result: EvalResult, inputs: dict) -> dict[str, list] | None:
    """Index, label and path of each query's hardest negative (one more pass over the gallery),
    when the scores are exact (fp32) and the input files are the ones ranked."""
    c = job.options
    if c.precision != "fp32" or not _unchanged(inputs) or job.rerank is not None:
        return None
    q, g = load(job.query), load_many(job.gallery)
    if c.aggregate == "mean":
        g = aggregate_mean(g)
    index = hardest_negatives(q, g, result.stats.max_neg, metric=c.metric,
                              protocol=Protocol(c.exclude_same_camera, c.exclude_self),
                              relevance=job.read_relevance(q, g)).tolist()
    labels = g.labels.tolist()
    paths = _item_paths(g) if c.aggregate == "none" else None
    return {"hard_neg_index": index,
            "hard_neg_label": [labels[i] if i >= 0 else None for i in index],
            **({"hard_neg_path": [paths[i] if i >= 0 else None for i in index]}
               if paths is not None else {})}


def _unchanged(inputs: dict) -> bool:
    return not any(changed(fp) for files in inputs.values() for fp in files)


def _same_file(query: Path, gallery_files: list[Path]) -> bool:
    q = query.stat()
    return any((f.stat().st_dev, f.stat().st_ino) == (q.st_dev, q.st_ino) for f in gallery_files)


def _inputs(query: Path, query_files: list[Path], gallery_files: list[Path],
            relevance: Path | None = None) -> dict:
    """The input files as the JSON object names them: path, size, sha256 of the first/last MiB
    (``relevance``: the --relevance file, listed only when given)."""
    out = {"query": [fingerprint(f) for f in query_files or [query]],
           "gallery": [fingerprint(f) for f in gallery_files]}
    if relevance is not None:
        out["relevance"] = [fingerprint(relevance)]
    return out


def finish(job: Job, result: EvalResult, label_names: list[str] | None, knn_k: int | None, *,
           inputs: dict) -> JobResult:
    """Summarise for the command (identify: its ``IdentifyResult``), add the intervals, then
    write the job's output files (all or none).

    ``inputs``: fingerprints of the input files (``{"query": [...], "gallery": [...]}``), for the
    JSON object (the same for one run, its torchrun ranks and its merged shards).
    """
    shown: Any = result
    if job.command == "identify":
        shown = identification(job, result)
    ci = None
    if job.intervals is not None:
        from embeval.uncertainty import intervals

        ci = intervals(shown, job.intervals)
    with transaction():
        _write_outputs(job, result, label_names, knn_k, inputs)
        if job.outputs.get("--save-result"):
            save_result(job, shown, inputs, ci)
    return JobResult(job, shown, ci, inputs)


def identification(job: Job, result: EvalResult) -> Any:
    """The ``IdentifyResult`` of a ranking pass's ``EvalResult`` (whole or merged from shards)."""
    from embeval.verification.identify import summarize_identification

    ident = summarize_identification(result.stats, result.options, fpirs=job.extra["fpirs"],
                                     ks=job.ks, fpir_rule=job.extra["fpir_rule"])
    ident.elapsed_s = result.elapsed_s
    return ident


def save_result(job: Job, result: Any, inputs: dict, ci: Any) -> None:
    """--save-result: the whole result (:mod:`embeval.uncertainty.saved`)."""
    from embeval.uncertainty import save_result as save
    from embeval.uncertainty import saved_result
    from embeval.uncertainty.saved import query_items

    extra = {**job.extra, "ks": job.ks, "knn_k": job.knn_k}
    ci_json = None if ci is None else {"ci": ci.to_json(), "options": ci.options.to_dict()}
    labels = result.stats.query_labels if hasattr(result.stats, "query_labels") else None
    items: dict[str, Any] | None = None
    if _unchanged({"query": inputs["query"]}):
        q = load(job.query)
        items = query_items(q.labels, q.cameras, q.paths)
    elif labels is not None:  # merged from parts whose query file is gone: labels only
        items = query_items(labels, None, None)
    save(job.outputs["--save-result"],  # type: ignore[arg-type]
         saved_result(job.command, result, inputs={**inputs, "query_items": items}, extra=extra,
                      intervals=ci_json))


def _write_outputs(job: Job, result: EvalResult, label_names: list[str] | None,
                   knn_k: int | None, inputs: dict) -> None:
    out = job.outputs
    if out.get("--per-query"):
        exports.write_per_query(out["--per-query"], result, label_names,  # type: ignore[arg-type]
                                _query_paths(job), _hard_neg_items(job, result, inputs))
    if out.get("--predictions"):
        exports.write_predictions(out["--predictions"], result, _query_paths(job))  # type: ignore[arg-type]
    if out.get("--curves"):
        exports.write_curves(out["--curves"], result)  # type: ignore[arg-type]
    if out.get("--plot"):
        names = job.gallery[0].name + (f" (+{len(job.gallery) - 1} files)" if len(job.gallery) > 1
                                       else "")
        title = f"{job.query.name} vs {names} ({job.options.metric})"
        if job.command == "cmc":  # ranks 1 .. the largest -k
            from embeval.visual.figures import write_cmc_plot

            band = None
            if job.intervals is not None:
                from embeval.uncertainty.confidence import cmc_band

                band = cmc_band(result, max(job.ks), job.intervals)
            write_cmc_plot(out["--plot"], result, max_rank=max(job.ks), title=title,  # type: ignore[arg-type]
                           band=band)
        else:
            from embeval.visual.figures import write_pr_plot

            write_pr_plot(out["--plot"], result, title)  # type: ignore[arg-type]
    if out.get("--out"):
        _write_scores(out["--out"], job, result, knn_k)  # type: ignore[arg-type]


def _write_scores(path: Path, job: Job, result: EvalResult, topn: int | None) -> None:
    meta = {"embeval.scores": "1", "metric": job.options.metric}
    stats = result.stats
    if topn is not None:
        idx, top = stats.topk_indices, stats.topk_scores
        assert idx is not None and top is not None  # kept by the pass: topn > 0
        empty = idx == torch.iinfo(torch.int64).max
        exports.write_tensor_stream(
            path, [("topk_scores", torch.float32, tuple(idx.shape)),
                   ("topk_indices", torch.int64, tuple(idx.shape))],
            iter([{"topk_scores": top.float(), "topk_indices": idx.masked_fill(empty, -1)}]),
            {**meta, "layout": "topk"})
        return
    q, g = load(job.query), load_many(job.gallery)
    gallery_emb = g.embeddings
    rows = max(1, (parse_memory(job.options.memory) or 1 << 28) // max(1, 4 * g.n))

    def blocks():
        for a in range(0, q.n, rows):
            yield {"scores": scores(q.rows(a, min(a + rows, q.n)), gallery_emb, job.options.metric)}

    exports.write_tensor_stream(path, [("scores", torch.float32, (q.n, g.n))], blocks(),
                                {**meta, "layout": "matrix"})
