"""Listed verification trials (LFW / CFP / IJB style): the pairs file, templates, scores, folds.

The pairs file is CSV, UTF-8, with a header row naming its columns, one trial per line::

    query,gallery,same
    0,17,1
    3,250,0

``query`` and ``gallery`` are 0-based item indices into the two embedding files (one file may
be both), or template ids when the items are pooled into templates (:func:`pool_templates`);
the optional ``same`` (1 / 0) says whether the trial is genuine, overriding label equality.
Columns may come in any order; other columns, a missing header, a cell that is not an integer
(``[ \\t]*-?[0-9]+[ \\t]*``), an index outside [0, n), an unknown template id or a ``same``
other than 0 / 1 raise :class:`InputFileError` naming the file and the line. Blank lines are
skipped.

Reading streams the file in blocks (:mod:`embeval.data.int_csv`, shared with relevance
files): plain blocks with numpy, any other with the csv module, so every message still names
its line. Memory: O(pairs) int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from embeval.data.concat import ConcatSet, source_files
from embeval.data.int_csv import BLOCK, IntCsvReader, check_file
from embeval.data.store import EmbeddingSet, read_ids, read_weights
from embeval.engine.exact import dot_bound, pair_dots
from embeval.engine.plan import default_memory, parse_memory
from embeval.engine.rank import blocks_with_pairs
from embeval.engine.similarity import aux, check_finite_scores, check_metric, row_norms, transform
from embeval.errors import InputFileError, OptionError

__all__ = ["Pairs", "TemplateIds", "FoldAccuracy", "FOLD_THRESHOLDS", "read_pairs", "pool_templates",
           "pair_scores",
           "trial_labels", "fold_accuracy", "fold_bounds", "COLUMNS"]

COLUMNS = ("query", "gallery", "same")
_HEADER_HINT = "'query,gallery' or 'query,gallery,same' (any order)"
_BLOCK = BLOCK  # bytes parsed at once by the numpy path


@dataclass(frozen=True)
class TemplateIds:
    """The id space of a pooled set: pairs name ``ids`` (any int64), not row indices.

    ``ids``: [T] int64 ascending and distinct; id ``ids[t]`` is row t of the pooled set.
    ``file``: the embedding file they come from (named in errors).
    """

    ids: torch.Tensor
    file: str


@dataclass(frozen=True)
class Pairs:
    """Listed trials. ``query`` / ``gallery``: [P] int64 row indices into the query and gallery
    sets (template rows when templates are pooled); ``same``: [P] bool or None (no column)."""

    query: torch.Tensor
    gallery: torch.Tensor
    same: torch.Tensor | None
    path: str

    def __len__(self) -> int:
        return len(self.query)


def read_pairs(path: str | Path, n_query: int | TemplateIds, n_gallery: int | TemplateIds) -> Pairs:
    """Read and check a pairs file (see the module docstring).

    ``n_query`` / ``n_gallery``: the number of items (cells are indices in [0, n)), or the
    :class:`TemplateIds` of a pooled set (cells are template ids, mapped to template rows).
    Raises :class:`InputFileError` naming ``path`` and the line.
    """
    p = Path(path)
    check_file(p, "a CSV pairs file")
    reader = _Reader(p, (n_query, n_gallery))
    reader.read(_BLOCK)
    return reader.result()


class _Reader(IntCsvReader):
    """Streams one pairs file: header, then blocks of rows checked and collected as numpy."""

    def __init__(self, path: Path, spaces: tuple[int | TemplateIds, int | TemplateIds]) -> None:
        super().__init__(path, COLUMNS, COLUMNS[:2], _HEADER_HINT, "pairs")
        self.spaces = spaces
        self.parts: list[np.ndarray] = []  # [b, k] blocks, columns in COLUMNS order

    def out_of_int64(self, column: str, value: str, line: int) -> None:
        self._refuse(column, value, line)  # out of every range, in no id list

    # ------------------------------------------------------------------ checks of a block

    def add(self, rows: np.ndarray, lines: np.ndarray) -> None:
        """Check ``rows`` [b, k] (columns in COLUMNS order; row i from line ``lines[i]``), map
        template ids to rows, and keep them."""
        for j in range(2):
            space = self.spaces[j]
            col = rows[:, j]
            if isinstance(space, TemplateIds):
                ids = space.ids.numpy()
                pos = np.searchsorted(ids, col)
                found = pos < len(ids)
                found[found] = ids[pos[found]] == col[found]
                if not found.all():
                    i = int(np.argmin(found))
                    self._refuse(COLUMNS[j], int(col[i]), int(lines[i]))
                rows[:, j] = pos
            else:
                bad = (col < 0) | (col >= space)
                if bad.any():
                    i = int(np.argmax(bad))
                    self._refuse(COLUMNS[j], int(col[i]), int(lines[i]))
        if rows.shape[1] == 3:
            bad = (rows[:, 2] != 0) & (rows[:, 2] != 1)
            if bad.any():
                i = int(np.argmax(bad))
                raise self.fail(int(lines[i]), f"same must be 1 or 0, got {int(rows[i, 2])}")
        self.parts.append(rows)
        super().add(rows, lines)

    def _refuse(self, column: str, value: int | str, line: int) -> None:
        space = self.spaces[COLUMNS.index(column)]
        if isinstance(space, TemplateIds):
            raise self.fail(line, f"template id {value} ({column} column) is not in {space.file}")
        raise self.fail(line, f"{column} index {value} is out of range [0, {space}) (0-based "
                              "row of the embedding file)")

    def result(self) -> Pairs:
        rows = torch.from_numpy(np.concatenate(self.parts))
        same = rows[:, 2].bool() if rows.shape[1] == 3 else None
        return Pairs(rows[:, 0].contiguous(), rows[:, 1].contiguous(), same, str(self.path))


# ---------------------------------------------------------------------------------- templates


def pool_templates(s: EmbeddingSet, path: str | Path | None = None, *,
                   templates: torch.Tensor | None = None,
                   media: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None) -> tuple[EmbeddingSet, torch.Tensor]:
    """Pool items into templates (IJB protocol): ``(pooled set [T, D] float32, ids [T] int64)``.

    ``templates`` [N] int64 names each item's template, ``media`` [N] int64 (optional) its
    medium (a video, or a still image). With media: the mean of the items of each medium,
    then the mean over the template's media; without: the mean of the template's items; then
    L2-normalised (a zero mean stays zero). Sums in float64, rows as stored (not normalised
    first). ``weights`` [N] float (optional, ≥ 0: a detector's faceness score) multiplies each
    row before pooling, as insightface's IJB script does with ``use_detector_score``. Row t of
    the pooled set is template ``ids[t]`` (ascending); its label is its items' label (they
    must agree) and it has no camera. When ``templates`` is not given, the tensors
    ``templates`` / ``media`` / ``faceness`` are read from ``path`` (default: the file(s) ``s``
    was read from). Memory: O(groups · D) float64, rows read in blocks.
    """
    file = str(path) if path is not None else s.name
    if templates is None:
        templates, media, weights = _template_tensors(s, path)
    tpl_ids, tpl = torch.unique(templates, return_inverse=True)
    if media is not None:
        groups, grp = torch.unique(torch.stack([tpl, media.long()], 1), dim=0, return_inverse=True)
        group_tpl = groups[:, 0]
    else:
        grp, group_tpl = tpl, torch.arange(len(tpl_ids))
    pooled = _group_means(s, grp, len(group_tpl), weights)
    if media is not None:
        pooled = _means(torch.zeros(len(tpl_ids), s.dim, dtype=torch.float64)
                        .index_add_(0, group_tpl, pooled), group_tpl, len(tpl_ids))
    norms = torch.linalg.vector_norm(pooled, dim=1, keepdim=True)
    pooled = (pooled / norms.clamp_min(torch.finfo(torch.float64).tiny)).float()
    labels = _template_labels(file, s.labels, tpl, tpl_ids)
    return EmbeddingSet(pooled, labels, metadata=s.metadata, name=s.name), tpl_ids


def _template_tensors(s: EmbeddingSet, path: str | Path | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``templates``, ``media`` and ``faceness`` of ``s`` from ``path`` or its own file(s)."""
    if path is not None:
        sources = [(str(path), s.n)]
    else:
        parts = s.parts if isinstance(s, ConcatSet) else [s]
        files = [source_files(part) for part in parts]
        if not all(files):
            raise OptionError(f"templates: {s.name} was not read from a file: give the "
                              "templates (and media) tensors", param="templates")
        sources = [(str(f[0]), part.n) for f, part in zip(files, parts)]
    tpl, med, wts = [], [], []
    for file, n in sources:
        t = read_ids(file, "templates", n)
        if t is None:
            raise InputFileError(file, "no 'templates' tensor (int64 [N]: each item's template "
                                       "id), needed to pool templates")
        tpl.append(t)
        med.append(read_ids(file, "media", n))
        wts.append(read_weights(file, "faceness", n))
    for name, got in (("media", med), ("faceness", wts)):
        if any(m is None for m in got) and not all(m is None for m in got):
            lacks = next(f for (f, _), m in zip(sources, got) if m is None)
            raise InputFileError(lacks, f"has no {name!r} tensor but another file of the set has "
                                        f"one: give {name} in every file or in none")
    media = None if med[0] is None else torch.cat(med)  # type: ignore[arg-type]
    weights = None if wts[0] is None else torch.cat(wts)  # type: ignore[arg-type]
    return torch.cat(tpl), media, weights


