"""Revisited Oxford / Paris (Radenović et al., CVPR 2018): mAP and mP@k in the easy, medium and
hard settings, from a ground-truth file of ``easy``, ``hard`` and ``junk`` lists per query.

Ground truth, CSV (UTF-8, header row ``query,gallery,kind`` in any order, then one pair per
line; ``kind``: ``easy``, ``hard`` or ``junk``; indices are 0-based rows of the embedding
files; an identical line twice counts once, a pair with two kinds is an error), or
``.safetensors`` with six 1-D int64 tensors, three CSR lists: ``easy_offsets`` [Q+1] and
``easy`` [M_easy] (query i's easy items are ``easy[easy_offsets[i]:easy_offsets[i+1]]``), the
same for ``hard`` and ``junk``. The settings, as revisitop's ``compute_map``:

- easy: positives = easy, ignored = junk ∪ hard;
- medium: positives = easy ∪ hard, ignored = junk;
- hard: positives = hard, ignored = junk ∪ easy.

One ranking pass per setting (three in all); ignored items are invisible to their query
(:class:`~embeval.data.relevance.Relevance` junk). Queries without positives in a setting
are skipped in its means, as revisitop does. With query expansion and/or DBA
(:class:`~embeval.rerank.options.RerankOptions` ``qe`` / ``dba``) the new embeddings are
computed once (their neighbours use no label or list), then the three settings rank them.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embeval import metrics as M
from embeval.data.int_csv import check_file, csv_problem, parse_int, shorten
from embeval.data.relevance import Relevance
from embeval.data.safetensors_io import read_named
from embeval.data.store import EmbeddingSet
from embeval.engine import RankStats
from embeval.engine.rank import Progress
from embeval.errors import InputFileError, OptionError
from embeval.evaluation import EvalResult, evaluation_stats, summarize
from embeval.options import EvalOptions
from embeval.rerank.options import RerankOptions

__all__ = ["KINDS", "SETTINGS", "read_revisited", "revisited_settings", "revisited",
           "RevisitedResult"]

#: the kinds of a ground-truth row, and each setting's positive / ignored kinds
KINDS = ("easy", "hard", "junk")
SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
_COLUMNS = ("query", "gallery", "kind")
_HINT = "'query,gallery,kind' (kind: easy, hard or junk)"
_BATCH = 1 << 16  # rows parsed before they become one int64 array


def read_revisited(path: str | os.PathLike[str], n_query: int,
                   n_gallery: int) -> dict[str, Relevance]:
    """The three settings' lists ``{"easy", "medium", "hard"} → Relevance`` of a ground-truth
    file (CSV or ``.safetensors``, see the module docstring) for ``n_query`` × ``n_gallery``.

    Raises :class:`InputFileError` naming the file (and the line, for CSV).
    """
    p = Path(path)
    check_file(p, "a revisited ground-truth file (CSV or .safetensors)")
    if p.suffix.lower() == ".safetensors":
        q, g, kind = _read_safetensors(p, n_query, n_gallery)
    else:
        q, g, kind = _read_csv(p, n_query, n_gallery)
    return revisited_settings(q, g, kind, n_query=n_query, n_gallery=n_gallery, source=str(p))


def revisited_settings(query: np.ndarray, gallery: np.ndarray, kind: np.ndarray, *,
                       n_query: int, n_gallery: int,
                       source: str = "<ground truth>") -> dict[str, Relevance]:
    """The settings' :class:`Relevance` from pairs [M] (indices) and ``kind`` [M] (0 easy,
    1 hard, 2 junk), each pair with one kind."""
    t = torch.from_numpy
    out = {}
    for name, (positive, ignored) in SETTINGS.items():
        pos = np.isin(kind, [KINDS.index(k) for k in positive])
        keep = pos | np.isin(kind, [KINDS.index(k) for k in ignored])
        out[name] = Relevance.from_pairs(
            t(query[keep]), t(gallery[keep]), t(np.where(pos[keep], 1, -1)),
            n_query=n_query, n_gallery=n_gallery, source=source)
    return out


def _read_csv(p: Path, n_query: int, n_gallery: int) -> tuple[np.ndarray, ...]:
    """Rows as int64 arrays, read in batches (memory: about 40 bytes per line, never a Python
    object per pair); identical lines count once, a pair with two kinds names both lines."""
    parts: list[np.ndarray] = []  # [b, 4] query, gallery, kind, line
    batch: list[tuple[int, int, int, int]] = []
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f, strict=True)
            line = 1  # the line the record being read starts on
            try:
                columns = _header(p, [c.strip() for c in next(rows, [])])
                line = rows.line_num + 1
                for row in rows:
                    if any(c.strip() for c in row):
                        batch.append((*_row(p, line, row, columns, n_query, n_gallery), line))
                        if len(batch) == _BATCH:
                            parts.append(np.array(batch, dtype=np.int64))
                            batch = []
                    line = rows.line_num + 1
            except csv.Error as e:
                raise InputFileError(p, f"line {line}: {csv_problem(e)}") from None
    except UnicodeDecodeError:
        raise InputFileError(p, "is not UTF-8 text (expected a CSV ground-truth file)") from None
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    if batch:
        parts.append(np.array(batch, dtype=np.int64))
    if not parts:
        raise InputFileError(p, "no pairs after the header row")
    table = np.concatenate(parts)
    del parts, batch
    q, g, kind, lines = table.T
    key = q * max(n_gallery, 1) + g
    order = np.lexsort((lines, key))  # by pair, then file order
    k_sorted = kind[order]
    first = np.r_[True, key[order][1:] != key[order][:-1]]
    run_kind = k_sorted[np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))]
    clash = k_sorted != run_kind
    if clash.any():  # the first line (in file order) whose kind differs from its pair's first
        at = order[clash][np.argmin(lines[order[clash]])]
        before = lines[(key == key[at])].min()
        prev = kind[(key == key[at]) & (lines == before)][0]
        raise InputFileError(p, f"line {lines[at]}: pair (query {q[at]}, gallery {g[at]}) is "
                                f"{KINDS[kind[at]]!r} here but {KINDS[prev]!r} on line {before}")
    keep = np.sort(order[first])  # each pair once, at its first line, in file order
    return q[keep].copy(), g[keep].copy(), kind[keep].copy()


def _header(p: Path, header: list[str]) -> list[int]:
    """The header positions of query, gallery, kind."""
    shown = shorten(",".join(header), 80)
    if sorted(header) != sorted(_COLUMNS):
        raise InputFileError(p, f"line 1: expected the header row {_HINT}, got {shown!r}")
    return [header.index(c) for c in _COLUMNS]


def _row(p: Path, line: int, row: list[str], order: list[int], n_query: int,
         n_gallery: int) -> tuple[int, int, int]:
    if len(row) != len(_COLUMNS):
        raise InputFileError(p, f"line {line}: expected 3 cells (query,gallery,kind), got "
                                f"{len(row)}")
    cells = [row[i].strip() for i in order]
    values = []
    for name, text, n in (("query", cells[0], n_query), ("gallery", cells[1], n_gallery)):
        v = parse_int(text)
        if v is None:
            raise InputFileError(p, f"line {line}: {name} {shorten(text)!r} is not an integer "
                                    "index (ASCII digits)")
        if isinstance(v, str) or not 0 <= v < n:
            raise InputFileError(p, f"line {line}: {name} index {v} is out of range [0, {n}) "
                                    "(0-based row of the embedding file)")
        values.append(v)
    if cells[2] not in KINDS:
        raise InputFileError(p, f"line {line}: unknown kind {shorten(cells[2])!r} (easy, hard or "
                                "junk)")
    return values[0], values[1], KINDS.index(cells[2])


def _read_safetensors(p: Path, n_query: int, n_gallery: int) -> tuple[np.ndarray, ...]:
    names = [n for k in KINDS for n in (f"{k}_offsets", k)]
    t = read_named(p, names, "a revisited ground-truth file holds int64 'easy_offsets' [Q+1], "
                             "'easy' [M], the same for 'hard' and 'junk'")
    qs, gs, ks = [], [], []
    for kind_id, kind in enumerate(KINDS):
        off, g = t[f"{kind}_offsets"], t[kind]
        for n, x in ((f"{kind}_offsets", off), (kind, g)):
            if x.dtype != torch.int64 or x.dim() != 1:
                raise InputFileError(p, f"{n!r} must be a 1-D int64 tensor, got "
                                        f"{str(x.dtype).removeprefix('torch.')} of shape "
                                        f"{list(x.shape)}")
        if len(off) != n_query + 1:
            raise InputFileError(p, f"'{kind}_offsets' has {len(off)} entries, expected "
                                    f"{n_query + 1} (queries + 1)")
        if int(off[0]) != 0 or int(off[-1]) != len(g) or bool((off.diff() < 0).any()):
            raise InputFileError(p, f"'{kind}_offsets' must start at 0, never decrease and end "
                                    f"at {len(g)} (the length of {kind!r})")
        bad = (g < 0) | (g >= n_gallery)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise InputFileError(p, f"{kind!r} entry {i} is {int(g[i])}, out of range "
                                    f"[0, {n_gallery})")
        qs.append(torch.repeat_interleave(torch.arange(n_query), off.diff()).numpy())
        gs.append(g.numpy())
        ks.append(np.full(len(g), kind_id, dtype=np.int64))
    q, gal, k = np.concatenate(qs), np.concatenate(gs), np.concatenate(ks)
    # identical pairs count once; one pair in two lists is an error
    key = q * max(n_gallery, 1) + gal
    order = np.lexsort((k, key))
    same = key[order][1:] == key[order][:-1]
    clash = same & (k[order][1:] != k[order][:-1])
    if clash.any():
        i = order[int(np.argmax(clash))]
        j = order[int(np.argmax(clash)) + 1]
        raise InputFileError(p, f"pair (query {int(q[i])}, gallery {int(gal[i])}) is in both "
                                f"{KINDS[k[i]]!r} and {KINDS[k[j]]!r}")
    first = np.r_[True, ~same]
    keep = order[first]
    return q[keep], gal[keep], k[keep]


@dataclass
class RevisitedResult:
    """The protocol's metrics: ``mAP@{setting}``, then ``mP@{k}@{setting}`` (fractions, means
    over each setting's queries with positives); ``n_valid``: those queries per setting;
    ``settings``: each setting's full :class:`~embeval.EvalResult` (statistics, per query)."""

    metrics: dict[str, float]
    n_query: int
    n_gallery: int
    n_valid: dict[str, int]
    settings: dict[str, EvalResult]
    options: dict[str, object] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def stats(self) -> RankStats:
        """The medium setting's statistics (all positives ranked)."""
        return self.settings["medium"].stats


