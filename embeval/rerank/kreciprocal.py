"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) as exact rank statistics, without the
(Q+G)² distance matrix.

The re-ranked distance of query i and gallery item j is the reference implementation's
(``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda)`` of the authors, torchreid and
fast-reid's ``rerank.py``), over the N = Q + G items of queries ∪ gallery:

- the distance ``D`` fed to the reference: ``euclid`` ‖q−g‖, ``sq_euclid`` ‖q−g‖², ``cosine``
  max(1 − cos, 0) (``inner`` has none: refused); the reference squares it, ``e = D²``, and
  normalises each item's row by its largest value over all N items, ``M_i = max_j e(i, j)``
  (the reference divides by the column maxima and transposes: the same for a symmetric
  matrix); ``M_i = 0`` (all items at distance 0) gives 0;
- R(i): the items j among i's k1 + 1 nearest with i among j's k1 + 1 nearest; R*(i): R(i) ∪
  R½(c) for each c ∈ R(i) whose R½(c) (the same with round(k1/2) + 1, rounding half to even
  as numpy) has more than 2/3 of its items in R(i);
- V_i: exp(−e(i, x)/M_i) over x ∈ R*(i), normalised to sum 1; with k2 > 1 the local query
  expansion replaces V_i by the mean of V over i's k2 nearest items;
- Jaccard J(i, j) = 1 − m / (2 − m), m = Σ_x min(V_i[x], V_j[x]);
- final r(i, j) = (1 − λ)·J(i, j) + λ·e(i, j)/M_i, ranked ascending (embeval's score is −r).

Neighbours are by embeval's canonical float32 scores (ties: the lower index first; the
reference's argsort leaves ties unspecified); V, the Jaccard terms and r are float64 (the
reference's ``re_ranking``: float32; the authors' ``re_ranking_feature``: float16).

