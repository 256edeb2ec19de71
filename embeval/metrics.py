"""Pure functions: :class:`~embeval.engine.RankStats` → metrics (DESIGN.md section 3).

Ties are pessimistic, in two ways (DESIGN.md section 3). For positive j of a query with P > 0
positives (``valid``), N⁻_j = #negatives with score ≥ s_j and TP_j = #positives with score ≥ s_j.
*Threshold* metrics (AP, the PR points, maxF1) take scikit-learn's shared threshold: positives
tied with each other share ``N_j = N⁻_j + TP_j`` (:func:`positive_ranks`). *Position* metrics
(first / last hit, MRR, mINP, P@k, R-precision, MAP@R, nDCG@k, the trapezoid AP, revisitop's
mP@k) take one total order, the worst: inside a run of equal scores the negatives first, then
the positives in consecutive places, so the j-th positive by score is at ``N⁻_j + j``
(:func:`positive_positions`).
Fractions are in [0, 1]; per-query outputs are [Q] tensors.

>>> import torch, embeval
>>> q = embeval.EmbeddingSet(torch.eye(2), torch.tensor([0, 1]))
>>> g = embeval.EmbeddingSet(torch.tensor([[1., 0.], [.9, .1], [0., 1.]]), torch.tensor([0, 1, 1]))
>>> stats = embeval.rank_stats(q, g, metric="inner", device="cpu")
>>> first_hit_rank(stats).tolist(), average_precision(stats).tolist()
([1.0, 1.0], [1.0, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from embeval.engine import NO_INDEX, RankStats
from embeval.errors import OptionError

__all__ = [
    "positive_ranks", "positive_positions", "average_precision", "mean_average_precision",
    "first_hit_rank", "last_hit_rank", "cmc", "topk_accuracy", "inverse_negative_penalty", "mean_inp",
    "hard_scores", "pr_points", "max_f1", "knn_predict", "knn_accuracy", "check_ks", "exact_mean",
    "reciprocal_rank", "map_at_r", "r_precision", "precision_at_k", "ndcg_at_k", "rank_metrics",
    "trapezoid_average_precision", "revisited_precision_at_k",
]


def _segments(stats: RankStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Query id of every positive [M], and each query's first position [Q]."""
    counts = stats.n_pos
    return torch.repeat_interleave(torch.arange(stats.n_query), counts), stats.pos_offsets[:-1]


def _negatives_ahead(stats: RankStats) -> torch.Tensor:
    """[M] int64 N⁻ of every positive (#negatives scoring ≥ it), in ``pos_scores`` order."""
    qid, starts = _segments(stats)
    idx = torch.arange(len(stats.pos_scores))
    # #negatives ≥ the i-th ascending positive (1-based i) = sum of bins i..P of the query
    hist_cum = torch.cumsum(stats.neg_hist, 0)
    hist_start = stats.pos_offsets[:-1] + torch.arange(stats.n_query)
    hist_end = hist_start + stats.n_pos  # index of the query's last bin
    bin_i = hist_start[qid] + (idx - starts[qid]) + 1
    return hist_cum[hist_end[qid]] - hist_cum[bin_i - 1]


def positive_ranks(stats: RankStats) -> tuple[torch.Tensor, torch.Tensor]:
    """``(TP, N)`` for every positive, [M] int64 each, in ``pos_scores`` order (ascending): the
    *threshold* rule (scikit-learn's).

    TP = #positives scoring ≥ it, N = TP + #negatives scoring ≥ it.
    """
    qid, starts = _segments(stats)
    pos = stats.pos_scores
    idx = torch.arange(len(pos))
    seg_start = starts[qid]
    new_group = (idx == seg_start)
    new_group[1:] |= pos[1:] != pos[:-1]
    group_first = torch.cummax(torch.where(new_group, idx, torch.zeros_like(idx)), 0).values
    tp = stats.n_pos[qid] - (group_first - seg_start)
    return tp, tp + _negatives_ahead(stats)


