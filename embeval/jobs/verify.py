"""``embeval verify`` as a run (:func:`~embeval.jobs.run_job` with ``Job("verify", ...)``): all
pairs or the listed ones (``job.pairs``, ``job.folds``, ``extra["templates"]``), whole, as a
``shard`` of an array job (the trial counts of its gallery items, summed by ``embeval merge``)
or under torchrun (ranks take gallery shards, counts summed onto rank 0); the ``--roc`` and
``--plot`` files and ``--save-result`` (:func:`~.outputs.finish`).

Importing this module does not import torch: the command line resolves and checks a job
(:func:`verify_job`, :func:`check_verify`) before it checks the input files and loads the core.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

from embeval._launch import is_leader, requested
from embeval.errors import InputFileError, OptionError
from embeval.jobs.job import Hooks, Job, JobResult, fingerprints, same_file

if TYPE_CHECKING:
    from embeval.data.store import EmbeddingSet

__all__ = ["run_verify", "verify_job", "check_verify", "named_pairs"]


def verify_job(job: Job) -> Job:
    """``job`` with verify's defaults filled in: ``extra`` ``fars`` (1e-6 … 1e-1), ``far_rule``
    (step), ``templates`` (False); an empty gallery is the query file, with the pairs file its
    metadata names when ``job.pairs`` is None (:func:`named_pairs`, which loads the file)."""
    extra = job.extra
    if not {"fars", "far_rule", "templates", "fold_thresholds"} <= extra.keys():
        from embeval.verification.roc import DEFAULT_FARS

        extra = {"fars": list(DEFAULT_FARS), "far_rule": "step", "templates": False,
                 "fold_thresholds": "scores", **extra}
    if job.gallery:
        return dataclasses.replace(job, extra=extra) if extra is not job.extra else job
    return dataclasses.replace(job, gallery=[job.query], extra=extra,
                               pairs=job.pairs or named_pairs(job.query))


def named_pairs(query: Path) -> Path:
    """The pairs CSV that an embedding file names in its metadata (``pairs_file``: a file name,
    looked for beside it, never a path elsewhere), as ``extract --layout`` writes it."""
    from embeval.data.store import load

    name = load(query).metadata.get("pairs_file")
    if not name:
        raise OptionError(f"GALLERY: missing; give the gallery file(s), or pairs CSV: {query} names "
                          "no file of listed trials", param="pairs")
    pairs = query.parent / Path(name).name
    if not pairs.is_file():
        raise InputFileError(query, "the file of listed trials it names is not beside it: give "
                                    f"pairs CSV (it names {Path(name).name!r})", param="pairs")
    return pairs


def check_verify(job: Job, shard: str | None = None, out_part: Path | None = None) -> None:
    """What a verify job does not combine with (``OptionError``, naming the parameters); the
    files are not read. ``job``: after :func:`verify_job`."""
    if job.folds is not None and job.pairs is None:
        raise OptionError("folds: the LFW protocol splits listed trials: give pairs too",
                          param=("folds", "pairs"))
    if job.folds is None and job.extra["fold_thresholds"] != "scores":
        raise OptionError("fold_thresholds: needs folds (it picks each fold's threshold)",
                          param=("fold_thresholds", "folds"))
    if job.pairs is not None and (job.options.exclude_self or job.options.exclude_same_camera):
        raise OptionError("exclude_self/exclude_same_camera: with pairs the trials are the listed "
                          "ones", param=("exclude_self", "exclude_same_camera", "pairs"))
    split = "shard" if shard is not None else "torchrun" if requested() else None
    if split is None and out_part is not None:
        raise OptionError("out_part needs shard i/n", param=("out_part", "shard"))
    if split is None:
        return
    given = [(name, said) for name, said, used in (
        ("pairs", "pairs", job.pairs), ("templates", "templates", job.extra["templates"]),
        ("far_rule", "far_rule nearest", job.extra["far_rule"] == "nearest")) if used]
    if given:
        name, said = given[0]
        raise OptionError(f"{said}: not with {split} (listed pairs, templates and the nearest rule "
                          "are computed in one process)",
                          param=(name, split) if split == "shard" else name)
    outputs = [flag for flag, path in job.outputs.items() if path is not None]
    if split == "shard" and outputs:
        raise OptionError(f"{outputs[0]}: a shard run writes only its partial statistics; give "
                          "output files to `embeval merge`", param="shard")


def run_verify(job: Job, *, shard: str | None = None, out_part: Path | None = None,
               hooks: Hooks | None = None) -> JobResult | None:
    """Run a verify ``job`` (what :func:`~embeval.jobs.run_job` does for it): its
    :class:`~embeval.jobs.JobResult` (a ``VerifyResult``), output files written; None for a
    ``shard`` run (its part in ``out_part``, default ``verify.part-I-of-N.safetensors``) and on
    torchrun ranks other than 0."""
    hooks = hooks or Hooks()
    job = verify_job(job)
    check_verify(job, shard, out_part)
    if shard is not None:
        _shard(job, shard, out_part, hooks)
        return None
    if requested():
        return _torchrun(job, hooks)
    return _whole(job, hooks)


def _load(job: Job, hooks: Hooks, listed: bool = False) -> tuple[EmbeddingSet, EmbeddingSet]:
    """Load the job's sets; a note when all pairs of one file include every item paired with
    itself."""
    from embeval.data.concat import load_many, source_files
    from embeval.data.store import load
    from embeval.engine.similarity import resolve_device

    resolve_device(job.options.device)
    q, g = load(job.query), load_many(job.gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    same = same_file(job.query, source_files(g))
    if same and not listed and not job.options.exclude_self and is_leader():
        hooks.note(f"embeval: warning: {job.query} is the query set and the gallery, so every "
                   "item's pair with itself is a genuine trial; add --exclude-self to leave "
                   "them out (this note goes away with it)")
    if job.extra["templates"] and same:
        g = q  # one file, pooled once
    return q, g


def _whole(job: Job, hooks: Hooks) -> JobResult:
    from embeval.data.concat import expand_paths, source_files
    from embeval.jobs.outputs import finish
    from embeval.outputs import check_outputs
    from embeval.verification.verify import verify

    check_outputs(job.outputs, inputs=[job.query, *expand_paths(job.gallery),
                                       *([job.pairs] if job.pairs else [])])
    q, g = _load(job, hooks, listed=job.pairs is not None)
    with hooks.progress("counting trials", job.pairs is None) as update:
        result = verify(q, g, job.options, fars=job.extra["fars"], far_rule=job.extra["far_rule"],
                        pairs=job.pairs, templates=job.extra["templates"], folds=job.folds,
                        fold_thresholds=job.extra["fold_thresholds"], progress=update)
    return finish(job, result, None, None,
                  inputs=fingerprints(job.query, source_files(q), source_files(g)))


def _shard(job: Job, shard: str, out_part: Path | None, hooks: Hooks) -> None:
    """One gallery shard of an array job: its trial counts, written as a part for `merge`."""
    from embeval.data.concat import expand_paths
    from embeval.engine import parse_shard, shard_range
    from embeval.outputs import check_outputs
    from embeval.results.partials import Partial, save_partial
    from embeval.verification.verify import verification_stats

    i, n = parse_shard(shard)
    out_part = out_part or Path(f"verify.part-{i}-of-{n}.safetensors")
    check_outputs({"--out-part": out_part}, inputs=[job.query, *expand_paths(job.gallery)])
    t0 = time.perf_counter()
    q, g = _load(job, hooks)
    a, b = shard_range(g.n, i, n)
    with hooks.progress("counting trials", True) as update:
        stats = verification_stats(q, g, job.options, gallery_range=(a, b), progress=update)
    header = {"job": job.identity(q, g), "kind": "trials", "n_query": q.n, "shard": [i, n],
              "gallery_range": [a, b],
              "info": {"device": job.options.device, "memory": job.options.memory,
                       "host": platform.node(), "seconds": round(time.perf_counter() - t0, 3)}}
    save_partial(out_part, Partial(stats, g.labels[a:b], header))
    hooks.note(f"embeval verify: shard {i}/{n} (gallery items {a}:{b} of {g.n}) written to "
               f"{out_part}")


def _torchrun(job: Job, hooks: Hooks) -> JobResult | None:
    """One rank of a torchrun group: a gallery shard each; counts summed onto rank 0."""
    import torch
    import torch.distributed as dist

    from embeval.data.concat import expand_paths, source_files
    from embeval.engine import distributed, shard_range
    from embeval.jobs.outputs import finish
    from embeval.outputs import check_outputs
    from embeval.verification.verify import summarize_verification, verification_stats

    if is_leader():
        check_outputs(job.outputs, inputs=[job.query, *expand_paths(job.gallery)])
    t0 = time.perf_counter()
    q, g = _load(job, hooks)
    with distributed.process_group(job.options.device) as group:
        a, b = shard_range(g.n, group.rank, group.world)
        stats = verification_stats(q, g, dataclasses.replace(job.options, device=group.device),
                                   gallery_range=(a, b))
        counts = torch.cat([stats.imp_slots, stats.imp_keys])
        dist.reduce(counts, dst=0, op=dist.ReduceOp.SUM)  # int64 on CPU (gloo and nccl)
        if group.rank != 0:
            return None
        n_slots = len(stats.imp_slots)
        stats.imp_slots, stats.imp_keys = counts[:n_slots], counts[n_slots:]
        result = summarize_verification(stats, job.options, fars=job.extra["fars"], t0=t0)
        hooks.note(f"embeval verify: {group.world} ranks (gallery shards, {group.device}) "
                   "reduced onto rank 0")
        return finish(job, result, None, None,
                      inputs=fingerprints(job.query, source_files(q), source_files(g)))
