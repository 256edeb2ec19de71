"""Checks of a partial-statistics file against its own header, and of parts against each other.

Every problem raises :class:`InputFileError` naming the part file. These checks catch
accidents and naive edits (a changed count, swapped shard claims, a truncated tensor, a
header field of the wrong type); the checksum of :mod:`embeval.results.partials` catches any edit
that does not recompute it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from embeval.engine import NO_INDEX, RankStats, shard_range
from embeval.engine.trials import KEY_BINS, VerifyStats
from embeval.errors import InputFileError
from embeval.options import AGGREGATES, AP_RULES, METRICS, NO_POSITIVE, PRECISIONS

__all__ = ["check_header", "check_stats", "check_trials", "check_together", "COMMANDS"]

COMMANDS = ("cmc", "score", "knn", "pr", "identify", "verify")
_OPTIONS: dict[str, Any] = {
    "metric": METRICS, "precision": PRECISIONS, "exclude_same_camera": bool, "exclude_self": bool,
    "aggregate": AGGREGATES, "no_positive": NO_POSITIVE, "ap": AP_RULES,
}


class _Bad(Exception):
    """A header field that does not fit (message: which and why)."""


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _int_pair(header: dict, key: str) -> tuple[int, int]:
    v = header.get(key)
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)):
        _need(False, f"{key!r} must be a list of two integers, got {v!r}")
    assert isinstance(v, list)
    return v[0], v[1]


def _check_job(job: object) -> None:
    _need(isinstance(job, dict), f"'job' must be an object, got {job!r}")
    assert isinstance(job, dict)
    _need(job.get("command") in COMMANDS, f"job.command must be one of {COMMANDS}")
    ks = job.get("ks")
    _need(isinstance(ks, list) and all(_is_int(k) and k >= 1 for k in ks),
          f"job.ks must be a list of positive integers, got {ks!r}")
    for key in ("knn_k", "out_topk"):
        v = job.get(key)
        _need(v is None or (_is_int(v) and v >= 1), f"job.{key} must be a positive integer or null")
    _need(isinstance(job.get("pr"), bool), "job.pr must be true or false")
    _need(isinstance(job.get("extra"), dict), "job.extra must be an object")
    names = job.get("label_names")
    _need(names is None or (isinstance(names, list) and all(isinstance(x, str) for x in names)),
          "job.label_names must be a list of strings or null")
    opts = job.get("options")
    _need(isinstance(opts, dict), "job.options must be an object")
    for key, allowed in _OPTIONS.items():
        if key == "ap" and key not in opts:  # type: ignore[operator]
            continue  # parts written before --ap existed: the standard AP
        v = opts.get(key)  # type: ignore[union-attr]
        ok = isinstance(v, allowed) if isinstance(allowed, type) else v in allowed
        _need(ok, f"job.options.{key}: {v!r} is not valid")
    inputs = job.get("inputs")
    _need(isinstance(inputs, dict), "job.inputs must be an object")
    for role in ("query", "gallery"):
        files = inputs.get(role)  # type: ignore[union-attr]
        _need(isinstance(files, list) and len(files) >= 1, f"job.inputs.{role} must be a list")
        for fp in files:
            _need(isinstance(fp, dict) and isinstance(fp.get("file"), str)
                  and _is_int(fp.get("size")) and isinstance(fp.get("sha256"), str),
                  f"job.inputs.{role}: each entry needs file, size and sha256")


def check_header(path: Path, header: object, n_gallery: int, metric: object) -> None:
    """The header's fields have the right types, and ``gallery_range`` is shard ``i/n``'s."""
    try:
        _need(isinstance(header, dict), "not a JSON object")
        assert isinstance(header, dict)
        _check_job(header.get("job"))
        _need(metric in METRICS, f"metric {metric!r} is not one of {METRICS}")
        _need(metric == header["job"]["options"]["metric"], "metric differs from job.options")
        _need(n_gallery >= 1, f"n_gallery {n_gallery} must be positive")
        i, n = _int_pair(header, "shard")
        _need(0 <= i < n, f"shard [{i}, {n}] needs 0 <= i < n")
        a, b = _int_pair(header, "gallery_range")
    except _Bad as e:
        raise InputFileError(path, f"damaged partial-statistics header: {e}") from None
    expected = list(shard_range(n_gallery, i, n))
    if [a, b] != expected:
        raise InputFileError(path, f"claims shard {i}/{n} of {n_gallery} gallery items, whose "
                                   f"items are {expected[0]}:{expected[1]}, but holds items {a}:{b}")


_DTYPES = {"query_labels": torch.int64, "pos_offsets": torch.int64, "pos_scores": torch.float32,
           "neg_hist": torch.int64, "n_neg": torch.int64, "max_neg": torch.float32,
           "topk_scores": torch.float32, "topk_indices": torch.int64}


_SCORES = ("pos_scores", "max_neg", "topk_scores")  # float32, or all float64 (re-ranked: −r)


def _check_shapes(s: RankStats, gallery_labels: torch.Tensor, shard_size: int) -> None:
    wide = s.pos_scores.dtype == torch.float64
    for name, dtype in _DTYPES.items():
        t = getattr(s, name)
        if wide and name in _SCORES:
            dtype = torch.float64
        _need(t is None or t.dtype == dtype, f"{name} is {getattr(t, 'dtype', None)}, not {dtype}")
    _need(gallery_labels.dtype == torch.int64, f"gallery_labels is {gallery_labels.dtype}, not int64")
    q = s.query_labels.numel()
    for name, shape in (("query_labels", [q]), ("pos_offsets", [q + 1]), ("n_neg", [q]),
                        ("max_neg", [q]), ("pos_scores", [s.pos_scores.numel()]),
                        ("neg_hist", [s.pos_scores.numel() + q]),
                        ("gallery_labels", [shard_size])):
        t = gallery_labels if name == "gallery_labels" else getattr(s, name)
        _need(list(t.shape) == shape, f"{name} has shape {list(t.shape)}, expected {shape} "
                                      f"({q} queries, {s.pos_scores.numel()} positives, "
                                      f"{shard_size} gallery items)")
    if s.topk_scores is not None:
        ts, ti = s.topk_scores, s.topk_indices
        _need(ts.dim() == 2 and ts.shape[0] == q and ts.shape == ti.shape,  # type: ignore[union-attr]
              f"topk_scores {list(ts.shape)} / topk_indices {list(ti.shape)} "  # type: ignore[union-attr]
              f"must both be [{q}, k]")


def _check_values(s: RankStats, a: int, b: int) -> None:
    off, n_pos = s.pos_offsets, s.pos_offsets.diff()
    _need(int(off[0]) == 0 and bool((n_pos >= 0).all()) and int(off[-1]) == s.pos_scores.numel(),
          "pos_offsets must rise from 0 to the number of positives")
    _need(bool(torch.isfinite(s.pos_scores).all()), "pos_scores holds NaN or Inf")
    first = torch.zeros(s.pos_scores.numel(), dtype=torch.bool)
    first[off[:-1][n_pos > 0]] = True
    _need(bool(((s.pos_scores.diff() >= 0) | first[1:]).all()),
          "pos_scores are not ascending within a query")
    _need(bool((s.neg_hist >= 0).all()) and bool((s.n_neg >= 0).all()), "negative counts")
    _need(bool((s.n_neg <= b - a).all()), f"n_neg exceeds the shard's {b - a} gallery items")
    owner = torch.repeat_interleave(torch.arange(s.n_query), n_pos + 1)
    sums = torch.zeros(s.n_query, dtype=torch.int64).index_add_(0, owner, s.neg_hist)
    # bin 0 (negatives below every positive) is left implicit by the engines: at most n_neg
    _need(bool((sums <= s.n_neg).all()), "neg_hist counts more negatives than n_neg")
    m = s.max_neg
    _need(not bool((torch.isnan(m) | (m == float("inf"))).any()), "max_neg holds NaN or +Inf")
    _need(bool((m[s.n_neg == 0] == float("-inf")).all()), "max_neg is set where n_neg is 0")
    if s.topk_scores is not None:
        ts, ti = s.topk_scores, s.topk_indices
        assert ti is not None  # the loader reads both or neither
        empty = ti == NO_INDEX
        _need(bool(((ti >= a) & (ti < b) | empty).all()),
              f"topk_indices outside the shard's items {a}:{b}")
        _need(not bool(torch.isnan(ts).any()) and bool((ts[empty] == float("-inf")).all())
              and bool(torch.isfinite(ts[~empty]).all()), "topk_scores do not fit topk_indices")


def check_stats(path: Path, s: RankStats, gallery_labels: torch.Tensor,
                gallery_range: Sequence[int]) -> None:
    """Shapes, dtypes and value ranges of one part's statistics (see :class:`RankStats`)."""
    a, b = gallery_range
    try:
        _check_shapes(s, gallery_labels, b - a)
        _check_values(s, a, b)
    except _Bad as e:
        raise InputFileError(path, f"damaged partial statistics: {e}") from None


