"""Result files (``--save-result FILE``): a whole result, so that ``compare`` and ``report`` need
not recompute it.

A safetensors file: ``query_labels`` [Q] int64; ``terms.values`` [Q, M] float64 and
``terms.include`` [Q, M] uint8 (the per-query terms of the M mean metrics,
:mod:`embeval.uncertainty.terms`); ``openset.*`` (identify: ``mated``, ``decision``,
``first_rank``); ``per_query.<name>`` (the result's per-query columns); ``trials.*`` (verify:
the trial counts behind its ROC). Metadata: ``embeval.result`` (format), ``result`` (JSON:
command, metrics, options, input fingerprints, counts, term names, intervals) and ``sha256``
(a digest of both). Written atomically (complete or absent), read with ``safe_open`` (nothing
unpickled) and refused when damaged or edited: the digest, the shapes, and every mean metric
recomputed from its per-query terms must agree with the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from embeval import __version__
from embeval.data.safetensors_io import tensor_digest, write_safetensors
from embeval.errors import EmbevalError, InputFileError
from embeval.metrics import exact_mean
from embeval.options import check_resample_work
from embeval.outputs import atomic_path

from .bootstrap import MeanStatistics
from .listed import ListedTrials, VerificationStatistics, verification_keys
from .openset import OpenSetRecords, OpenSetStatistics, open_set_records, tpir_key
from .terms import Terms, mean_terms

__all__ = ["SavedResult", "saved_result", "save_result", "load_result", "query_items", "FORMAT"]

FORMAT = "1"
_TRIALS = ("gen_values", "gen_counts", "imp_slots", "imp_keys")


@dataclass
class SavedResult:
    """What a result file holds (see the module doc); ``metrics`` as reported (None: n/a)."""

    command: str
    metrics: dict[str, Any]
    options: dict[str, Any]
    inputs: dict[str, Any]
    n_query: int
    n_gallery: int
    query_labels: torch.Tensor
    terms: dict[str, Terms]
    openset: OpenSetRecords | None = None
    listed: ListedTrials | None = None
    per_query: dict[str, torch.Tensor] = field(default_factory=dict)
    trials: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else self.command


def query_items(labels: torch.Tensor, cameras: torch.Tensor | None,
                paths: list[str] | None) -> dict[str, Any]:
    """What identifies a query set whatever model embedded it: ``{"n", "paths", "sha256"}``, a
    digest of the labels, cameras and item paths (``paths``: whether the file recorded them)."""
    h = hashlib.sha256(labels.to(torch.int64).contiguous().numpy().tobytes())
    h.update(b"cameras" + (cameras.to(torch.int64).contiguous().numpy().tobytes()
                           if cameras is not None else b"-"))
    h.update(b"paths" + ("\n".join(paths).encode("utf-8") if paths is not None else b"-"))
    return {"n": len(labels), "paths": paths is not None, "sha256": h.hexdigest()}


def saved_result(command: str, result: Any, *, inputs: dict, extra: dict | None = None,
                 intervals: dict | None = None) -> SavedResult:
    """The :class:`SavedResult` of a computed result (EvalResult, IdentifyResult,
    RevisitedResult or VerifyResult); ``intervals``: the ``--json`` ``ci`` object and options."""
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v)
               for k, v in result.metrics.items()}
    stats = result.stats
    trials = None
    if hasattr(stats, "gen_values"):  # VerifyStats: no queries ranked
        labels = torch.zeros(0, dtype=torch.int64)
        terms: dict[str, Terms] = {}
        trials = {k: getattr(stats, k).contiguous() for k in _TRIALS}
    else:
        labels = stats.query_labels
        terms = mean_terms(result)
    per_query = {k: v for k, v in (getattr(result, "per_query", None) or {}).items()
                 if isinstance(v, torch.Tensor) and v.dim() == 1}
    openset = open_set_records(stats) if "fpir_rule" in result.options else None
    listed = getattr(result, "listed", None)
    return SavedResult(command, metrics, dict(result.options), inputs, int(result.n_query),
                       int(result.n_gallery), labels, terms, openset,
                       ListedTrials(*listed) if listed is not None else None, per_query, trials,
                       dict(extra or {}), intervals)


def _tensors(s: SavedResult) -> dict[str, torch.Tensor]:
    names = list(s.terms)
    q = len(s.query_labels)
    t = {"query_labels": s.query_labels.to(torch.int64).contiguous(),
         "terms.values": (torch.stack([s.terms[k].values for k in names], 1) if names
                          else torch.zeros(q, 0, dtype=torch.float64)).contiguous(),
         "terms.include": (torch.stack([s.terms[k].include for k in names], 1) if names
                           else torch.zeros(q, 0, dtype=torch.bool)).to(torch.uint8).contiguous()}
    if s.openset is not None:
        t.update({"openset.mated": s.openset.mated.to(torch.uint8).contiguous(),
                  "openset.decision": s.openset.decision.contiguous(),
                  "openset.first_rank": s.openset.first_rank.contiguous()})
    if s.listed is not None:
        t.update({"listed.scores": s.listed.scores.float().contiguous(),
                  "listed.genuine": s.listed.genuine.to(torch.uint8).contiguous(),
                  "listed.labels": s.listed.labels.to(torch.int64).contiguous()})
    t.update({f"per_query.{k}": v.contiguous() for k, v in s.per_query.items()})
    t.update({f"trials.{k}": v for k, v in (s.trials or {}).items()})
    return t


def _header(s: SavedResult) -> str:
    # keys in the result's order (not sorted): a loaded file lists its metrics as reported
    return json.dumps({"command": s.command, "metrics": s.metrics, "options": s.options,
                       "inputs": s.inputs, "n_query": s.n_query, "n_gallery": s.n_gallery,
                       "terms": list(s.terms), "extra": s.extra, "intervals": s.intervals,
                       "embeval": __version__}, separators=(",", ":"))


def save_result(path: str | os.PathLike[str], saved: SavedResult) -> Path:
    """Write ``saved`` to ``path`` atomically (respecting the umask)."""
    tensors = _tensors(saved)
    meta = {"embeval.result": FORMAT, "result": _header(saved)}
    meta["sha256"] = tensor_digest(tensors, prefix=meta["result"].encode("utf-8"))
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, tensors, meta)
    return p


def load_result(path: str | os.PathLike[str]) -> SavedResult:
    """Read and check a result file; :class:`InputFileError` naming it when it is not one,
    is damaged, or was edited (digest, shapes, or metrics that its per-query values do not
    give)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "no such file" if not p.exists() else "is not a regular file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("embeval.result") != FORMAT:
                raise InputFileError(p, "not an embeval result file (write one with "
                                        "`embeval cmc ... --save-result FILE`)"
                                     if "embeval.result" not in meta else
                                     f"result format {meta['embeval.result']!r} is not the one "
                                     f"this embeval reads ({FORMAT!r})")
            t = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise InputFileError(p, f"not a readable safetensors file ({e})") from None
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    if meta.get("sha256") != tensor_digest(t, prefix=meta.get("result", "").encode("utf-8")):
        raise InputFileError(p, "contents do not match the checksum recorded when it was written "
                                "(changed or damaged since)")
    try:
        h = json.loads(meta["result"])
        _check_header(p, h)
        saved = _checked(p, h, t)
        _check_counts(p, saved)
        _check_intervals(p, saved)
        return saved
    except EmbevalError as e:  # already names the file (once)
        if isinstance(e, InputFileError) and e.path == str(p):
            raise
        raise InputFileError(p, f"damaged result file ({e})") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError,
            OverflowError) as e:
        raise InputFileError(p, f"damaged result file ({type(e).__name__}: {e})") from None


