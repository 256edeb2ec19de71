"""Partial-statistics files: one gallery shard's :class:`RankStats`, saved, checked and merged.

An array job (SLURM ``--array``) runs ``embeval cmc Q G --shard i/n --out-part FILE`` once per
shard; ``embeval merge FILES...`` combines the parts into the result of one run, bit for bit.

A part is a safetensors file with the statistics tensors (``query_labels``, ``pos_offsets``,
``pos_scores``, ``neg_hist``, ``n_neg``, ``max_neg``, optionally ``topk_scores`` /
``topk_indices``), ``gallery_labels`` of its shard's items, and in the metadata
``embeval.partial = "1"``, ``metric`` and ``header``: a JSON object with

- ``job``: what must be equal in every part: ``command``, ``ks``, ``knn_k``, ``pr``,
  ``extra``, ``options`` (those that shape the result) and ``inputs``: for the query file and
  each gallery file its ``file`` (absolute path, informative only), ``size`` and ``sha256`` of
  its first and last MiB (header, start and end of the data; a cheap fingerprint);
- ``shard`` ``[i, n]`` and ``gallery_range`` ``[a, b)``; ``info`` (device, memory, host, time:
  recorded, never compared).

Since format 2 the metadata also holds ``info`` (JSON, outside ``header``: the only field
that differs between two runs of one shard) and ``sha256``: a digest of the other metadata
and of every tensor (name, dtype, shape, bytes), checked on load. On load every part is
also checked against its own header (dtypes, shapes, ranges, histogram sums; the shard's
``gallery_range`` against :func:`embeval.engine.shard_range`), and on merge the parts
against each other: a checksum alone is forgeable by whoever recomputes it, the structural
checks still catch accidents and naive edits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from embeval.data.concat import expand_paths
from embeval.data.safetensors_io import tensor_digest, write_safetensors
from embeval.engine import RankStats
from embeval.engine.trials import VerifyStats
from embeval.errors import InputFileError
from embeval.evaluation import EvalResult, summarize
from embeval.options import RESULT_OPTIONS, EvalOptions
from embeval.outputs import atomic_path
from embeval.results.partial_checks import (
    check_header,
    check_stats,
    check_together,
    check_trials,
)

__all__ = ["Partial", "fingerprint", "changed", "save_partial", "load_partial", "merge_parts",
           "load_parts", "summarize_parts", "merge_partials", "FORMAT"]

FORMAT = "2"
_STATS = ("query_labels", "pos_offsets", "pos_scores", "neg_hist", "n_neg", "max_neg")
_TOPK = ("topk_scores", "topk_indices")
_TRIALS = ("gen_values", "gen_counts", "imp_slots", "imp_keys")  # verify (header "kind": "trials")
_SIGNED = ("embeval.partial", "metric", "n_gallery", "header")  # metadata the digest covers


@dataclass
class Partial:
    """Statistics of gallery items ``header["gallery_range"]`` (all of them once merged):
    :class:`RankStats`, or :class:`VerifyStats` for ``verify`` (``header["kind"] == "trials"``)."""

    stats: RankStats | VerifyStats
    gallery_labels: torch.Tensor
    header: dict
    path: Path | None = None

    @property
    def job(self) -> dict:
        return self.header["job"]


def fingerprint(path: str | os.PathLike[str], chunk: int = 1 << 20) -> dict:
    """``{"file", "size", "sha256"}``: size and a hash of the first and last ``chunk`` bytes."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return {"file": str(p.resolve()), "size": size, "sha256": h.hexdigest()}


def changed(fp: dict) -> str | None:
    """Why the file of fingerprint ``fp`` (:func:`fingerprint`) is not the one fingerprinted any
    more ("is gone", "changed since ..."), or None when it still is."""
    path = Path(fp["file"])
    if not path.is_file():
        return "is gone"
    now = fingerprint(path)
    if (now["size"], now["sha256"]) != (fp["size"], fp["sha256"]):
        return "changed since the shards were computed"
    return None


