"""One evaluation run from options to output files: what ``embeval cmc|score|knn|pr|identify``
and ``verify`` (:mod:`.verify`) do, callable from Python (:func:`run_job`).

options → statistics → result → outputs: a whole run returns a :class:`JobResult` (the result,
its intervals and the input fingerprints, once its output files are written, all or none); a
``shard`` run writes a partial-statistics file; under torchrun every rank takes a shard and rank
0 gets the result. ``embeval merge`` ends in the same :func:`~.outputs.finish` as a whole run,
so it writes exactly what the single run would have. Nothing here prints: notes for the user and
progress go to :class:`Hooks` (the command line draws them).

>>> import embeval                                                     # doctest: +SKIP
>>> from embeval.jobs import Job, run_job                              # doctest: +SKIP
>>> job = Job("cmc", Path("query.safetensors"), [Path("gallery.safetensors")],
...           embeval.EvalOptions(metric="cosine"), ks=[1, 5],
...           outputs={"--per-query": Path("per_query.csv")})          # doctest: +SKIP
>>> run_job(job).result.metrics["rank1"]                               # doctest: +SKIP
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path

from embeval.data.concat import expand_paths, load_many, source_files
from embeval.data.relevance import Relevance
from embeval.data.store import EmbeddingSet, load
from embeval.engine import distributed, parse_shard
from embeval.engine.similarity import resolve_device
from embeval.errors import OptionError
from embeval.evaluation import evaluation_stats, summarize
from embeval.jobs.job import Hooks, Job, JobResult, fingerprints, same_file
from embeval.jobs.outputs import finish
from embeval.jobs.verify import run_verify
from embeval.outputs import check_outputs
from embeval.results.partials import Partial, save_partial

__all__ = ["run_job", "MATRIX_LIMIT"]

MATRIX_LIMIT = 1 << 30  # score --out: the full [Q, G] matrix up to 1 GB, else the top-k


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
    if job.command == "verify":
        return run_verify(job, shard=shard, out_part=out_part, hooks=hooks)
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
    if lead and not c.exclude_self and c.aggregate == "none" and same_file(job.query, source_files(g)):
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
                  inputs=fingerprints(job.query, source_files(q), source_files(g), job.relevance))


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
    return finish(job, result, g.label_names, None,
                  inputs=fingerprints(job.query, source_files(q), source_files(g), job.relevance))


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