_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "command": str, "metrics": dict, "options": dict, "inputs": dict, "n_query": int,
    "n_gallery": int, "terms": list, "extra": dict, "intervals": (dict, type(None))}


def _check_header(p: Path, h: Any) -> None:
    """The JSON header's fields have their types (an edited one that does not is refused)."""
    if not isinstance(h, dict):
        raise InputFileError(p, "damaged result file: its header is not a JSON object")
    for key, kind in _HEADER_TYPES.items():
        v = h.get(key)
        if not isinstance(v, kind) or isinstance(v, bool) or \
                (isinstance(v, int) and not 0 <= v < 1 << 62):
            raise InputFileError(p, f"damaged result file: {key!r} is not "
                                    f"{'a count' if kind is int else 'of the expected type'}")
    for k, v in h["metrics"].items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v)):
            raise InputFileError(p, f"damaged result file: metric {k!r} is not a finite number")


def _check_counts(p: Path, s: SavedResult) -> None:
    """Counts and trial-count metrics that the file's tensors fix: every finite rank of a query
    is at most ``n_gallery``; an all-pairs verification's metrics are recomputed from its trial
    counts, which number at most ``n_query × n_gallery`` (exactly that without exclusions).
    With the ``nearest`` rule a TAR@FAR must be one of the values that the counts allow (the
    impostor scores inside a run between two genuine scores are not kept)."""
    for name in ("first_rank", "last_rank", "n_pos"):
        v = s.per_query.get(name)
        if v is not None and v.numel():
            finite = v[torch.isfinite(v.double())] if v.is_floating_point() else v
            if finite.numel() and (float(finite.max()) > s.n_gallery or float(finite.min()) < 0):
                raise InputFileError(p, f"n_gallery {s.n_gallery} does not agree with its per-query "
                                        f"{name} (up to {float(finite.max()):g}): the file was "
                                        "edited or is damaged")
    if s.trials is None:
        if s.listed is None:
            _check_gallery_size(p, s)
        return
    from embeval.engine.trials import VerifyStats
    from embeval.verification.roc import nearest_far_candidates, verification_metrics

    t = s.trials
    u = len(t["gen_values"])
    if t["gen_values"].dtype != torch.float32 or t["gen_counts"].dtype != torch.int64 \
            or t["imp_slots"].dtype != torch.int64 or t["imp_keys"].dtype != torch.int64 \
            or tuple(t["gen_counts"].shape) != (u,) or tuple(t["imp_slots"].shape) != (2 * u + 1,) \
            or t["imp_keys"].dim() != 1 or not bool(torch.isfinite(t["gen_values"]).all()) \
            or bool((t["gen_counts"] < 1).any()) or bool((t["imp_slots"] < 0).any()) \
            or bool((t["imp_keys"] < 0).any()) or (u > 1 and bool((t["gen_values"].diff() <= 0).any())):
        raise InputFileError(p, "damaged result file: trial counts of the wrong type, shape or value")
    stats = VerifyStats(str(s.options.get("metric", "cosine")), t["gen_values"], t["gen_counts"],
                        t["imp_slots"], t["imp_keys"], s.n_query, s.n_gallery)
    trials = stats.n_genuine + stats.n_impostor
    o = s.options
    excluded = bool(o.get("exclude_self")) or bool(o.get("exclude_same_camera"))
    if s.listed is None and not o.get("templates") and not o.get("pairs") and \
            (trials > s.n_query * s.n_gallery or (not excluded and trials != s.n_query * s.n_gallery)):
        raise InputFileError(p, f"n_query {s.n_query} x n_gallery {s.n_gallery} does not agree with "
                                f"its {trials} trials: the file was edited or is damaged")
    if s.listed is not None:
        return  # the listed trials' metrics are recomputed from them (_checked)
    fars = [float(k.split("=", 1)[1]) for k in s.metrics if k.startswith("TAR@FAR=")]
    step = str(o.get("far_rule", "step")) == "step"
    got = verification_metrics(stats, fars)
    near = None if step else nearest_far_candidates(stats, fars)
    for k, want in s.metrics.items():
        if k.startswith(("TAR@FAR=", "threshold@FAR=")) and \
                (k not in got or (not step and k.startswith("threshold@FAR="))):
            raise InputFileError(p, f"damaged result file: metric {k} is not one its trial counts "
                                    f"give under the {o.get('far_rule', 'step')} rule")
        if near is not None and k.startswith("TAR@FAR="):  # the scores inside a run are not kept
            values = near.get(float(k.split("=", 1)[1]), [math.nan])
            if not any(_same(want, v, 1e-9) for v in values):
                raise InputFileError(p, f"metric {k} = {want} does not follow from its trial counts "
                                        f"({' or '.join(f'{v:g}' for v in values)}): the file was "
                                        "edited or is damaged")
        elif k in got and not _same(want, float(got[k]), 1e-9):
            raise InputFileError(p, f"metric {k} = {want} does not follow from its trial counts "
                                    f"({got[k]}): the file was edited or is damaged")
    if step and set(got) - set(s.metrics) - {"AUC", "EER", "EER_threshold"} == set() and \
            {"AUC", "EER"} - set(s.metrics):
        raise InputFileError(p, "damaged result file: AUC or EER missing")


