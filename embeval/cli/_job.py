"""One evaluation command from options to output: a whole run, a ``--shard`` run (writes a
partial-statistics file), or one rank of a torchrun group (rank 0 prints).

``embeval merge`` ends in the same :func:`finish` as a whole run, so it prints and writes
exactly what the single run would have.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from embeval import __version__
from embeval.data.concat import expand_paths, load_many, source_files
from embeval.data.relevance import Relevance, read_relevance
from embeval.data.store import EmbeddingSet, load
from embeval.engine import Protocol, distributed, parse_memory, parse_shard
from embeval.engine.hardest import hardest_negatives
from embeval.engine.similarity import resolve_device, scores
from embeval.errors import OptionError
from embeval.evaluate import EvalResult, aggregate_mean, evaluation_stats, summarize
from embeval.options import EvalOptions, IntervalOptions
from embeval.outputs import check_outputs, transaction
from embeval.rerank.options import RerankOptions
from embeval.results import writers as exports
from embeval.results.partials import Partial, changed, fingerprint, save_partial

from ._app import progress_bar, results_off_stdout, stderr
from .report import render

MATRIX_LIMIT = 1 << 30  # score --out: the full [Q, G] matrix up to 1 GB, else the top-k


@dataclass
class Job:
    """``command`` (cmc, score, knn, pr) on ``query`` × ``gallery`` (files), its output files."""

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


def execute(job: Job, *, shard: str | None = None, out_part: Path | None = None) -> None:
    """Run ``job``: alone, as shard ``i/n`` of an array job, or as one rank under torchrun."""
    part = parse_shard(shard) if shard else None
    lead = distributed.is_leader()
    if job.out_topk is not None and part is None and job.outputs.get("--out") is None:
        raise OptionError("--out-topk: needs --out FILE (or --shard i/n, whose part keeps the top-k "
                          "for `embeval merge --out`)")
    if part is not None:
        given = [option for option, path in job.outputs.items() if path is not None]
        if given:
            raise OptionError(f"{given[0]}: a --shard run writes only its partial statistics; "
                              "give output files to `embeval merge`")
        if distributed.requested():
            raise OptionError("--shard: not under torchrun (torchrun shards by itself)")
        out_part = out_part or Path(f"{job.command}.part-{part[0]}-of-{part[1]}.safetensors")
    elif out_part is not None:
        raise OptionError("--out-part needs --shard i/n")
    if lead:
        results_off_stdout(job.outputs.values())
        check_outputs({**job.outputs, "--out-part": out_part},
                      inputs=[job.query, *expand_paths(job.gallery),
                              *([job.relevance] if job.relevance else [])])
    c = job.options
    resolve_device(c.device)
    q, g = load(job.query), load_many(job.gallery)
    if q.dim != g.dim:
        raise OptionError(f"{q.name} has {q.dim}-dimensional embeddings but {g.name} has {g.dim}")
    if lead and not c.exclude_self and c.aggregate == "none" and _same_file(job.query, source_files(g)):
        stderr.print(f"embeval: warning: {job.query} is the query set and the gallery, so every "
                     "query finds itself at rank 1; add --exclude-self for leave-one-out "
                     "(this note goes away with it)", highlight=False, soft_wrap=True)
    if job.relevance is not None and c.aggregate == "mean":
        raise OptionError("--relevance cannot be combined with --aggregate mean (the lists name "
                          "gallery items, not class prototypes)")
    _check_rerank(job)
    if job.extra.get("protocol"):
        _revisited(job, q, g)
        return
    rel = job.read_relevance(q, g)
    knn_k = job.knn_k
    if job.command == "score":
        knn_k = _score_topn(job, q, g) if (part or job.outputs.get("--out")) else None
    if not distributed.requested():
        _compute(job, q, g, knn_k, part, out_part, None, rel)
        return
    with distributed.process_group(c.device) as group:
        _compute(job, q, g, knn_k, None, None, group, rel)


def _compute(job: Job, q: EmbeddingSet, g: EmbeddingSet, knn_k: int | None,
             part: tuple[int, int] | None, out_part: Path | None, group,
             rel: Relevance | None) -> None:
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
    with progress_bar("ranking", "items", enabled=distributed.is_leader()) as update:
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
        stderr.print(f"embeval {job.command}: shard {part[0]}/{part[1]} (gallery items {a}:{b} of "
                     f"{ev.gallery.n}) written to {out_part}", highlight=False, soft_wrap=True)
        return
    stats = ev.stats if group is None else (group.concat(ev.stats) if by_query
                                           else group.reduce(ev.stats))
    if stats is None:  # a rank other than 0: nothing to print
        return
    result = summarize(stats, ev.gallery.labels, ks=ev.ks, knn_k=knn_k, no_positive=c.no_positive,
                       pr=job.pr, options=ev.options, t0=t0)
    if group is not None:
        stderr.print(f"embeval {job.command}: {group.world} ranks ({'query' if by_query else 'gallery'}"
                     f" shards, {group.device}) reduced onto rank 0", highlight=False, soft_wrap=True)
    finish(job, result, g.label_names, knn_k,
           inputs=_inputs(job.query, source_files(q), source_files(g), job.relevance))


def _revisited(job: Job, q: EmbeddingSet, g: EmbeddingSet) -> None:
    """``cmc --protocol roxford|rparis``: three ranking passes (easy, medium, hard), one table."""
    from embeval.protocols.revisited import read_revisited, revisited

    if distributed.requested():
        raise OptionError("--protocol: not under torchrun (three passes over a small gallery: "
                          "run it as one process)")
    assert job.relevance is not None  # checked by the cmc command
    truth = read_revisited(job.relevance, q.n, g.n)
    with progress_bar("ranking (easy, medium, hard)", "items") as update:
        result = revisited(q, g, truth, job.options, ks=job.ks, progress=update)
    finish(job, result, g.label_names, None,  # type: ignore[arg-type]
           inputs=_inputs(job.query, source_files(q), source_files(g), job.relevance))


def _check_rerank(job: Job) -> None:
    """What --rerank / --qe / --dba do not combine with (exit 2, one line)."""
    r = job.rerank
    if r is None:
        return
    if job.extra.get("protocol"):
        raise OptionError("--rerank/--qe/--dba: not with --protocol")


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
           inputs: dict) -> None:
    """Write the job's output files (all or none), then print the table or the JSON object.

    ``inputs``: fingerprints of the input files (``{"query": [...], "gallery": [...]}``), for the
    JSON object (the same for one run, its torchrun ranks and its merged shards).
    """
    shown: Any = result
    if job.command == "identify":
        from .identify_cmd import identification

        shown = identification(job, result)
    ci = None
    if job.intervals is not None:
        from embeval.uncertainty import intervals

        ci = intervals(shown, job.intervals)
    with transaction():
        _write_outputs(job, result, label_names, knn_k, inputs)
        if job.outputs.get("--save-result"):
            save_result(job, shown, inputs, ci)
    provenance = {"embeval": __version__, "inputs": inputs} if job.as_json else {}
    if job.command == "identify":
        from .identify_cmd import render_identification

        render_identification(job, shown, job.as_json, provenance, ci)
    elif job.extra.get("protocol"):
        n_valid = ", ".join(f"{s} {n}" for s, n in result.n_valid.items())  # type: ignore[attr-defined]
        note = (f"{job.extra['protocol']}: {result.n_query} queries × {result.n_gallery} gallery "
                f"items · with positives: {n_valid} (the others skipped) · "
                f"{result.options['ap']} AP · 3 ranking passes · {result.elapsed_s:.2f}s")
        render(job.command, result, job.ks, as_json=job.as_json,
               extra={**job.extra, **provenance}, keys=list(result.metrics), note=note, ci=ci)
    else:
        render(job.command, result, job.ks, as_json=job.as_json,
               extra={**job.extra, **provenance} or None, ci=ci)
    sys.stdout.flush()


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
            from embeval.visual.plots import write_cmc_plot

            band = None
            if job.intervals is not None:
                from embeval.uncertainty.confidence import cmc_band

                band = cmc_band(result, max(job.ks), job.intervals)
            write_cmc_plot(out["--plot"], result, max_rank=max(job.ks), title=title,  # type: ignore[arg-type]
                           band=band)
        else:
            exports.write_pr_plot(out["--plot"], result, title)  # type: ignore[arg-type]
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