def check_trials(path: Path, s: VerifyStats, gallery_labels: torch.Tensor,
                 gallery_range: Sequence[int]) -> None:
    """Shapes, dtypes and value ranges of one verification part (see :class:`VerifyStats`)."""
    a, b = gallery_range
    try:
        for name, dtype in (("gen_values", torch.float32), ("gen_counts", torch.int64),
                            ("imp_slots", torch.int64), ("imp_keys", torch.int64)):
            t = getattr(s, name)
            _need(t.dtype == dtype, f"{name} is {t.dtype}, not {dtype}")
        u = s.gen_values.numel()
        for name, shape in (("gen_values", [u]), ("gen_counts", [u]), ("imp_slots", [2 * u + 1]),
                            ("imp_keys", [KEY_BINS]), ("gallery_labels", [b - a])):
            t = gallery_labels if name == "gallery_labels" else getattr(s, name)
            _need(list(t.shape) == shape, f"{name} has shape {list(t.shape)}, expected {shape}")
        _need(s.n_query >= 1, "header n_query must be a positive integer")
        _need(bool(torch.isfinite(s.gen_values).all()), "gen_values holds NaN or Inf")
        _need(bool((s.gen_values.diff() > 0).all()), "gen_values are not strictly ascending")
        _need(bool((s.gen_counts >= 1).all()), "gen_counts must be positive")
        _need(bool((s.imp_slots >= 0).all()) and bool((s.imp_keys >= 0).all()), "negative counts")
        _need(int(s.imp_slots.sum()) == int(s.imp_keys.sum()),
              "imp_slots and imp_keys count different numbers of impostors")
        _need(s.n_impostor + s.n_genuine <= s.n_query * s.n_gallery,
              f"more trials than {s.n_query} queries × {s.n_gallery} gallery items")
        _need(s.n_impostor <= s.n_query * (b - a),
              f"more impostors than {s.n_query} queries × the shard's {b - a} gallery items")
    except _Bad as e:
        raise InputFileError(path, f"damaged partial statistics: {e}") from None


