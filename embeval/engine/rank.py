"""The streaming engine: exact per-query rank statistics without a Q×G matrix or a sort.

DESIGN.md section 4. For every query:

1. its positives' scores are gathered (Q×P dot products) and sorted;
2. one pass over the gallery in blocks adds each NEGATIVE score to a histogram of
   ``P + 1`` bins (bin b = "exactly b positives score ≤ it"), keeps the hardest
   negative and, when asked, the top-k;
3. every metric then follows from these few numbers (:mod:`embeval.metrics`).

The statistics (:class:`embeval.engine.stats.RankStats`) of disjoint gallery shards add up,
those of disjoint query shards concatenate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from embeval.data.relevance import Relevance
from embeval.data.store import EmbeddingSet
from embeval.engine import listed, plan
from embeval.engine.plan import default_memory, parse_memory
from embeval.engine.similarity import (
    METRIC_CODES,
    aux,
    canonical_dot,
    check_finite_scores,
    check_metric,
    matmul_dtype,
    overflow_rule,
    resolve_device,
    row_norms,
    score_tolerance,
    transform,
)
from embeval.engine.stats import NO_INDEX, Protocol, RankStats
from embeval.errors import InputFileError, OptionError

__all__ = ["rank_stats", "positive_pairs", "tie_tolerance", "check_norms", "block_aux",
           "blocks_with_pairs", "SMALL_PASS"]

#: ``backend="auto"`` on CPU: up to this many query × gallery scores the torch pass runs (exact,
#: bit-identical to the compiled one, at most ~0.1 s slower), so a small job never waits for
#: numba to compile its kernels (3-12 s, once per installation)
SMALL_PASS = 1 << 22
Progress = Callable[[int, int], None]


def positive_pairs(query_labels: torch.Tensor, gallery_labels: torch.Tensor,
                   query_cameras: torch.Tensor | None = None,
                   gallery_cameras: torch.Tensor | None = None,
                   protocol: Protocol = Protocol()) -> tuple[torch.Tensor, torch.Tensor]:
    """All (query, gallery) positive pairs after the protocol's exclusions.

    Returns ``(qid, gid)``, each [M] int64, grouped by query (queries ascending).
    Labels < 0 are unknown and never positives.
    """
    order = torch.argsort(gallery_labels, stable=True)
    sorted_labels = gallery_labels[order]
    lo = torch.searchsorted(sorted_labels, query_labels, right=False)
    hi = torch.searchsorted(sorted_labels, query_labels, right=True)
    counts = torch.where(query_labels >= 0, hi - lo, torch.zeros_like(lo))
    qid = torch.repeat_interleave(torch.arange(len(query_labels)), counts)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(qid)) - torch.repeat_interleave(starts, counts)
    gid = order[torch.repeat_interleave(lo, counts) + within]
    keep = torch.ones(len(qid), dtype=torch.bool)
    if protocol.exclude_same_camera:
        keep &= gallery_cameras[gid] != query_cameras[qid]  # type: ignore[index]
    if protocol.exclude_self:
        keep &= gid != qid
    return qid[keep], gid[keep]


def rank_stats(
    query: EmbeddingSet,
    gallery: EmbeddingSet,
    *,
    metric: str = "cosine",
    protocol: Protocol = Protocol(),
    topk: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    memory: int | str | None = None,
    block_size: int | None = None,
    gallery_range: tuple[int, int] | None = None,
    backend: str = "auto",
    progress: Progress | None = None,
    relevance: Relevance | None = None,
) -> RankStats:
    """Stream the gallery once and return the exact :class:`RankStats` of every query.

    ``block_size``: gallery rows per block (default: from ``memory``, bytes or "2GB").
    ``gallery_range``: only items ``[a, b)`` take part in the negative pass (a shard);
    positives always come from the whole gallery, so shards merge exactly.
    ``backend``: ``"numba"`` (CPU fp32: fused compiled pass over fixed tiles, bit-identical
    for any block size, shard split or thread count), ``"torch"`` (CUDA, other precisions),
    ``"triton"`` (one fused GPU kernel, :mod:`embeval.engine.triton_pass`: fp32 without top-k,
    else the torch pass), or ``"auto"`` (:func:`embeval.engine.plan.auto_backend`: numba on CPU,
    triton on CUDA GPUs of compute capability 8.0+ where Triton is installed, torch elsewhere;
    small jobs, top-k and reduced precisions take the torch pass).
    ``relevance``: per-query positives and junk (:class:`~embeval.data.relevance.Relevance`,
    for these query and gallery sets) instead of label equality; junk is invisible to its
    query; the protocol applies on top (:func:`embeval.engine.listed.with_protocol`).
    """
    check_metric(metric)
    _check_inputs(query, gallery, protocol, topk)
    dev = resolve_device(device)
    matmul_dtype(precision)
    a, b = gallery_range or (0, gallery.n)
    if not 0 <= a <= b <= gallery.n:
        raise OptionError(f"gallery range [{a}, {b}) is outside the gallery (size {gallery.n})")
    auto = backend == "auto"
    if auto:
        backend = plan.auto_backend(dev, precision, big=query.n * (b - a) > SMALL_PASS,
                                    fused=not topk)
    if backend not in ("numba", "torch", "triton"):
        raise OptionError(f"backend: unknown backend {backend!r} (numba, torch, triton, auto)",
                          param="backend")
    if backend == "triton" and (topk or precision != "fp32"):
        backend = "torch"  # the fused kernel keeps no top-k and runs fp32 only (README)
    budget = parse_memory(memory) or default_memory(dev)
    rows = block_size or max(1, budget // max(1, 8 * gallery.dim))  # gallery block: ≤ budget / 2

    qemb = query.embeddings
    qnorm = row_norms(qemb)
    qa = aux(qemb, metric, qnorm)
    ga = torch.empty(gallery.n, dtype=torch.float32)
    if relevance is not None:
        relevance.check_sizes(query.n, gallery.n)
        relevance = listed.with_protocol(relevance, query, gallery, protocol)
        qid, gid = listed.positive_pairs_listed(relevance)
    else:
        qid, gid = positive_pairs(query.labels, gallery.labels, query.cameras, gallery.cameras,
                                  protocol)
    stage = getattr(progress, "stage", None)  # a progress display that can show a stage's name
    if backend == "numba" and stage is not None:
        from embeval.engine import kernels

        if kernels.pending():
            stage("compiling kernels (once)")
    pos, gmax, g_row = _positive_scores(qemb, qa, gallery, ga, qid, gid, metric, rows,
                                        compiled=backend == "numba")
    check_norms(query, qnorm, gallery, gmax, g_row, metric=metric, precision=precision)
    check_finite_scores(pos, query.name, gallery.name, "positive ")
    counts = torch.bincount(qid, minlength=query.n)
    offsets = torch.zeros(query.n + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])

    stats = RankStats(
        metric=metric, n_gallery=gallery.n, query_labels=query.labels.clone(),
        pos_offsets=offsets, pos_scores=pos,
        neg_hist=torch.zeros(len(pos) + query.n, dtype=torch.int64),
        n_neg=torch.zeros(query.n, dtype=torch.int64),
        max_neg=torch.full((query.n,), float("-inf")),
        topk_scores=torch.full((query.n, topk), float("-inf")) if topk else None,
        topk_indices=torch.full((query.n, topk), NO_INDEX, dtype=torch.int64) if topk else None,
    )
    eps = stats.extra["eps"] = tie_tolerance(qemb, metric, gmax)
    args = (stats, query, gallery, qemb, qa, ga, protocol, (a, b), rows)
    kw: dict[str, Any] = dict(device=dev, precision=precision, budget=budget,
                              progress=progress, relevance=relevance)
    if backend == "numba":
        from embeval.engine.cpu import negative_pass

        negative_pass(*args, **kw)
    elif backend == "triton":  # its own bound: tf32x3 products (embeval.engine.fused_bound)
        from embeval.engine import torch_pass, triton_pass
        from embeval.engine.fused_bound import fused_tolerance

        def torch_instead() -> None:
            stats.extra["eps"] = eps
            torch_pass.negative_pass(*args, **kw)

        stats.extra["eps"] = fused_tolerance(qemb, metric, gmax)
        plan.fused_or_fallback(lambda: triton_pass.negative_pass(*args, **kw), torch_instead,
                               auto=auto, what="ranking")
    else:
        from embeval.engine.torch_pass import negative_pass  # type: ignore[assignment]

        negative_pass(*args, **kw)
    # a query that saw a negative has a finite hardest negative (-inf only when it saw none)
    check_finite_scores(torch.where(stats.n_neg > 0, stats.max_neg, 0.0), query.name,
                        gallery.name, "negative ")
    return stats


def _check_inputs(query: EmbeddingSet, gallery: EmbeddingSet, protocol: Protocol,
                  topk: int) -> None:
    if query.dim != gallery.dim:
        raise OptionError(f"{query.name} has {query.dim}-dimensional embeddings but "
                          f"{gallery.name} has {gallery.dim}")
    if protocol.exclude_same_camera:
        for s in (query, gallery):
            if s.cameras is None:
                raise OptionError(f"exclude_same_camera: {s.name} has no 'cameras' tensor",
                                  param="exclude_same_camera")
    if protocol.exclude_self and query.n != gallery.n:
        raise OptionError(f"exclude_self needs the same set as query and gallery, got "
                          f"{query.n} queries and {gallery.n} gallery items", param="exclude_self")
    if topk < 0 or topk > gallery.n:
        raise OptionError(f"k={topk} must be between 1 and the gallery size ({gallery.n})")


def check_norms(query: EmbeddingSet, query_norms: torch.Tensor, gallery: EmbeddingSet,
                gallery_max: float, gallery_row: int, *, metric: str, precision: str) -> None:
    """Refuse rows whose scores could overflow (:func:`embeval.engine.similarity.overflow_rule`).

    ``query_norms``: [Q] float64 row norms; ``gallery_max``: the largest gallery row norm, at
    row ``gallery_row``. The error names the file with the longer row, that row and its norm.
    """
    q_row = int(torch.argmax(query_norms)) if len(query_norms) else 0
    q_max = float(query_norms[q_row]) if len(query_norms) else 0.0
    why = overflow_rule(metric, precision, query.dim, q_max, gallery_max)
    if why is None:
        return
    sides = [(query, q_row, q_max), (gallery, gallery_row, gallery_max)]
    if not q_max >= gallery_max:
        sides.reverse()
    (worse, row, norm), (other, other_row, other_norm) = sides
    name, row = _locate(worse, row)
    other_name, other_row = _locate(other, other_row)
    fix = ("normalise the rows (cosine does not depend on their length)" if metric == "cosine"
           else "normalise the rows, or divide query and gallery by one constant (ranks stay "
                "the same)")
    raise InputFileError(name, f"embedding row {row} has L2 norm {norm:.3g}, too large for "
                               f"metric {metric} against {other_name} (its longest row, "
                               f"{other_row}, has norm {other_norm:.3g}): {why}; {fix}",
                         param="metric")


def _locate(s: EmbeddingSet, row: int) -> tuple[str, int]:
    """The file (name) and row in it of item ``row`` of a set, concatenations included."""
    parts = getattr(s, "parts", None)
    if parts:
        for part, lo in zip(parts, s.offsets[:-1]):  # type: ignore[attr-defined]
            if row < lo + part.n:
                return _locate(part, row - lo)
    return s.name, row


def blocks_with_pairs(gallery: EmbeddingSet, gid: torch.Tensor,
                      step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """The gallery in blocks of ``step`` rows: ``(a, rows [a, a + n), the indices m of the
    pairs whose gallery item gid[m] is in the block)``; ``gid`` [M] int64."""
    by_gallery = torch.argsort(gid, stable=True)
    g_sorted = gid[by_gallery]
    for a in range(0, gallery.n, step):
        block = gallery.rows(a, min(a + step, gallery.n))
        lo, hi = (int(x) for x in torch.searchsorted(g_sorted, torch.tensor([a, a + len(block)])))
        yield a, block, by_gallery[lo:hi]


def block_aux(block: torch.Tensor, a: int, ga: torch.Tensor, metric: str,
              longest: tuple[float, int]) -> tuple[float, int]:
    """Fill ``ga[a:a + len(block)]`` (the gallery rows' aux) from gallery rows ``a...``; return
    the longest row so far, ``(its L2 norm (float64), its index)``, given ``longest`` before."""
    norms = row_norms(block)
    ga[a:a + len(block)] = aux(block, metric, norms)
    top = int(torch.argmax(norms))
    return (float(norms[top]), a + top) if not float(norms[top]) <= longest[0] else longest


def _positive_scores(qemb: torch.Tensor, qa: torch.Tensor, gallery: EmbeddingSet,
                     ga: torch.Tensor, qid: torch.Tensor, gid: torch.Tensor, metric: str,
                     rows: int, chunk: int = 16384, *,
                     compiled: bool = False) -> tuple[torch.Tensor, float, int]:
    """Canonical scores of the positive pairs, sorted ascending within each query: [M]
    float32; the largest gallery row norm (computed in float64) and that row's index.

    Streams the gallery once in blocks of ``rows``; fills ``ga`` ([G] gallery aux) on the way.
    """
    pos = torch.empty(len(gid), dtype=torch.float32)
    longest = (0.0, 0)
    for a, block, sel in blocks_with_pairs(gallery, gid, max(rows, 4096)):
        longest = block_aux(block, a, ga, metric, longest)
        q, g = qid[sel], gid[sel]
        if compiled:
            from embeval.engine import kernels  # numba: only the compiled pass loads it

            out = torch.empty(len(sel))
            kernels.pair_scores(qemb.numpy(), block.numpy(), q.numpy(), g.numpy(), a, qa.numpy(),
                                 ga.numpy(), METRIC_CODES[metric], out.numpy())
            pos[sel] = out
        else:
            dot = torch.cat([canonical_dot(qemb[q[c:c + chunk]], block[g[c:c + chunk] - a])
                             for c in range(0, len(sel), chunk)] or [torch.empty(0)])
            pos[sel] = transform(dot, qa[q], ga[g], metric)
    order = torch.argsort(pos, stable=True)
    order = order[torch.argsort(qid[order], stable=True)]
    return pos[order], *longest


def tie_tolerance(qemb: torch.Tensor, metric: str, gallery_max_norm: float) -> torch.Tensor:
    """[Q] float32: a bound on |BLAS score - canonical score| for any pair of query i.

    Any order of summing D float32 products is within ``γ_D·|q|·|g|`` of the exact dot
    product (γ_D = D·u / (1 - D·u), u = 2^-24; Higham, *Accuracy and Stability of Numerical
    Algorithms*, section 3.1), so two orders are within twice that, plus the rounding of the
    norms behind |q|·|g|; the cosine's scaling rounds three more times
    (:func:`embeval.engine.similarity.score_tolerance`).
    """
    u = 2.0 ** -24
    dim = qemb.shape[1]
    gamma = dim * u / (1 - dim * u)
    return score_tolerance(qemb, metric, gallery_max_norm, dot_rel=2 * gamma + 4 * u,
                           cos_rel=2 * gamma + 16 * u)