def _group_means(s: EmbeddingSet, grp: torch.Tensor, n_groups: int,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean row of each group (``grp`` [N] in [0, n_groups)), each row first multiplied by its
    ``weights`` entry when given: [n_groups, D] float64."""
    sums = torch.zeros(n_groups, s.dim, dtype=torch.float64)
    step = max(1, (64 << 20) // (8 * s.dim))
    for a in range(0, s.n, step):
        rows = s.rows(a, min(a + step, s.n)).double()
        if weights is not None:
            rows = rows * weights[a:a + step, None].double()
        sums.index_add_(0, grp[a:a + step], rows)
    return _means(sums, grp, n_groups)


def _means(sums: torch.Tensor, members: torch.Tensor, n: int) -> torch.Tensor:
    counts = torch.bincount(members, minlength=n).clamp_min(1)
    return sums / counts[:, None].double()


def _template_labels(file: str, labels: torch.Tensor, tpl: torch.Tensor,
                     tpl_ids: torch.Tensor) -> torch.Tensor:
    """Each template's label; a template whose items disagree raises InputFileError."""
    big = torch.iinfo(torch.int64)
    lo = torch.full((len(tpl_ids),), big.max).scatter_reduce(0, tpl, labels, "amin")
    hi = torch.full((len(tpl_ids),), big.min).scatter_reduce(0, tpl, labels, "amax")
    bad = torch.nonzero(lo != hi).flatten()
    if len(bad):
        t = int(bad[0])
        raise InputFileError(file, f"template {int(tpl_ids[t])} has items with different labels "
                                   f"({int(lo[t])} and {int(hi[t])}): a template is one identity")
    return lo


# ---------------------------------------------------------------------------------- scores

def pair_scores(query: EmbeddingSet | torch.Tensor, gallery: EmbeddingSet | torch.Tensor,
                qidx: torch.Tensor, gidx: torch.Tensor, metric: str = "cosine", *,
                block_rows: int | None = None, memory: int | str | None = None) -> torch.Tensor:
    """Scores of the listed pairs ``(qidx[m], gidx[m])``: [P] float32.

    The float32 transform of the correctly rounded dot product (:mod:`embeval.engine.exact`),
    bit-identical to the trial scores of the all-pairs pass (``embeval verify`` without
    ``--pairs``). The query rows are held in memory; the gallery is read in blocks of
    ``block_rows`` rows (default: half of ``memory``), each pair scored in the block holding its
    gallery row, its two rows gathered in steps of the other half of ``memory`` (bytes or text
    such as ``"256MB"``; None: :func:`~embeval.engine.plan.default_memory` of the CPU). Memory:
    O(P) for the indices and scores plus about ``memory``, never P × D; the scores do not depend
    on ``memory`` or ``block_rows`` (each is its pair's own correctly rounded dot product).
    Raises :class:`InputFileError` on non-finite scores.
    """
    check_metric(metric)
    q = _as_set(query, "query")
    g = _as_set(gallery, "gallery")
    _check_indices(qidx, gidx, q.n, g.n)
    qemb = q.embeddings
    qnorm = row_norms(qemb)
    qa = aux(qemb, metric, qnorm)
    out = torch.empty(len(qidx), dtype=torch.float32)
    half = (parse_memory(memory) or default_memory(torch.device("cpu"))) // 2
    step = block_rows or max(1, half // (4 * max(g.dim, 1)))  # gallery rows read at once
    pair_step = max(1, half // (8 * max(g.dim, 1)))  # a query row and a gallery row per pair
    for a, block, sel in blocks_with_pairs(g, gidx, step):
        gnorm = row_norms(block)
        ga = aux(block, metric, gnorm)
        for c in range(0, len(sel), pair_step):  # the pairs' rows gathered in steps
            part = sel[c:c + pair_step]
            qi, gi = qidx[part], gidx[part] - a
            dots = pair_dots(qemb[qi], block[gi], dot_bound(qnorm[qi] * gnorm[gi], 1.0, g.dim))
            out[part] = transform(dots, qa[qi], ga[gi], metric)
    check_finite_scores(out, q.name, g.name, "pair ")
    return out


def _check_indices(qidx: torch.Tensor, gidx: torch.Tensor, nq: int, ng: int) -> None:
    if qidx.shape != gidx.shape or qidx.dim() != 1:
        raise ValueError(f"qidx {list(qidx.shape)} and gidx {list(gidx.shape)} must be [P]")
    for name, idx, n in (("qidx", qidx, nq), ("gidx", gidx, ng)):
        if idx.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {idx.dtype}")
        if len(idx) and not (int(idx.min()) >= 0 and int(idx.max()) < n):
            raise ValueError(f"{name} holds indices outside [0, {n})")


def _as_set(x: EmbeddingSet | torch.Tensor, name: str) -> EmbeddingSet:
    if isinstance(x, EmbeddingSet):
        return x
    return EmbeddingSet(x, torch.full((len(x),), -1, dtype=torch.int64), name=f"<{name}>")


def trial_labels(pairs: Pairs, query_labels: torch.Tensor,
                 gallery_labels: torch.Tensor) -> torch.Tensor:
    """Genuine flags of the trials: [P] bool. The ``same`` column where the file has one, else
    equal labels; an unknown label (< 0) is never genuine."""
    if pairs.same is not None:
        return pairs.same.clone()
    ql, gl = query_labels[pairs.query], gallery_labels[pairs.gallery]
    return (ql == gl) & (ql >= 0)


# ---------------------------------------------------------------------------------- folds


class FoldAccuracy(NamedTuple):
    """LFW-protocol accuracy: mean and population std (ddof 0) over folds, fractions in [0, 1];
    each fold's accuracy and the threshold chosen on the other folds."""

    mean: float
    std: float
    accuracies: list[float]
    thresholds: list[float]


#: how ``fold_accuracy`` picks a fold's threshold: among the scores, or on insightface's grid
FOLD_THRESHOLDS = ("scores", "grid")
#: insightface's and facenet's threshold grid on the squared L2 distance of unit vectors:
#: ``np.arange(0, 4, 0.01)`` (the values ``i · 0.01``), accept iff distance < threshold
GRID = torch.arange(400, dtype=torch.float64) * 0.01


def fold_accuracy(scores: torch.Tensor, genuine: torch.Tensor, folds: int = 10, *,
                  thresholds: str = "scores", metric: str = "cosine") -> FoldAccuracy:
    """Accuracy of listed trials by ``folds``-fold cross-validation of the threshold (LFW).

    The trials, as listed, form consecutive folds as scikit-learn's ``KFold(folds,
    shuffle=False)`` splits them (insightface's and facenet's LFW evaluation): the first
    ``P % folds`` folds hold ``P // folds + 1`` trials, the others ``P // folds``
    (:func:`fold_bounds`). Fold i's threshold is the one most accurate on the other folds; its
    accuracy is (genuine accepted + impostors rejected) / fold size. ``thresholds``:

    - ``"scores"``: accept iff score ≥ threshold; candidates: every distinct score of the other
      folds, and +inf; among equally accurate candidates the highest. Exact counts; one sort,
      then O(P) per fold.
    - ``"grid"``: insightface's ``calculate_roc`` (and facenet's): accept iff the squared L2
      distance is below a threshold of :data:`GRID` (0, 0.01, ..., 3.99); among equally
      accurate ones the lowest (``np.argmax``). The distance of a ``metric`` score is
      ``-s`` (sq_euclid), ``s²`` (euclid) or ``2 - 2s`` (cosine, inner: unit vectors), in
      float64; the thresholds reported are distances.

    ``scores`` [P] float (finite), ``genuine`` [P] bool.
    """
    n = len(scores)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise OptionError(f"folds: need an integer from 2 to the number of pairs ({n}), got "
                          f"{folds!r}", param="folds")
    if thresholds not in FOLD_THRESHOLDS:
        raise OptionError(f"fold_thresholds: unknown rule {thresholds!r} "
                          f"({', '.join(FOLD_THRESHOLDS)})", param="fold_thresholds")
    if len(genuine) != n:
        raise ValueError(f"scores ({n}) and genuine ({len(genuine)}) differ in length")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite")
    genuine = genuine.bool()
    if thresholds == "grid":
        return _grid_folds(_squared_distance(scores, metric), genuine, folds)
    order = torch.argsort(scores)  # once: each fold's training trials in score order
    accs, chosen = [], []
    for lo, hi in fold_bounds(n, folds):
        train = order[(order < lo) | (order >= hi)]
        t = _best_threshold(scores[train], genuine[train])
        s, gen = scores[lo:hi], genuine[lo:hi]
        right = int(((s >= t) & gen).sum()) + int(((s < t) & ~gen).sum())
        accs.append(right / (hi - lo))
        chosen.append(float(t))
    return _folds(accs, chosen)


def _folds(accs: list[float], thresholds: list[float]) -> FoldAccuracy:
    acc = torch.tensor(accs, dtype=torch.float64)
    return FoldAccuracy(float(acc.mean()), float(acc.std(correction=0)), accs, thresholds)


def _squared_distance(scores: torch.Tensor, metric: str) -> torch.Tensor:
    """[P] float64 squared L2 distances behind ``metric`` scores (unit vectors for cosine/inner)."""
    s = scores.double()
    if metric == "sq_euclid":
        return -s
    if metric == "euclid":
        return s * s
    check_metric(metric)
    return 2.0 - 2.0 * s


def _grid_folds(dist: torch.Tensor, genuine: torch.Tensor, folds: int) -> FoldAccuracy:
    """:func:`fold_accuracy` with ``thresholds="grid"`` on squared distances ``dist`` [P]."""
    def right(d: torch.Tensor, gen: torch.Tensor) -> torch.Tensor:
        """[len(GRID)] right decisions at each grid threshold (accept iff d < t)."""
        gd, idist = torch.sort(d[gen]).values, torch.sort(d[~gen]).values
        accepted_gen = torch.searchsorted(gd, GRID, side="left")
        accepted_imp = torch.searchsorted(idist, GRID, side="left")
        return accepted_gen + (len(idist) - accepted_imp)

    accs, chosen = [], []
    for lo, hi in fold_bounds(len(dist), folds):
        train = torch.ones(len(dist), dtype=torch.bool)
        train[lo:hi] = False
        best = int(torch.argmax(right(dist[train], genuine[train])))  # the first of the best
        t = GRID[best:best + 1]
        d, gen = dist[lo:hi], genuine[lo:hi]
        accs.append(int(((d < t) == gen).sum()) / (hi - lo))
        chosen.append(float(t))
    return _folds(accs, chosen)


def fold_bounds(n: int, folds: int) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` trial ranges of ``folds`` consecutive folds of ``n`` trials, as
    scikit-learn's ``KFold(folds, shuffle=False)``: the first ``n % folds`` one trial longer."""
    size, extra = divmod(n, folds)
    bounds = [i * size + min(i, extra) for i in range(folds + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _best_threshold(s: torch.Tensor, gen: torch.Tensor) -> torch.Tensor:
    """The candidate threshold (a distinct score, or +inf) with the most right decisions on
    these trials (``s`` ascending; the highest among ties), as a 0-d tensor of ``s``' dtype."""
    gen_below = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(gen, 0)])
    imp_below = torch.arange(len(s) + 1) - gen_below
    first = torch.ones(len(s) + 1, dtype=torch.bool)  # position j: candidate s[j] (+inf at end)
    first[1:-1] = s[1:] != s[:-1]
    at = torch.nonzero(first).flatten()
    right = (gen_below[-1] - gen_below[at]) + imp_below[at]
    best = at[len(at) - 1 - int(torch.argmax(right.flip(0)))]
    if best == len(s):
        return torch.tensor(float("inf"), dtype=s.dtype)
    return s[best]