How it stays exact and O(N·k1) in memory. J(i, j) < 1 only for the *C pairs*, whose V supports
meet: they are found from the sparse V (columns' lists), O(Σ support sizes). Outside them J = 1
and r = (1 − λ) + λ·D(s)²/M_i is a strictly increasing function of D, so those items keep the
order of their original score s (exact ties stay ties). The statistics then come from:

1. the C pairs and the positives, explicit: their r in float64;
2. one usual engine pass (:mod:`embeval.engine.cpu` / :mod:`embeval.engine.torch_pass`) over
   the gallery in which the positives, the C pairs and the protocol's exclusions are *junk*
   (invisible), and the "positive scores" it counts against are the positives' score
   thresholds τ_p: the lowest float32 score s with r(s) ≤ r_p (a non-C positive: its own
   score; a C positive: from r_p, rounded up to float32, so ``s ≥ τ_p`` ⟺ ``r(s) ≤ r_p`` to
   float64 rounding). Each remaining negative lands in the bin of the positives it ties or
   beats (pessimistic ties, as everywhere in embeval);
3. the C negatives binned against the positives' r, the hardest negative and top-k merged.

Memory: the graph (N × (k1 + 1)), V and its expansion (N × |R*| × k2 at most), the C pairs, plus
the block budget. Passes: one N × N top-k pass (the graph), one Q × G pass (the ranking).

Gallery shards (``gallery_range=(a, b)``: ``--shard i/n``, torchrun ranks). The graph, M, V and
its expansion depend only on the inputs (deterministic), so every shard computes them whole and
identically; it then ranks only items [a, b): its negative pass and its C negatives are
restricted to the range, while the positives (and so the histogram bins and thresholds) come
from the whole gallery, as :func:`embeval.engine.rank_stats` does; the top-k takes the
positives inside the range only. The shards' statistics then merge
(:meth:`~embeval.engine.stats.RankStats.merge`) into the whole run's, bit for bit. The graph
pass (O(N²·D)) is duplicated on every shard; only the ranking pass (O(Q·G·D)) is split.
Splitting the graph's rows across ranks and gathering the (k1 + 1)-neighbour lists would
parallelise it too (not done).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from embeval.data.relevance import Relevance
from embeval.data.store import EmbeddingSet
from embeval.engine import listed
from embeval.engine import rank as ranking
from embeval.engine.plan import compiled_available, default_memory, parse_memory
from embeval.engine.rank import positive_pairs, tie_tolerance
from embeval.engine.similarity import aux, overflow_rule, resolve_device, row_norms
from embeval.engine.stats import NO_INDEX, Protocol, RankStats
from embeval.errors import InputFileError, OptionError
from embeval.rerank.encoding import (
    Csr,
    chunks,
    distance_sq,
    gallery_columns,
    local_expansion,
    normalised,
    overlap_work,
    overlaps,
    reciprocal_v,
    release_freed,
)
from embeval.rerank.neighbours import neighbour_graph, pair_scores
from embeval.rerank.options import RerankOptions

__all__ = ["reranked_stats"]

F32_MAX = float(torch.finfo(torch.float32).max)


def _check(query: EmbeddingSet, gallery: EmbeddingSet, metric: str, protocol: Protocol,
           topk: int, norms: torch.Tensor) -> None:
    if metric == "inner":
        raise OptionError("rerank: k-reciprocal re-ranking needs a distance: metric cosine, "
                          "euclid or sq_euclid (inner products have no distance to square and "
                          "normalise)", param="metric")
    ranking._check_inputs(query, gallery, protocol, topk)
    if len(norms):
        top = int(torch.argmax(norms))
        why = overflow_rule(metric, "fp32", query.dim, float(norms[top]), float(norms[top]))
        if why is not None:
            s, row = (query, top) if top < query.n else (gallery, top - query.n)
            raise InputFileError(s.name, f"embedding row {row} has L2 norm {float(norms[top]):.3g}, "
                                         f"too large for metric {metric}: {why}", param="metric")


def capped(opts: RerankOptions, n: int) -> RerankOptions:
    """``opts`` with k1 capped at 2N and k2 at N (N = Q + G items): the same result, since the
    neighbour lists (k1 + 1, round(k1/2) + 1 and k2 items) already hold all N items there;
    nothing is allocated for a larger k1 (2^63 − 1 included)."""
    return replace(opts, k1=min(opts.k1, 2 * n), k2=min(opts.k2, max(n, 1)))


def _own_lists(query: EmbeddingSet, gallery: EmbeddingSet, protocol: Protocol,
               relevance: Relevance | None) -> Relevance:
    """Each query's positives and junk (label equality or ``relevance``), exclusions folded in."""
    if relevance is None:
        qid, gid = positive_pairs(query.labels, gallery.labels)
        relevance = Relevance.from_pairs(qid, gid, torch.ones(len(qid), dtype=torch.int64),
                                         n_query=query.n, n_gallery=gallery.n, source="labels")
    else:
        relevance.check_sizes(query.n, gallery.n)
    return listed.with_protocol(relevance, query, gallery, protocol)


def _thresholds(s: torch.Tensor, r: torch.Tensor, in_c: torch.Tensor, m: torch.Tensor,
                lam: float, metric: str) -> torch.Tensor:
    """[P] float32 τ: the lowest float32 score whose non-C r(s) ≤ r (see the module doc)."""
    tau = s.double()
    if metric == "cosine":
        tau = tau.clamp_max(1.0)
    diff = r - (1.0 - lam)
    d = (diff.clamp_min(0.0) * m / lam).sqrt()
    from_r = (1.0 - d) if metric == "cosine" else -d
    tau = torch.where(in_c, from_r, tau)
    t32 = tau.float()
    up = t32.double() < tau
    t32[up] = torch.nextafter(t32[up], torch.tensor(float("inf")))
    return torch.where(in_c & (diff < 0), torch.tensor(F32_MAX), t32)


def _lookup(keys: torch.Tensor, sorted_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(found [K] bool, position in ``sorted_keys`` [K] int64) of each key."""
    if len(sorted_keys) == 0:
        return torch.zeros(len(keys), dtype=torch.bool), torch.zeros(len(keys), dtype=torch.int64)
    at = torch.searchsorted(sorted_keys, keys).clamp_max(len(sorted_keys) - 1)
    return sorted_keys[at] == keys, at


@dataclass
class _Run:
    """What every query chunk shares: the items, the sparse encodings and the settings."""

    query: EmbeddingSet
    gallery: EmbeddingSet
    x: torch.Tensor  # [N, D] float32: queries then gallery
    xa: torch.Tensor  # [N] aux of x
    big_m: torch.Tensor  # [N] float64 M_i
    v: Csr  # V (after local expansion), [N, N]
    cols: Csr  # its gallery columns
    own: Relevance  # positives and junk, protocol folded in
    eps: torch.Tensor  # [Q] float32 tie tolerance
    metric: str
    lam: float
    exclude_self: bool
    topk: int
    g_range: tuple[int, int]  # the gallery items [a, b) ranked (a shard)
    dev: torch.device
    budget: int
    block_size: int | None
    backend: str
    compiled: bool  # canonical pair scores in the numba kernel


def reranked_stats(query: EmbeddingSet, gallery: EmbeddingSet, opts: RerankOptions, *,
                   metric: str = "cosine", protocol: Protocol = Protocol(), topk: int = 0,
                   device: str = "auto", memory: int | str | None = None,
                   block_size: int | None = None, backend: str = "auto", progress=None,
                   relevance: Relevance | None = None,
                   gallery_range: tuple[int, int] | None = None) -> RankStats:
    """:class:`RankStats` of the k-reciprocal re-ranked distances (scores = −r, float64).

    Options as :func:`embeval.engine.rank_stats` (fp32 only); the protocol's exclusions and
    ``relevance`` decide positives and what each query ignores, as without re-ranking; the
    neighbour sets use every item of queries ∪ gallery (no labels), as the reference.
    Queries run in chunks whose sparse work fits about the CPU budget; the result does not
    depend on the chunks. ``gallery_range``: only items ``[a, b)`` are ranked as negatives
    (a shard; positives from the whole gallery): shards merge exactly (see the module doc).
    """
    qn, gn = query.n, gallery.n
    g_range = gallery_range or (0, gn)
    if not 0 <= g_range[0] <= g_range[1] <= gn:
        raise OptionError(f"gallery range [{g_range[0]}, {g_range[1]}) is outside the gallery "
                          f"(size {gn})")
    opts = capped(opts, qn + gn)
    x = torch.cat([query.embeddings.float(), gallery.embeddings.float()]).contiguous()
    norms = row_norms(x)
    _check(query, gallery, metric, protocol, topk, norms)
    dev = resolve_device(device)
    budget = parse_memory(memory) or default_memory(dev)
    # the graph and the sparse work run on the CPU, within the CPU budget
    budget_cpu = budget if dev.type == "cpu" else (parse_memory(memory)
                                                   or default_memory(torch.device("cpu")))
    xa = aux(x, metric, norms)
    # numba rescoring (and pass) unless the N × N graph pass is small: no compile wait then
    compiled = compiled_available() and (qn + gn) ** 2 > ranking.SMALL_PASS
    graph = neighbour_graph(x, metric, max(opts.k1 + 1, opts.k2), memory=budget_cpu,
                            compiled=compiled)
    big_m = distance_sq(graph.lowest, metric)
    # R*'s candidate triples examined at once: ~64 bytes each, a quarter of the budget
    v = reciprocal_v(graph, x, xa, metric, opts.k1, big_m, compiled=compiled,
                     limit=max(1 << 20, budget_cpu // 256))
    limit = max(1 << 20, budget_cpu // 4)  # bytes for one query chunk's sparse work
    if opts.k2 != 1:
        v = local_expansion(v, graph.index.numpy(), opts.k2, limit // 64)
    del graph
    if backend == "auto":
        backend = "numba" if dev.type == "cpu" and compiled else "torch"
    if backend == "triton":
        backend = "torch"  # the re-ranking's neighbour passes keep top-k lists: the torch pass
    if backend not in ("numba", "torch"):
        raise OptionError(f"backend: unknown backend {backend!r} (numba, torch, auto)",
                          param="backend")
    run = _Run(query, gallery, x, xa, big_m, v, gallery_columns(v, qn),
               _own_lists(query, gallery, protocol, relevance),
               tie_tolerance(x[:qn], metric, float(norms[qn:].max()) if gn else 0.0), metric,
               float(opts.lam), protocol.exclude_self, topk, (int(g_range[0]), int(g_range[1])),
               dev, budget, block_size, backend, compiled)
    # per chunk: the visited products (~64 bytes each: an overlap pair, at most one per
    # product, costs ~256 bytes downstream) and one [rows, G] float64 accumulator
    work = overlap_work(v, run.cols, qn)
    parts = []
    align = 1
    if backend == "numba":  # whole query tiles (numba, and so this import, is loaded anyway)
        from embeval.engine.cpu import TILE_Q

        align = TILE_Q
    for a, b in chunks(work, limit / 64, limit // (8 * max(gn, 1)), align):
        step = None if progress is None else _scaled(progress, a, b, qn)
        parts.append(_chunk_stats(run, a, b, step))
        release_freed()
    return RankStats.concat(parts)


def _scaled(progress, a: int, b: int, qn: int):
    """The pass's progress over the gallery, for queries [a, b) of ``qn``."""
    return lambda done, total: progress(a * total + done * (b - a), qn * total)


def _chunk_stats(run: _Run, a: int, b: int, progress) -> RankStats:
    """The re-ranked statistics of queries [a, b)."""
    qn, gn, lam, metric = b - a, run.gallery.n, run.lam, run.metric
    x, xa, big_m = run.x, run.xa, run.big_m
    cq, cg, cm = overlaps(run.v, run.cols, a, b, gn)
    if run.exclude_self:
        keep = cg != cq
        cq, cg, cm = cq[keep], cg[keep], cm[keep]
    c_codes = cq * gn + cg  # ascending
    own = run.own.rows(a, b)
    oq, og, opos = own.query_ids() + a, own.gallery, own.positive
    own_codes = oq * gn + og  # ascending
    n_all = run.query.n

    def r_of(q: torch.Tensor, g: torch.Tensor, jac: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = pair_scores(x, xa, q, g + n_all, metric, compiled=run.compiled)
        return s, (1.0 - lam) * jac + lam * normalised(distance_sq(s, metric), big_m[q])

    # positives: explicit r; C positives carry their Jaccard term
    pq, pg = oq[opos], og[opos]
    found, at = _lookup(pq * gn + pg, c_codes)
    jac_p = torch.ones(len(pq), dtype=torch.float64)
    mp = cm[at[found]]
    jac_p[found] = 1.0 - mp / (2.0 - mp)
    s_p, r_p = r_of(pq, pg, jac_p)
    # C negatives: C pairs in the ranked range that are neither the query's positives nor junk
    listed_c, _ = _lookup(c_codes, own_codes)
    ga, gb = run.g_range
    neg = ~listed_c & (cg >= ga) & (cg < gb)
    nq_, ng_, mn = cq[neg], cg[neg], cm[neg]
    _, r_n = r_of(nq_, ng_, 1.0 - mn / (2.0 - mn))
    del cm, mn, neg, listed_c

    pq, nq_ = pq - a, nq_ - a  # chunk rows from here
    counts = torch.bincount(pq, minlength=qn)
    offsets = torch.zeros(qn + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    tau = _thresholds(s_p, r_p, found, big_m[pq + a], lam, metric)
    order = torch.argsort(tau, stable=True)
    order = order[torch.argsort(pq[order], stable=True)]
    k = run.topk
    sub = EmbeddingSet(x[a:b], run.query.labels[a:b], name=run.query.name)
    pass_stats = RankStats(
        metric=metric, n_gallery=gn, query_labels=sub.labels, pos_offsets=offsets,
        pos_scores=tau[order].contiguous(),
        neg_hist=torch.zeros(len(pq) + qn, dtype=torch.int64),
        n_neg=torch.zeros(qn, dtype=torch.int64), max_neg=torch.full((qn,), float("-inf")),
        topk_scores=torch.full((qn, k), float("-inf")) if k else None,
        topk_indices=torch.full((qn, k), NO_INDEX, dtype=torch.int64) if k else None)
    pass_stats.extra["eps"] = run.eps[a:b]
    hidden = [own_codes, c_codes]
    if run.exclude_self:  # the pair (i, i) as junk: the chunk's pass sees local query rows
        ids = torch.arange(a, min(b, gn))
        hidden.append(ids * gn + ids)
    invisible = _as_lists(torch.unique(torch.cat(hidden)) - a * gn, qn, gn)
    del hidden, own_codes, c_codes
    _negative_pass(pass_stats, sub, run.xa[a:b].contiguous(), run, progress, invisible)
    return _assemble(pass_stats, offsets, pq, pg, r_p, nq_, ng_, r_n, big_m[a:b], lam, metric, k,
                     run.g_range)


def _as_lists(codes: torch.Tensor, qn: int, gn: int) -> Relevance:
    """Sorted pair codes q·G + g as junk lists of ``qn`` queries."""
    hq = codes // max(gn, 1)
    off = torch.zeros(qn + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(hq, minlength=qn), 0, out=off[1:])
    return Relevance(off, codes % max(gn, 1), torch.zeros(len(codes), dtype=torch.bool), gn,
                     "re-ranking")


def _negative_pass(stats: RankStats, sub: EmbeddingSet, qa: torch.Tensor, run: _Run, progress,
                   invisible: Relevance) -> None:
    """The engine's negative pass (fp32) of the chunk's queries over the ranked gallery range,
    ``invisible`` as junk (the protocol is folded into it)."""
    gallery, qn = run.gallery, run.query.n
    rows = run.block_size or max(1, run.budget // max(1, 8 * gallery.dim))
    if run.backend == "numba":
        from embeval.engine.cpu import negative_pass
    else:
        from embeval.engine.torch_pass import negative_pass  # type: ignore[assignment]
    negative_pass(stats, sub, gallery, sub.embeddings, qa, run.xa[qn:].contiguous(), Protocol(),
                  run.g_range, rows, device=run.dev, precision="fp32", budget=run.budget,
                  progress=progress, relevance=invisible)


def _assemble(pass_stats: RankStats, offsets: torch.Tensor, pq: torch.Tensor, pg: torch.Tensor,
              r_p: torch.Tensor, nq_: torch.Tensor, ng_: torch.Tensor, r_n: torch.Tensor,
              big_m: torch.Tensor, lam: float, metric: str, k: int,
              g_range: tuple[int, int]) -> RankStats:
    """The re-ranked statistics: the pass's counts plus the explicit C negatives (those of
    ``g_range``); the top-k of the positives in ``g_range``, the pass's and the C negatives'."""
    qn = pass_stats.n_query
    # positives by re-ranked score −r ascending within each query
    order = torch.argsort(-r_p, stable=True)
    order = order[torch.argsort(pq[order], stable=True)]
    pos_scores = (-r_p[order]).contiguous()
    # C negatives: bin = #positives with r_p ≥ r_n (ties pessimistic)
    hist = pass_stats.neg_hist.clone()
    best = torch.zeros(0, dtype=torch.int64)  # each query's k best C negatives (for the top-k)
    if len(r_n):
        # sorted by (query, r), negatives first at equal r, then as given: (query, gallery)
        allq = torch.cat([nq_, pq])
        allr = torch.cat([r_n, r_p])
        is_pos = torch.cat([torch.zeros(len(nq_), dtype=torch.int64),
                            torch.ones(len(pq), dtype=torch.int64)])
        o = torch.argsort(allr, stable=True)
        o = o[torch.argsort(allq[o], stable=True)]
        before = torch.cumsum(is_pos[o], 0) - is_pos[o]
        negs = is_pos[o] == 0
        q_of = allq[o][negs]
        less = before[negs] - offsets[q_of]
        bins = (offsets[q_of + 1] - offsets[q_of]) - less
        hist.index_add_(0, offsets[q_of] + q_of + bins, torch.ones(len(bins), dtype=torch.int64))
        if k:  # a C negative behind k others of its query (r, then gallery index) is not top-k
            per_q = torch.bincount(q_of, minlength=qn)
            rank = torch.arange(len(q_of)) - (torch.cumsum(per_q, 0) - per_q)[q_of]
            best = o[negs][rank < k]
    n_neg = pass_stats.n_neg + torch.bincount(nq_, minlength=qn)
    seen = pass_stats.n_neg > 0
    mapped = -((1.0 - lam) + lam * normalised(distance_sq(pass_stats.max_neg, metric), big_m[:qn]))
    max_neg = torch.where(seen, mapped, torch.tensor(float("-inf"), dtype=torch.float64))
    if len(r_n):
        max_neg = max_neg.scatter_reduce(0, nq_, -r_n, "amax")
    topv = topi = None
    if k:
        mine = (pg >= g_range[0]) & (pg < g_range[1])
        topv, topi = _topk(pass_stats, k, pq[mine], pg[mine], r_p[mine], nq_[best], ng_[best],
                           r_n[best], big_m, lam, metric)
    return RankStats(metric=metric, n_gallery=pass_stats.n_gallery,
                     query_labels=pass_stats.query_labels, pos_offsets=offsets,
                     pos_scores=pos_scores, neg_hist=hist, n_neg=n_neg, max_neg=max_neg,
                     topk_scores=topv, topk_indices=topi)


def _topk(pass_stats: RankStats, k: int, pq: torch.Tensor, pg: torch.Tensor, r_p: torch.Tensor,
          nq_: torch.Tensor, ng_: torch.Tensor, r_n: torch.Tensor, big_m: torch.Tensor,
          lam: float, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by re-ranked score (desc; the lower gallery index first on ties) of the pass's
    top-k (mapped), the positives and the C negatives."""
    qn = pass_stats.n_query
    assert pass_stats.topk_scores is not None and pass_stats.topk_indices is not None
    tv, ti = pass_stats.topk_scores, pass_stats.topk_indices
    present = ti != NO_INDEX
    rows = torch.arange(qn)[:, None].expand_as(ti)[present]
    e = distance_sq(tv[present], metric)
    mapped = -((1.0 - lam) + lam * normalised(e, big_m[rows]))
    q = torch.cat([rows, pq, nq_])
    g = torch.cat([ti[present], pg, ng_])
    val = torch.cat([mapped, -r_p, -r_n])
    o = torch.argsort(g, stable=True)
    o = o[torch.argsort(-val[o], stable=True)]
    o = o[torch.argsort(q[o], stable=True)]
    q, g, val = q[o], g[o], val[o]
    counts = torch.bincount(q, minlength=qn)
    rank = torch.arange(len(q)) - (torch.cumsum(counts, 0) - counts)[q]
    keep = rank < k
    topv = torch.full((qn, k), float("-inf"), dtype=torch.float64)
    topi = torch.full((qn, k), NO_INDEX, dtype=torch.int64)
    topv[q[keep], rank[keep]] = val[keep]
    topi[q[keep], rank[keep]] = g[keep]
    return topv, topi
