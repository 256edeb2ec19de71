"""A finished run's output files: :func:`finish` summarises for the command (identify's
``IdentifyResult``), adds the intervals and writes every output file of the job, all or none
(``--per-query``, ``--predictions``, ``--curves``, ``--plot``, ``--out``; verify's ``--roc`` and
``--plot``; ``--save-result``). ``embeval merge`` ends here too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from embeval.data.concat import load_many
from embeval.data.store import EmbeddingSet, load
from embeval.engine import Protocol, parse_memory
from embeval.engine.hardest import hardest_negatives
from embeval.engine.similarity import scores
from embeval.evaluation import EvalResult, aggregate_mean
from embeval.jobs.job import Job, JobResult
from embeval.outputs import transaction
from embeval.results import writers as exports
from embeval.results.partials import changed
from embeval.verification.plot import impostor_histogram, operating_points, thin_roc, write_roc_csv
from embeval.verification.roc import far_count

__all__ = ["finish", "identification", "save_result"]


def finish(job: Job, result: Any, label_names: list[str] | None, knn_k: int | None, *,
           inputs: dict) -> JobResult:
    """Summarise for the command (identify: its ``IdentifyResult``), add the intervals, then
    write the job's output files (all or none). ``result``: an ``EvalResult`` (a
    ``VerifyResult`` for verify, whose ``label_names`` and ``knn_k`` are None).

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
        if job.command == "verify":
            _write_verify_outputs(job, result)
        else:
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
        title = _title(job)
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
    """True when every fingerprinted input file is still the one that was read."""
    return not any(changed(fp) for files in inputs.values() for fp in files)


def _title(job: Job) -> str:
    """A plot's title: ``query.safetensors vs gallery.safetensors (+2 files) (cosine)``."""
    names = job.gallery[0].name + (f" (+{len(job.gallery) - 1} files)" if len(job.gallery) > 1
                                   else "")
    return f"{job.query.name} vs {names} ({job.options.metric})"


def _write_verify_outputs(job: Job, result: Any) -> None:
    """verify's ``--roc`` CSV and its ``--plot`` (ROC, DET, score histograms)."""
    roc, plot = job.outputs.get("--roc"), job.outputs.get("--plot")
    if roc is None and plot is None:
        return
    c, points = result.curve(), operating_points(result)
    if roc is not None:
        keep = []  # the TAR@FAR points: the last ROC point with FAR <= F, for each requested F
        for f in points:
            m = torch.tensor([far_count(f, c.n_impostor)])
            i = int(torch.searchsorted(c.fp, m, right=True)[0]) - 1
            keep.append(int(torch.searchsorted(c.tp, c.tp[i].reshape(1))[0]))
        idx = thin_roc(c.fpr.numpy(), c.tpr.numpy(), c.threshold.numpy(), keep_fprs=keep)
        write_roc_csv(roc, c.fpr.numpy()[idx], c.tpr.numpy()[idx], c.threshold.numpy()[idx])
    if plot is not None:
        from embeval.visual.figures import write_verification_plot

        edges, counts = impostor_histogram(result.stats.imp_keys)
        write_verification_plot(plot, fpr=c.fpr.numpy(), tpr=c.tpr.numpy(),
                                gen_values=result.stats.gen_values.numpy(),
                                gen_counts=result.stats.gen_counts.numpy(), imp_edges=edges,
                                imp_counts=counts, far_points=points, title=_title(job))