def check_together(parts: Sequence[tuple[Path | str, RankStats | VerifyStats]]) -> None:
    """Parts of one run share queries and positives (genuine trials); counts add up to at
    most the gallery."""
    first_path, first = parts[0]
    if isinstance(first, VerifyStats):
        _trials_together(parts)
        return
    total = first.n_pos.clone()
    for where, s in parts:
        assert isinstance(s, RankStats) and isinstance(first, RankStats)
        for name in ("query_labels", "pos_offsets", "pos_scores"):
            if not torch.equal(getattr(s, name), getattr(first, name)):
                raise InputFileError(where, f"{name} differ from those of {first_path} "
                                            "(every shard of one run holds the same ones)")
        if s.n_gallery != first.n_gallery or (s.topk_scores is None) != (first.topk_scores is None) \
                or (s.topk_scores is not None and s.topk_scores.shape != first.topk_scores.shape):  # type: ignore[union-attr]
            raise InputFileError(where, f"gallery size or top-k differ from {first_path}")
        total += s.n_neg
    if bool((total > first.n_gallery).any()):
        raise InputFileError(first_path, "positives and negatives of a query add up to more than "
                                         f"the {first.n_gallery} gallery items")


def _trials_together(parts: Sequence[tuple[Path | str, RankStats | VerifyStats]]) -> None:
    first_path, first = parts[0]
    total = 0
    for where, s in parts:
        assert isinstance(s, VerifyStats) and isinstance(first, VerifyStats)
        if not (torch.equal(s.gen_values, first.gen_values)
                and torch.equal(s.gen_counts, first.gen_counts)
                and (s.n_query, s.n_gallery) == (first.n_query, first.n_gallery)):
            raise InputFileError(where, f"genuine trials or set sizes differ from those of "
                                        f"{first_path} (every shard of one run holds the same)")
        total += s.n_impostor
    assert isinstance(first, VerifyStats)
    if total + first.n_genuine > first.n_query * first.n_gallery:
        raise InputFileError(first_path, f"the parts count more trials than {first.n_query} "
                                         f"queries × {first.n_gallery} gallery items")