def positive_positions(stats: RankStats) -> tuple[torch.Tensor, torch.Tensor]:
    """``(j, position)`` for every positive, [M] int64 each, in ``pos_scores`` order (ascending):
    the *position* rule, one worst total order.

    j = 1-based place of the positive among its query's positives by descending score (tied
    positives take consecutive places, in any order: the metrics do not depend on it);
    position = j + #negatives scoring ≥ it (negatives first inside a run of equal scores).
    """
    qid, starts = _segments(stats)
    j = stats.n_pos[qid] - (torch.arange(len(stats.pos_scores)) - starts[qid])
    return j, j + _negatives_ahead(stats)


def _segment_sum(values: torch.Tensor, stats: RankStats) -> torch.Tensor:
    qid, _ = _segments(stats)
    return torch.zeros(stats.n_query, dtype=values.dtype).index_add_(0, qid, values)


def average_precision(stats: RankStats) -> torch.Tensor:
    """[Q] float64 AP = (1/P) Σ_j TP_j / N_j (scikit-learn's, ties included); nan when P = 0."""
    tp, n = positive_ranks(stats)
    p = stats.n_pos.double()
    return _segment_sum(tp.double() / n.double(), stats) / p  # 0/0 → nan when P = 0


def trapezoid_average_precision(stats: RankStats) -> torch.Tensor:
    """[Q] float64 revisitop's AP: the area under the PR curve by trapezoids; nan when P = 0.

    The positives in the worst total order (:func:`positive_positions`), the j-th (0-based) at
    0-based rank r = position - 1 adds (1/P) · (p0 + p1) / 2 with p0 = j / r (1 when r = 0) and
    p1 = (j + 1) / (r + 1) (Revisited Oxford/Paris, Holidays, INSTRE): revisitop's
    ``compute_ap`` of that order.
    """
    order, position = positive_positions(stats)
    p = stats.n_pos[_segments(stats)[0]].double()
    j = order.double() - 1
    r = position.double() - 1
    p0 = torch.where(r == 0, torch.ones_like(r), j / r.clamp_min(1))
    area = (p0 + (j + 1) / (r + 1)) / (2 * p)
    return _segment_sum(area, stats) / (stats.n_pos > 0).double()  # 0/0 → nan when P = 0