def _check_gallery_size(p: Path, s: SavedResult) -> None:
    """What pins a ranking's ``n_gallery`` beyond its ranks (which only bound it from below):
    ``exclude_self`` ranks the query set against itself, so ``n_gallery = n_query``; a query
    without a negative (empty ``hard_neg``) in a run that drops no item (no exclusion, relevance
    lists or revisited protocol) had every gallery item as a positive: ``n_gallery`` is its
    ``n_pos``. Otherwise nothing in the file counts the negatives, and a larger value passes."""
    if s.options.get("exclude_self"):
        if s.n_gallery != s.n_query:
            raise InputFileError(p, f"n_gallery {s.n_gallery} does not agree with exclude_self, "
                                    f"which ranks its {s.n_query} queries against themselves: the "
                                    "file was edited or is damaged")
        return
    hard_neg, n_pos = s.per_query.get("hard_neg"), s.per_query.get("n_pos")
    if s.options.get("exclude_same_camera") or "relevance" in s.inputs or s.extra.get("protocol") \
            or hard_neg is None or n_pos is None or hard_neg.shape != n_pos.shape:
        return
    alone = n_pos[torch.isnan(hard_neg.double())].unique()
    if len(alone) and (len(alone) > 1 or int(alone[0]) != s.n_gallery):
        raise InputFileError(p, f"n_gallery {s.n_gallery} does not agree with a query that has no "
                                f"negative and {int(alone[-1])} positives (it saw every gallery "
                                "item): the file was edited or is damaged")