def _digest(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    signed = json.dumps([[k, meta.get(k)] for k in _SIGNED], separators=(",", ":"))
    return tensor_digest(tensors, prefix=signed.encode("utf-8"))


def save_partial(path: str | os.PathLike[str], part: Partial) -> Path:
    """Write ``part`` atomically (complete under its final name, or absent) and reproducibly:
    the same statistics and header give the same bytes, but for ``header["info"]``."""
    s = part.stats
    names = _TRIALS if isinstance(s, VerifyStats) else _STATS
    tensors = {name: getattr(s, name).contiguous() for name in names}
    if isinstance(s, RankStats) and s.topk_scores is not None:
        tensors.update({name: getattr(s, name).contiguous() for name in _TOPK})
    tensors["gallery_labels"] = part.gallery_labels.contiguous()
    header = {k: v for k, v in part.header.items() if k != "info"}
    meta = {"embeval.partial": FORMAT, "metric": s.metric, "n_gallery": str(s.n_gallery),
            "header": json.dumps(header, sort_keys=True, separators=(",", ":")),
            "info": json.dumps(part.header.get("info"), sort_keys=True)}
    meta["sha256"] = _digest(meta, tensors)
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, tensors, meta)
    return p


def load_partial(path: str | os.PathLike[str]) -> Partial:
    """Read and check a part written by :func:`save_partial`.

    Raises :class:`InputFileError` naming the file: unreadable, not a part, contents that do
    not match the checksum, a header or statistics that do not fit each other.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "no such file" if not p.exists() else "is not a file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            version = meta.get("embeval.partial")
            if version != FORMAT:
                raise InputFileError(p, "not an embeval partial-statistics file (write one with "
                                        "`embeval cmc ... --shard i/n --out-part FILE`)"
                                     if version is None else
                                     f"partial-statistics format {version!r} is not the one this "
                                     f"embeval reads ({FORMAT!r}): run the shard again")
            keys = set(f.keys())
            t = {k: f.get_tensor(k) for k in keys}
    except SafetensorError as e:
        raise InputFileError(p, f"not a readable safetensors file ({e})") from None
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(meta["header"])
        info = json.loads(meta.get("info", "null"))
        n_gallery = int(meta["n_gallery"])
    except (KeyError, ValueError) as e:
        raise InputFileError(p, f"damaged partial-statistics header ({e!r})") from None
    trials = isinstance(header, dict) and header.get("kind") == "trials"
    names, optional = (_TRIALS, ()) if trials else (_STATS, _TOPK)
    missing = [k for k in (*names, "gallery_labels") if k not in keys]
    extra = sorted(keys - {*names, *optional, "gallery_labels"})
    if missing or extra or (("topk_scores" in keys) != ("topk_indices" in keys)):
        raise InputFileError(p, "damaged partial-statistics file: tensors "
                                f"{', '.join(sorted(keys)) or 'none'} (missing: "
                                f"{', '.join(missing) or '-'}; unexpected: {', '.join(extra) or '-'})")
    if meta.get("sha256") != _digest(meta, t):
        raise InputFileError(p, "contents do not match the checksum recorded when it was written "
                                "(changed or damaged since): run the shard again")
    check_header(p, header, n_gallery, meta.get("metric"))
    stats: RankStats | VerifyStats
    if trials:
        n_query = header.get("n_query")
        stats = VerifyStats(meta["metric"], gen_values=t["gen_values"], gen_counts=t["gen_counts"],
                            imp_slots=t["imp_slots"], imp_keys=t["imp_keys"],
                            n_query=n_query if isinstance(n_query, int) else -1,
                            n_gallery=n_gallery)
        check_trials(p, stats, t["gallery_labels"], header["gallery_range"])
    else:
        stats = RankStats(meta["metric"], n_gallery, *(t[k] for k in _STATS),
                          *(t.get(k) for k in _TOPK))
        check_stats(p, stats, t["gallery_labels"], header["gallery_range"])
    return Partial(stats, t["gallery_labels"], {**header, "info": info}, p)


def _identity(job: dict) -> dict:
    """The job without informative fields: what every part of one run shares."""
    out = copy.deepcopy(job)
    for files in out.get("inputs", {}).values():
        for fp in files:
            fp.pop("file", None)
    return out


def _difference(a: dict, b: dict) -> str:
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                return f"{key}.{_difference(a[key], b[key])}"
            if key == "inputs" or key in ("query", "gallery"):
                return f"{key} (different files or file contents)"
            return f"{key}: {json.dumps(a.get(key))} vs {json.dumps(b.get(key))}"
    return "?"


def merge_parts(parts: list[Partial]) -> Partial:
    """Check that ``parts`` are the shards of one run, each exactly once, and merge them.

    The merge runs in shard order, so the result is the same for any order of ``parts``.
    Raises :class:`InputFileError` naming the file that does not fit.
    """
    if not parts:
        raise InputFileError("<parts>", "no partial-statistics file given")
    first = parts[0]
    ident = _identity(first.job)
    n = first.header["shard"][1]
    by_index: dict[int, Partial] = {}
    for part in parts:
        where = part.path or "<part>"
        if _identity(part.job) != ident:
            raise InputFileError(where, f"is from a different run than {first.path}: "
                                        f"{_difference(_identity(part.job), ident)}")
        i, count = part.header["shard"]
        if count != n:
            raise InputFileError(where, f"is shard {i}/{count} but {first.path} is one of {n} shards")
        if i in by_index:
            raise InputFileError(where, f"shard {i}/{n} is given twice (also {by_index[i].path})")
        by_index[i] = part
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        shown = ", ".join(f"{i}/{n}" for i in missing)
        raise InputFileError(first.path or "<parts>",
                             f"shard(s) {shown} missing: the parts of this run are "
                             f"{len(parts)} of {n} (run the missing shard(s) with "
                             "`embeval COMMAND ... --shard i/n`)")
    ordered = [by_index[i] for i in range(n)]
    check_together([(p.path or "<part>", p.stats) for p in ordered])
    stats = ordered[0].stats
    for part in ordered[1:]:
        stats = stats.merge(part.stats)  # type: ignore[arg-type]
    header = {k: v for k, v in first.header.items() if k not in ("shard", "gallery_range", "info")}
    header["shard"] = [0, 1]
    header["gallery_range"] = [0, first.stats.n_gallery]
    labels = torch.cat([p.gallery_labels for p in ordered])
    return replace(first, stats=stats, gallery_labels=labels, header=header, path=None)


def load_parts(paths: Sequence[str | os.PathLike[str]]) -> Partial:
    """Load, check and merge the parts in ``paths`` (files or quoted globs): one run's statistics."""
    return merge_parts([load_partial(p) for p in expand_paths([Path(p) for p in paths])])