def revisited(query: EmbeddingSet, gallery: EmbeddingSet, ground_truth: dict[str, Relevance],
              options: EvalOptions | None = None, *, ks: Sequence[int] = (1, 5, 10),
              progress: Progress | None = None, rerank: RerankOptions | None = None,
              **overrides: Any) -> RevisitedResult:
    """mAP and revisitop's mP@k (k' = min(k, rank of the last positive)) of ``query`` ×
    ``gallery`` in the easy, medium and hard settings of ``ground_truth``
    (:func:`read_revisited`): one ranking pass per setting.

    ``options`` / ``overrides``: as for :func:`embeval.evaluate`; the AP is ``options.ap``,
    or revisitop's trapezoid when neither ``options`` nor ``ap=`` is given. Queries without
    positives are skipped (``no_positive="zero"`` is refused). ``rerank``: query expansion and
    / or DBA (``qe``, ``dba``), applied once before the three settings; k-reciprocal
    re-ranking is refused.
    """
    t0 = time.perf_counter()
    default_ap = {"ap": "trapezoid"} if options is None and "ap" not in overrides else {}
    opts = EvalOptions.build(options, **default_ap, **overrides)
    if opts.no_positive != "skip":
        raise OptionError("no_positive: the revisited protocol skips queries without positives "
                          "(as revisitop)", param="no_positive")
    missing = [s for s in SETTINGS if s not in ground_truth]
    if missing:
        raise OptionError(f"ground_truth: no {missing[0]!r} setting (read_revisited gives all "
                          "three)", param="ground_truth")
    if rerank is not None and rerank.method is not None:
        raise OptionError("rerank: k-reciprocal re-ranking is not offered with the revisited "
                          "protocol (query expansion and DBA are)", param="rerank")
    if rerank is not None and rerank.expands:
        from embeval.rerank.expansion import expand

        query, gallery = expand(query, gallery, rerank, metric=opts.metric,
                                exclude_self=opts.exclude_self, device=opts.device,
                                memory=opts.memory)
    settings, mp = {}, {}
    for name in SETTINGS:
        part = evaluation_stats(query, gallery, opts, ks=ks, progress=progress,
                                relevance=ground_truth[name])
        settings[name] = summarize(part.stats, part.gallery.labels, ks=part.ks,
                                   no_positive="skip", options=part.options, ap=opts.ap)
        valid = part.stats.n_pos > 0
        per_k = M.revisited_precision_at_k(part.stats, part.ks)
        settings[name].per_query.update({f"mp@{k}": v for k, v in per_k.items()})
        mp[name] = {k: M.exact_mean(v[valid]) for k, v in per_k.items()}
    ks = list(mp["medium"])
    metrics = {f"mAP@{s}": settings[s].metrics["mAP"] for s in SETTINGS}
    metrics.update({f"mP@{k}@{s}": mp[s][k] for s in SETTINGS for k in ks})
    return RevisitedResult(metrics, query.n, gallery.n,
                           {s: settings[s].n_valid for s in SETTINGS}, settings,
                           options=opts.result_options(), elapsed_s=time.perf_counter() - t0)