def _check_intervals(p: Path, s: SavedResult) -> None:
    """A saved interval block is recomputed from the file's records (same options) or refused."""
    if s.intervals is None:
        return
    from embeval.options import IntervalOptions

    from .bootstrap import percentile_interval, replicates, resampling_units
    from .confidence import Joined

    block, opts = s.intervals.get("ci"), s.intervals.get("options")
    if not isinstance(block, dict) or not isinstance(opts, dict):
        raise InputFileError(p, "damaged result file: its interval block is not {ci, options}")
    o = IntervalOptions(opts.get("ci_level"), opts.get("ci_resamples"),  # type: ignore[arg-type]
                        opts.get("ci_seed"), opts.get("ci_by"))  # type: ignore[arg-type]
    labels = s.listed.labels if s.listed is not None else s.query_labels
    unit, n_units = resampling_units(labels, o.by)
    means = [k for k in s.terms if k in block]
    parts: list[Any] = []
    if means:
        parts.append(MeanStatistics(np.stack([s.terms[k].values.numpy() for k in means], 1),
                                    np.stack([s.terms[k].include.numpy() for k in means], 1),
                                    unit, n_units))
    tpirs = [tpir_key(k) for k in s.metrics if k.startswith("TPIR@FPIR=") and k in block]
    if tpirs and s.openset is not None:
        parts.append(OpenSetStatistics(s.openset, tpirs, str(s.options.get("fpir_rule"))))
    else:
        tpirs = []
    listed = verification_keys(s.metrics, str(s.options.get("far_rule", "step"))) \
        if s.listed is not None else []
    listed = [k for k in listed if k in block]
    if listed and s.listed is not None:
        parts.append(VerificationStatistics(s.listed, listed))
    names = means + [k for k, _, _ in tpirs] + listed
    if set(block) != set(names):
        extra = sorted(set(block) ^ set(names))
        raise InputFileError(p, f"damaged result file: interval of {extra[0]!r} "
                                f"{'not recomputable' if extra[0] in block else 'missing'}")
    if not names:
        return
    check_resample_work(o.n_resamples, len(labels))
    got = percentile_interval(replicates(Joined(parts), unit, n_units, o.n_resamples, o.seed), o.level)
    for k, bounds in zip(names, got):
        want = block[k]
        if bounds is None and want is None:
            continue
        if bounds is None or not isinstance(want, list) or len(want) != 2 or \
                not all(_same(w, g, 1e-9) for w, g in zip(want, bounds)):
            raise InputFileError(p, f"interval of {k} = {want} does not follow from its per-query "
                                    f"values ({list(bounds) if bounds else None}): the file was "
                                    "edited or is damaged")