def revisited_precision_at_k(stats: RankStats, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """{k: [Q] float64}: revisitop's mP@k per query: k' = min(k, rank of the last positive),
    #positives ranked ≤ k' divided by k' (positions: :func:`positive_positions`); nan when P = 0."""
    _, n = positive_positions(stats)
    qid, starts = _segments(stats)
    # positives ascend by score: each query's first one is its last ranked (largest N)
    last = n[starts.clamp_max(max(len(n) - 1, 0))] if len(n) else torch.zeros_like(starts)
    out = {}
    for k in ks:
        cut = torch.minimum(last, torch.tensor(k))
        hits = _segment_sum((n <= cut[qid]).double(), stats)
        out[k] = torch.where(stats.n_pos > 0, hits / cut.clamp_min(1).double(),
                             torch.tensor(float("nan"), dtype=torch.float64))
    return out


def exact_mean(values: torch.Tensor) -> float:
    """The mean of a 1-D tensor from its correctly rounded sum (``math.fsum``): the same
    bits whatever the thread count or the shard split that produced the values; nan if empty."""
    return math.fsum(values.double().tolist()) / len(values) if len(values) else float("nan")


def _valid_mean(values: torch.Tensor, stats: RankStats, no_positive: str) -> float:
    valid = stats.n_pos > 0
    if no_positive == "zero":
        return exact_mean(torch.where(valid, values, torch.zeros_like(values)))
    if no_positive != "skip":
        raise OptionError(f"no_positive: unknown policy {no_positive!r} (skip, zero)",
                          param="no_positive")
    return exact_mean(values[valid])


def mean_average_precision(stats: RankStats, *, no_positive: str = "skip") -> float:
    """mAP over queries with positives (``skip``), or counting them as AP 0 (``zero``)."""
    return _valid_mean(average_precision(stats), stats, no_positive)


def _hist_bin(stats: RankStats, bin_of_query: torch.Tensor) -> torch.Tensor:
    cum = torch.cumsum(stats.neg_hist, 0)
    start = stats.pos_offsets[:-1] + torch.arange(stats.n_query)
    end = start + stats.n_pos
    return cum[end] - cum[start + bin_of_query - 1]  # Σ bins [bin, P]


def first_hit_rank(stats: RankStats) -> torch.Tensor:
    """[Q] float64: 1 + #negatives scoring ≥ the best positive (the first positive's position,
    :func:`positive_positions`); inf when P = 0."""
    p = stats.n_pos
    ahead = _hist_bin(stats, p.clamp_min(1))
    return torch.where(p > 0, 1.0 + ahead.double(), torch.tensor(float("inf"), dtype=torch.float64))


def last_hit_rank(stats: RankStats) -> torch.Tensor:
    """[Q] float64 position of the hardest positive: P + #negatives ≥ it; inf when P = 0."""
    p = stats.n_pos
    ahead = _hist_bin(stats, torch.ones_like(p))
    return torch.where(p > 0, (p + ahead).double(), torch.tensor(float("inf"), dtype=torch.float64))


def check_ks(ks: Sequence[int], n_gallery: int, what: str = "ks") -> list[int]:
    """Validate rank cut-offs: 1 ≤ k ≤ gallery size; errors name the parameter ``what``."""
    ks = [int(k) for k in ks]
    if not ks:
        raise OptionError(f"{what}: give at least one k", param=what)
    for k in ks:
        if k <= 0 or k > n_gallery:
            raise OptionError(f"{what} {k}: must be between 1 and the gallery size ({n_gallery})",
                              param=what)
    return ks


def cmc(stats: RankStats, *, ks: Sequence[int] = (1, 5, 10),
        no_positive: str = "skip") -> dict[int, float]:
    """CMC rank-k: fraction of queries with positives whose first hit is within the top k."""
    rank = first_hit_rank(stats)
    return {k: _valid_mean((rank <= k).double(), stats, no_positive) for k in ks}


def topk_accuracy(stats: RankStats, *, ks: Sequence[int] = (1,)) -> dict[int, float]:
    """Fraction of ALL queries whose first hit is within the top k (no positive = miss)."""
    rank = first_hit_rank(stats)
    return {k: float((rank <= k).double().mean()) for k in ks}


def inverse_negative_penalty(stats: RankStats) -> torch.Tensor:
    """[Q] float64 INP = P / N_worst; nan when P = 0."""
    return stats.n_pos.double() / last_hit_rank(stats).nan_to_num(posinf=float("nan"))


def mean_inp(stats: RankStats, *, no_positive: str = "skip") -> float:
    """mINP: mean INP over queries with positives."""
    return _valid_mean(inverse_negative_penalty(stats), stats, no_positive)


Ranks = tuple[torch.Tensor, torch.Tensor]  # (j, position) of every positive: positive_positions


def _per_valid(values: torch.Tensor, stats: RankStats) -> torch.Tensor:
    """[Q] float64 ``values``, nan where the query has no positive."""
    return torch.where(stats.n_pos > 0, values, torch.tensor(float("nan"), dtype=torch.float64))


def reciprocal_rank(stats: RankStats) -> torch.Tensor:
    """[Q] float64 1 / first-hit rank (MRR's terms); nan when P = 0."""
    return _per_valid(1.0 / first_hit_rank(stats), stats)


def _ranks_of(stats: RankStats, ranks: Ranks | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(j [M], position [M], P of each positive's query [M]), from ``ranks`` when given."""
    tp, n = positive_positions(stats) if ranks is None else ranks
    qid, _ = _segments(stats)
    return tp, n, stats.n_pos[qid]


def map_at_r(stats: RankStats, ranks: Ranks | None = None) -> torch.Tensor:
    """[Q] float64 AP@R, R = P: (1/R) Σ over the j-th positives at position n_j ≤ R of j / n_j
    (:func:`positive_positions`); nan when P = 0.

    ``ranks``: :func:`positive_positions` of ``stats`` when already computed.
    """
    tp, n, r = _ranks_of(stats, ranks)
    terms = torch.where(n <= r, tp.double() / n.double(), torch.zeros((), dtype=torch.float64))
    return _per_valid(_segment_sum(terms, stats) / stats.n_pos.double(), stats)


def r_precision(stats: RankStats, ranks: Ranks | None = None) -> torch.Tensor:
    """[Q] float64 #positives at position ≤ R, divided by R = P; nan when P = 0."""
    _, n, r = _ranks_of(stats, ranks)
    return _per_valid(_segment_sum((n <= r).double(), stats) / stats.n_pos.double(), stats)


def precision_at_k(stats: RankStats, ks: Sequence[int],
                   ranks: Ranks | None = None) -> dict[int, torch.Tensor]:
    """k → [Q] float64 P@k = #positives at position ≤ k, divided by k; nan when P = 0."""
    _, n, _ = _ranks_of(stats, ranks)
    return {k: _per_valid(_segment_sum((n <= k).double(), stats) / k, stats) for k in ks}


def _discount(rank: torch.Tensor) -> torch.Tensor:
    """[n] float64 1 / log2(rank + 1) of integer ranks, each from Python's ``math.log2`` (one
    value per distinct rank): torch's vectorised log2 can differ in the last bit between its
    SIMD and scalar paths, which would make nDCG depend on how a tensor is split."""
    values, inverse = torch.unique(rank, return_inverse=True)
    table = torch.tensor([1.0 / math.log2(v + 1) for v in values.tolist()], dtype=torch.float64)
    return table[inverse] if len(values) else torch.zeros(rank.shape, dtype=torch.float64)


def ndcg_at_k(stats: RankStats, ks: Sequence[int],
              ranks: Ranks | None = None) -> dict[int, torch.Tensor]:
    """k → [Q] float64 nDCG@k, binary gain: Σ over positives at position n ≤ k of 1/log2(n + 1),
    divided by the ideal Σ_{i=1}^{min(P, k)} 1/log2(i + 1); nan when P = 0."""
    _, n, _ = _ranks_of(stats, ranks)
    gain = _discount(n)
    top = max([0, *ks])
    ideal_cum = torch.zeros(top + 1, dtype=torch.float64)  # ideal_cum[m] = Σ_{i=1}^{m} 1/log2(i+1)
    torch.cumsum(_discount(torch.arange(1, top + 1)), 0, out=ideal_cum[1:])
    out = {}
    for k in ks:
        dcg = _segment_sum(torch.where(n <= k, gain, torch.zeros((), dtype=torch.float64)), stats)
        out[k] = _per_valid(dcg / ideal_cum[stats.n_pos.clamp(1, k)], stats)
    return out


def rank_metrics(stats: RankStats, *, ks: Sequence[int] = (1, 5, 10),
                 no_positive: str = "skip") -> dict[str, Any]:
    """MRR, MAP@R, R-precision, P@k and nDCG@k (DESIGN.md section 7) in one walk of the ranks.

    Returns the summary ``{"MRR", "MAP@R", "R-precision", "P@{k}", "nDCG@{k}"}`` → floats
    (means over queries with positives, or counting them as 0 under ``no_positive="zero"``) and
    the per-query ``{"rr", "map_at_r", "r_precision", "p@{k}", "ndcg@{k}"}`` → [Q] float64
    (nan when P = 0).
    """
    ranks = positive_positions(stats)
    per = {"rr": reciprocal_rank(stats), "map_at_r": map_at_r(stats, ranks),
           "r_precision": r_precision(stats, ranks)}
    per.update({f"p@{k}": v for k, v in precision_at_k(stats, ks, ranks).items()})
    per.update({f"ndcg@{k}": v for k, v in ndcg_at_k(stats, ks, ranks).items()})
    names = {"MRR": "rr", "MAP@R": "map_at_r", "R-precision": "r_precision",
             **{f"P@{k}": f"p@{k}" for k in ks}, **{f"nDCG@{k}": f"ndcg@{k}" for k in ks}}
    summary: dict[str, Any] = {name: _valid_mean(per[key], stats, no_positive)
                               for name, key in names.items()}
    return {**summary, **per}


def hard_scores(stats: RankStats) -> tuple[torch.Tensor, torch.Tensor]:
    """[Q] float32 lowest positive score and highest negative score (nan where none)."""
    nan = torch.tensor(float("nan"))
    has_pos = stats.n_pos > 0
    first = stats.pos_scores[stats.pos_offsets[:-1].clamp_max(max(len(stats.pos_scores) - 1, 0))] \
        if len(stats.pos_scores) else torch.zeros(stats.n_query)
    hard_pos = torch.where(has_pos, first, nan)
    hard_neg = torch.where(stats.n_neg > 0, stats.max_neg, nan)
    return hard_pos, hard_neg


def _pr_counts(stats: RankStats) -> tuple[torch.Tensor, ...]:
    """(TP, N, P, threshold, offsets) at each query's distinct positive scores, descending."""
    tp, n = positive_ranks(stats)
    qid, starts = _segments(stats)
    pos = stats.pos_scores
    idx = torch.arange(len(pos))
    # one point per tie group: its first (lowest-index) member carries the group's TP and N
    first = idx == starts[qid]
    first[1:] |= pos[1:] != pos[:-1]
    sel = idx[first].flip(0)
    sel = sel[torch.argsort(qid[sel], stable=True)]  # queries ascending, thresholds descending
    counts = torch.bincount(qid[sel], minlength=stats.n_query)
    offsets = torch.zeros(stats.n_query + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    return tp[sel], n[sel], stats.n_pos[qid[sel]], pos[sel], offsets


def pr_points(stats: RankStats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query PR points at each distinct positive score, thresholds descending.

    Returns ``(precision [M'] float64, recall [M'] float64, threshold [M'] float32,
    offsets [Q+1] int64)``: query i's points are ``[offsets[i]:offsets[i+1]]``.
    """
    tp, n, p, threshold, offsets = _pr_counts(stats)
    return tp.double() / n.double(), tp.double() / p.double(), threshold, offsets


def max_f1(stats: RankStats, *, no_positive: str = "skip") -> dict[str, Any]:
    """Per-query best F1 over its PR points (equal F1s: highest threshold) and their means.

    Returns ``{"f1", "precision", "recall", "threshold"}`` → [Q] tensors (nan when P = 0) and
    ``{"maxF1", "P@maxF1", "R@maxF1", "T@maxF1"}`` → means over queries with positives.
    """
    tp, n, p, threshold, offsets = _pr_counts(stats)
    precision, recall = tp.double() / n.double(), tp.double() / p.double()
    nq = stats.n_query
    counts = offsets[1:] - offsets[:-1]
    has = counts > 0
    nan = torch.full((nq,), float("nan"), dtype=torch.float64)
    per = {"f1": nan, "precision": nan, "recall": nan, "threshold": nan}
    if len(precision):
        # F1 = 2TP / (N + P): exact integers, so equal F1s compare equal (ties → highest threshold)
        f1 = (2 * tp).double() / (n + p).double()
        qid = torch.repeat_interleave(torch.arange(nq), counts)
        best = torch.full((nq,), -1.0, dtype=torch.float64).scatter_reduce(0, qid, f1, "amax")
        # points run from the highest threshold down: the first best point of a query wins
        pos_in = torch.arange(len(f1)) - offsets[:-1][qid]
        pos_in = pos_in.masked_fill(f1 != best[qid], len(f1))
        first = torch.full((nq,), len(f1)).scatter_reduce(0, qid, pos_in, "amin")
        at = torch.where(has, offsets[:-1] + first, 0)
        per = {"f1": torch.where(has, best, nan),
               "precision": torch.where(has, precision[at], nan),
               "recall": torch.where(has, recall[at], nan),
               "threshold": torch.where(has, threshold[at].double(), nan)}
    summary = {name: _valid_mean(per[key], stats, no_positive) for name, key in
               (("maxF1", "f1"), ("P@maxF1", "precision"), ("R@maxF1", "recall"),
                ("T@maxF1", "threshold"))}
    if no_positive == "zero":  # a threshold of 0 for a query without positives is meaningless
        summary["T@maxF1"] = _valid_mean(per["threshold"], stats, "skip")
    return {**per, **summary}


#: vote cells (queries × k) counted at once by :func:`knn_predict` (~40 bytes each)
KNN_CHUNK_CELLS = 1 << 20


def knn_predict(stats: RankStats, gallery_labels: torch.Tensor, *, k: int) -> torch.Tensor:
    """[Q] int64 majority label among the k best gallery items (-1 = unknown wins).

    Ties between classes go to the class whose best member ranks highest. Memory O(Q·k) in
    chunks of queries (:data:`KNN_CHUNK_CELLS` cells): each row's labels are sorted, and each
    run of one label is a class with its size and its best rank.
    """
    if stats.topk_indices is None or stats.topk_indices.shape[1] < k:
        raise OptionError(f"kNN with k={k} needs statistics kept with topk >= {k}")
    nq = stats.topk_indices.shape[0]
    out = torch.full((nq,), -1, dtype=torch.int64)
    rows = max(1, KNN_CHUNK_CELLS // max(k, 1))
    for q0 in range(0, nq, rows):
        out[q0:q0 + rows] = _knn_vote(stats.topk_indices[q0:q0 + rows, :k], gallery_labels)
    return out


def _knn_vote(idx: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """The vote of :func:`knn_predict` for ``idx`` [b, k] neighbours (best first)."""
    b, k = idx.shape
    present = idx != NO_INDEX
    labels = torch.where(present, gallery_labels[idx.clamp_max(len(gallery_labels) - 1)]
                         .clamp_min(-1), torch.full_like(idx, -2))  # -2: no neighbour
    sl, order = torch.sort(labels, dim=1, stable=True)  # order[:, run start]: the run's best rank
    start = torch.ones_like(sl, dtype=torch.bool)
    start[:, 1:] = sl[:, 1:] != sl[:, :-1]
    run = torch.cumsum(start, 1) - 1  # [b, k] run number within the row
    size = torch.zeros_like(sl).scatter_add_(1, run, torch.ones_like(sl))
    best = torch.full_like(sl, k).scatter_reduce_(1, run, order, "amin")
    label = torch.full_like(sl, -2).scatter_(1, run, sl)
    size = size.masked_fill(label == -2, -1)  # an empty slot never wins; unused runs neither
    key = size * (k + 1) + (k - best)  # most votes, then the best-ranked member
    winner = torch.argmax(key, dim=1, keepdim=True)
    pred = label.gather(1, winner).squeeze(1)
    return torch.where(present.any(1), pred, torch.full_like(pred, -1))


def knn_accuracy(stats: RankStats, gallery_labels: torch.Tensor, *, k: int) -> float:
    """Fraction of ALL queries whose kNN prediction is their (known) label."""
    pred = knn_predict(stats, gallery_labels, k=k)
    correct = (pred == stats.query_labels) & (stats.query_labels >= 0)
    return float(correct.double().mean())