def summarize_parts(merged: Partial, *, t0: float | None = None) -> EvalResult:
    """The result of the run whose merged parts are ``merged`` (:func:`merge_parts`).

    ``score`` parts keep the top-k per query when the run had one: it is summarised as the
    run's ``knn_k`` (as the single run of ``embeval score --out`` does).
    """
    job, stats = merged.job, merged.stats
    assert isinstance(stats, RankStats)  # verify parts are summarised by the verify command
    knn_k = job["knn_k"]
    if job["command"] == "score":
        knn_k = stats.topk_scores.shape[1] if stats.topk_scores is not None else None
    options = EvalOptions(**{k: job["options"][k] for k in RESULT_OPTIONS if k in job["options"]})
    return summarize(stats, merged.gallery_labels, ks=job["ks"], knn_k=knn_k,
                     no_positive=options.no_positive, pr=job["pr"],
                     options=options.result_options(), t0=t0)


def merge_partials(paths: Sequence[str | os.PathLike[str]]) -> EvalResult:
    """The result of one run from the partial-statistics files of its shards (the Python API
    of ``embeval merge``): the same metrics, bit for bit, per-query values and options as
    the run without ``--shard`` gives. ``paths``: files or quoted globs, every shard once.

    Raises :class:`InputFileError` naming the part that is damaged, missing or from another run.
    """
    t0 = time.perf_counter()
    return summarize_parts(load_parts(paths), t0=t0)