def _checked(p: Path, h: dict, t: dict[str, torch.Tensor]) -> SavedResult:
    labels, values, include = t["query_labels"], t["terms.values"], t["terms.include"]
    q, names = len(labels), list(h["terms"])
    if labels.dtype != torch.int64 or values.dtype != torch.float64 or \
            tuple(values.shape) != (q, len(names)) or tuple(include.shape) != (q, len(names)) \
            or include.dtype != torch.uint8 or bool((include > 1).any()) or \
            q != (0 if h["command"] == "verify" else h["n_query"]):
        raise InputFileError(p, "damaged result file: per-query tensors of the wrong type or shape")
    if not bool(torch.isfinite(values).all()):
        raise InputFileError(p, "holds per-query values that are not finite numbers: refused")
    terms = {k: Terms(values[:, i], include[:, i].bool()) for i, k in enumerate(names)}
    for k, (v, inc) in terms.items():
        want, got = h["metrics"].get(k), exact_mean(v[inc])
        if not _same(want, got):
            raise InputFileError(p, f"metric {k} = {want} does not follow from its per-query "
                                    f"values ({got}): the file was edited or is damaged")
    openset = None
    if "openset.mated" in t:
        openset = OpenSetRecords(t["openset.mated"].bool(), t["openset.decision"],
                                 t["openset.first_rank"])
        if any(len(x) != q for x in openset):
            raise InputFileError(p, "damaged result file: open-set records of the wrong shape")
        keys = [tpir_key(k) for k in h["metrics"] if k.startswith("TPIR@FPIR=")]
        if keys:
            got = OpenSetStatistics(openset, keys, h["options"]["fpir_rule"])(torch.ones(1, q).numpy())[0]
            for (k, _, _), value in zip(keys, got):
                if not _same(h["metrics"][k], float(value)):
                    raise InputFileError(p, f"metric {k} = {h['metrics'][k]} does not follow "
                                            f"from its per-query records ({value}): the file "
                                            "was edited or is damaged")
    listed = None
    if "listed.scores" in t:
        listed = ListedTrials(t["listed.scores"], t["listed.genuine"].bool(), t["listed.labels"])
        if len({len(x) for x in listed}) != 1 or listed.scores.dtype != torch.float32 \
                or not bool(torch.isfinite(listed.scores).all()):
            raise InputFileError(p, "damaged result file: listed trials of the wrong shape, "
                                    "type or value")
        names = verification_keys(h["metrics"], str(h["options"].get("far_rule", "step")))
        got = VerificationStatistics(listed, names)(torch.ones(1, len(listed.scores)).numpy())[0]
        for k, value in zip(names, got):
            if not _same(h["metrics"][k], float(value), 1e-9):
                raise InputFileError(p, f"metric {k} = {h['metrics'][k]} does not follow from "
                                        f"its listed trials ({value}): the file was edited or "
                                        "is damaged")
    per_query = {k.removeprefix("per_query."): v for k, v in t.items() if k.startswith("per_query.")}
    trials = {k.removeprefix("trials."): v for k, v in t.items() if k.startswith("trials.")} or None
    return SavedResult(h["command"], h["metrics"], h["options"], h["inputs"], h["n_query"],
                       h["n_gallery"], labels, terms, openset, listed, per_query, trials,
                       h["extra"], h["intervals"], p)


def _same(want: Any, got: float, tolerance: float = 1e-12) -> bool:
    if want is None:
        return math.isnan(got)
    return isinstance(want, (int, float)) and abs(float(want) - got) <= tolerance * max(1.0, abs(got))
