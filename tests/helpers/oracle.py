"""Independent reference implementation of embeval's metrics (DESIGN.md section 3).

Deliberately naive: float64 numpy, the full Q x G score matrix, every row fully
sorted, one query at a time, plain Python loops. It imports nothing from
embeval, so the engine (streaming, blocked, compiled) is checked against a
second, obviously-correct reading of the specification:

* score: higher = more similar; inner q.g, cosine q^.g^, euclid -|q-g|,
  sq_euclid -|q-g|^2 (computed directly from the difference, not from norms).
* protocol exclusions remove gallery items from a query's row before anything
  is counted: ``exclude_same_camera`` drops items with the query's label AND camera
  (torchreid's Market-1501 rule), where an unknown query label (< 0) matches nothing,
  so such a query loses no item to it,
  ``exclude_self`` drops gallery item i for query i.
* positives: kept gallery items with the query's label, only when the query's
  label is >= 0 (a label < 0 is "unknown": never a positive). Everything else
  kept is a negative.
* per-query relevance (``relevance=(positives, junk)``, two lists of Q lists of gallery
  indices) replaces label equality: query i's positives are its listed positives that the
  protocol keeps, its junk is removed from its row like an excluded item, everything else
  kept is a negative.
* pessimistic ties: for positive j, N_j = #kept items with score >= s_j and
  TP_j = #positives with score >= s_j.

All counts are exact integers; fractions are built from them with one division
each (so equal rationals give equal floats) and averaged with ``math.fsum``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

__all__ = ["Reference", "score_matrix", "prototypes", "keep_mask", "reference"]


def _f64(x) -> np.ndarray:
    """Any tensor / array (float16, bfloat16, float32 ...) as a float64 numpy array."""
    if hasattr(x, "detach"):  # torch tensor: bfloat16 has no numpy dtype, go via float64
        import torch

        return x.detach().to(torch.float64).cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _i64(x) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy().astype(np.int64)
    return np.asarray(x, dtype=np.int64)


def score_matrix(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """[Q, G] float64 scores, brute force."""
    q = _f64(q)
    g = _f64(g)
    if metric == "inner":
        return q @ g.T
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        gn = np.linalg.norm(g, axis=1, keepdims=True)
        qh = np.divide(q, qn, out=np.zeros_like(q), where=qn > 0)
        gh = np.divide(g, gn, out=np.zeros_like(g), where=gn > 0)
        return qh @ gh.T
    diff = q[:, None, :] - g[None, :, :]
    d2 = (diff * diff).sum(axis=2)
    if metric == "sq_euclid":
        return -d2
    if metric == "euclid":
        return -np.sqrt(d2)
    raise ValueError(f"unknown metric {metric!r}")


def prototypes(g: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gallery for ``aggregate="mean"``: one L2-normalised mean per label >= 0
    (ascending label order), then every label < 0 item L2-normalised on its own
    (original order). Returns (embeddings [M, D] float64, labels [M] int64)."""
    g = _f64(g)
    labels = _i64(labels)
    rows, labs = [], []
    for lab in sorted(set(labels[labels >= 0].tolist())):
        m = g[labels == lab].mean(axis=0)
        rows.append(m / np.linalg.norm(m))
        labs.append(lab)
    for j in np.flatnonzero(labels < 0):
        rows.append(g[j] / np.linalg.norm(g[j]))
        labs.append(int(labels[j]))
    return np.array(rows, dtype=np.float64).reshape(len(rows), g.shape[1]), np.array(labs, np.int64)


def keep_mask(q_labels, g_labels, q_cams=None, g_cams=None, *, exclude_same_camera=False,
              exclude_self=False) -> np.ndarray:
    """[Q, G] bool: which gallery items each query's row keeps."""
    ql, gl = _i64(q_labels), _i64(g_labels)
    keep = np.ones((len(ql), len(gl)), dtype=bool)
    if exclude_same_camera:
        qc, gc = _i64(q_cams), _i64(g_cams)
        for i in range(len(ql)):
            if ql[i] >= 0:
                keep[i] &= ~((gl == ql[i]) & (gc == qc[i]))
    if exclude_self:
        assert len(ql) == len(gl), "exclude_self needs query set == gallery set"
        for i in range(len(ql)):
            keep[i, i] = False
    return keep


@dataclass
class Reference:
    metrics: dict[str, float]
    n_valid: int
    per_query: dict[str, np.ndarray]
    pr_curves: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
    scores: np.ndarray  # [Q, G'] float64 (G' = prototypes count when aggregated)
    keep: np.ndarray  # [Q, G'] bool
    pos: np.ndarray  # [Q, G'] bool (kept positives)
    f1_argmax: list = field(default_factory=list)


def _mean(values) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else math.nan


def _knn_vote(order: np.ndarray, g_labels: np.ndarray, k: int) -> int:
    """Majority vote of the first k items of ``order`` (best first); label < 0 votes -1;
    a tie between classes goes to the class whose best member ranks highest."""
    votes: dict[int, int] = {}
    first_pos: dict[int, int] = {}
    for pos_in_list, j in enumerate(order[:k]):
        c = int(g_labels[j]) if g_labels[j] >= 0 else -1
        votes[c] = votes.get(c, 0) + 1
        first_pos.setdefault(c, pos_in_list)
    if not votes:
        return -1
    return min(votes, key=lambda c: (-votes[c], first_pos[c]))


def reference(q_emb, q_labels, g_emb, g_labels, *, q_cams=None, g_cams=None, metric="cosine",
              ks=(1, 5, 10), knn_k=None, exclude_same_camera=False, exclude_self=False,
              aggregate=None, no_positive="skip", pr=False, relevance=None) -> Reference:
    """Every metric of ``embeval.evaluate`` by brute force (see module docstring)."""
    ql, gl = _i64(q_labels), _i64(g_labels)
    qe, ge = _f64(q_emb), _f64(g_emb)
    if aggregate == "mean":
        assert not exclude_same_camera and not exclude_self
        ge, gl = prototypes(ge, gl)
    S = score_matrix(qe, ge, metric)
    keep = keep_mask(ql, gl, q_cams, g_cams, exclude_same_camera=exclude_same_camera,
                     exclude_self=exclude_self)
    Q, G = S.shape
    pos_all = (gl[None, :] == ql[:, None]) & (ql[:, None] >= 0) & keep
    if relevance is not None:
        listed_pos, listed_junk = relevance
        pos_all = np.zeros((Q, G), dtype=bool)
        for i in range(Q):
            pos_all[i, list(listed_pos[i])] = True
            keep[i, list(listed_junk[i])] = False
        pos_all &= keep

    n_pos = np.zeros(Q, np.int64)
    first_rank = np.full(Q, np.inf)
    last_rank = np.full(Q, np.inf)
    ap = np.full(Q, np.nan)
    ap_frac: list[Fraction | None] = [None] * Q
    hard_pos = np.full(Q, np.nan, dtype=np.float64)
    hard_neg = np.full(Q, np.nan, dtype=np.float64)
    knn_pred = np.full(Q, -1, np.int64)
    pr_p, pr_r, pr_t, offsets = [], [], [], [0]
    best = []  # per valid query: (F1, P, R, T) at max F1
    f1_argmax = []

    for i in range(Q):
        idx = np.flatnonzero(keep[i])
        s = S[i, idx]
        is_pos = pos_all[i, idx]
        pos_s = s[is_pos]
        neg_s = s[~is_pos]
        P = len(pos_s)
        n_pos[i] = P
        if len(neg_s):
            hard_neg[i] = neg_s.max()
        if knn_k is not None:
            # full sort: score descending, then gallery index ascending
            order = sorted(range(len(idx)), key=lambda t: (-s[t], idx[t]))
            knn_pred[i] = _knn_vote(idx[np.array(order, dtype=np.int64)] if order else idx,
                                    gl, knn_k)
        if P == 0:
            offsets.append(offsets[-1])
            continue
        hard_pos[i] = pos_s.min()
        first_rank[i] = 1 + int((neg_s >= pos_s.max()).sum())
        last_rank[i] = int((s >= pos_s.min()).sum())
        terms = []
        for sj in pos_s:
            N = int((s >= sj).sum())
            TP = int((pos_s >= sj).sum())
            terms.append(Fraction(TP, N))
        ap_frac[i] = sum(terms, Fraction(0)) / P
        ap[i] = float(ap_frac[i])
        # PR points at each distinct positive score, decreasing threshold
        best_i = None
        for t in sorted(set(pos_s.tolist()), reverse=True):
            N = int((s >= t).sum())
            TP = int((pos_s >= t).sum())
            pr_p.append(TP / N)
            pr_r.append(TP / P)
            pr_t.append(t)
            f1 = Fraction(2 * TP, N + P)  # = 2 p r / (p + r), exactly
            if best_i is None or f1 > best_i[0]:  # strict: the highest threshold wins ties
                best_i = (f1, TP / N, TP / P, t)
        offsets.append(len(pr_p))
        best.append(best_i)
        f1_argmax.append(best_i[3])

    valid = n_pos > 0
    n_valid = int(valid.sum())
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"top{k}_accuracy"] = _mean((first_rank <= k).tolist())
    if 1 in ks:
        metrics["accuracy"] = metrics["top1_accuracy"]
    else:
        metrics["accuracy"] = _mean((first_rank <= 1).tolist())
    metrics["hard_pos"] = _mean(hard_pos[~np.isnan(hard_pos)].tolist())
    metrics["hard_neg"] = _mean(hard_neg[~np.isnan(hard_neg)].tolist())
    zero = no_positive == "zero"

    def over_valid(per_valid_values):
        """Mean over valid queries, or over all queries with 0 for invalid ones ("zero")."""
        vals = list(per_valid_values)
        if zero:
            vals = vals + [0.0] * int((~valid).sum())
        return _mean(vals)

    for k in ks:
        metrics[f"rank{k}"] = over_valid((first_rank[valid] <= k).astype(float).tolist())
    if zero:
        # exact rational mean, then one rounding
        metrics["mAP"] = float(sum((f for f in ap_frac if f is not None), Fraction(0)) / Q) \
            if Q else math.nan
    else:
        metrics["mAP"] = (float(sum((f for f in ap_frac if f is not None), Fraction(0)) / n_valid)
                          if n_valid else math.nan)
    metrics["mINP"] = over_valid((n_pos[valid] / last_rank[valid]).tolist())
    if knn_k is not None:
        metrics["knn_accuracy"] = _mean(((knn_pred == ql) & (ql >= 0)).tolist())
    pr_curves = None
    if pr:
        metrics["maxF1"] = over_valid(float(b[0]) for b in best)
        metrics["P@maxF1"] = over_valid(b[1] for b in best)
        metrics["R@maxF1"] = over_valid(b[2] for b in best)
        metrics["T@maxF1"] = _mean(float(b[3]) for b in best)  # a threshold: valid queries only
        pr_curves = (np.array(pr_p, np.float64), np.array(pr_r, np.float64),
                     np.array(pr_t, np.float64), np.array(offsets, np.int64))
    per_query = {"n_pos": n_pos, "first_rank": first_rank, "last_rank": last_rank, "ap": ap,
                 "hard_pos": hard_pos, "hard_neg": hard_neg}
    if knn_k is not None:
        per_query["knn_pred"] = knn_pred
    return Reference(metrics, n_valid, per_query, pr_curves, S, keep, pos_all, f1_argmax)


# ---------------------------------------------------------------------------
# Test support: generated cases, and the comparison of an engine result with
# the reference. (Kept here so both test files share one definition.)
# ---------------------------------------------------------------------------

SCORE_KEYS = ("hard_pos", "hard_neg", "T@maxF1")  # metrics that are scores, not fractions


@dataclass
class Case:
    """Query and gallery as numpy arrays (embeddings as float64 holding the exact values)."""

    qe: np.ndarray
    ql: np.ndarray
    ge: np.ndarray
    gl: np.ndarray
    qc: np.ndarray | None = None
    gc: np.ndarray | None = None
    origin: str = ""  # how to rebuild it exactly (gaussian cases: the generator's seed)

    def __repr__(self) -> str:  # a copy-pasteable reproducer
        def fmt(a):
            return None if a is None else a.tolist()

        return (f"Case(qe={fmt(self.qe)}, ql={fmt(self.ql)}, qc={fmt(self.qc)},\n"
                f"     ge={fmt(self.ge)}, gl={fmt(self.gl)}, gc={fmt(self.gc)}, "
                f"origin={self.origin!r})")

    def sets(self, dtype=None):
        """(query, gallery) as ``embeval.EmbeddingSet`` with embeddings of ``dtype``."""
        import torch

        import embeval

        dtype = dtype or torch.float32

        def mk(e, lab, cam):
            return embeval.EmbeddingSet(
                torch.tensor(e, dtype=torch.float64).to(dtype),
                torch.tensor(lab, dtype=torch.int64),
                None if cam is None else torch.tensor(cam, dtype=torch.int64))

        return mk(self.qe, self.ql, self.qc), mk(self.ge, self.gl, self.gc)

    def ref(self, **kw) -> Reference:
        return reference(self.qe, self.ql, self.ge, self.gl, q_cams=self.qc, g_cams=self.gc, **kw)


def _to_np(x):
    if hasattr(x, "detach"):
        import torch

        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _close(got: float, want: float, tol: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    if math.isinf(want):
        return got == want
    return abs(got - want) <= tol * max(1.0, abs(want))


def assert_matches(res, ref: Reference, *, exact: bool, score_tol: float = 1e-5,
                   check_pr: bool = True, check_knn: bool = True) -> None:
    """Compare an ``embeval.evaluate`` result with the reference.

    exact=True: inputs whose float32 scores are exact (small integers with inner /
    sq_euclid): every count and score must be equal, fractions to 1e-12.
    exact=False: scores (hard_pos, hard_neg, thresholds) to ``score_tol``; the
    rank-based numbers must still be exact (callers ensure there are no near-ties).
    """
    stol = 1e-12 if exact else score_tol
    problems = []
    if res.n_valid != ref.n_valid:
        problems.append(f"n_valid: got {res.n_valid}, want {ref.n_valid}")
    for key, want in ref.metrics.items():
        if key == "knn_accuracy" and not check_knn:
            continue
        if key in ("maxF1", "P@maxF1", "R@maxF1", "T@maxF1") and not check_pr:
            continue
        if key not in res.metrics:
            problems.append(f"metrics[{key!r}] missing (have {sorted(res.metrics)})")
            continue
        got = float(res.metrics[key])
        tol = stol if key in SCORE_KEYS else 1e-12
        if not _close(got, want, tol):
            problems.append(f"metrics[{key!r}]: got {got!r}, want {want!r}")
    pq = res.per_query
    for key, want in ref.per_query.items():
        if key == "knn_pred" and not check_knn:
            continue
        if key not in pq:
            problems.append(f"per_query[{key!r}] missing (have {sorted(pq)})")
            continue
        got = _to_np(pq[key])
        if got.shape != want.shape:
            problems.append(f"per_query[{key!r}] shape {got.shape}, want {want.shape}")
            continue
        if key in ("n_pos", "knn_pred", "first_rank", "last_rank"):
            if not np.array_equal(got.astype(np.float64), want.astype(np.float64)):
                problems.append(f"per_query[{key!r}]: got {got.tolist()}, want {want.tolist()}")
            continue
        tol = 1e-12 if key == "ap" else stol
        bad = [i for i in range(len(want)) if not _close(float(got[i]), float(want[i]), tol)]
        if bad:
            problems.append(f"per_query[{key!r}] differs at {bad}: got {got.tolist()}, "
                            f"want {want.tolist()}")
    if check_pr and ref.pr_curves is not None:
        if res.pr_curves is None:
            problems.append("pr_curves missing with pr=True")
        else:
            p, r, t, off = (_to_np(x) for x in res.pr_curves)
            wp, wr, wt, woff = ref.pr_curves
            if not np.array_equal(off.astype(np.int64), woff):
                problems.append(f"pr offsets: got {off.tolist()}, want {woff.tolist()}")
            elif not (np.allclose(p, wp, rtol=0, atol=1e-12) and np.allclose(r, wr, rtol=0,
                                                                             atol=1e-12)):
                problems.append(f"pr precision/recall: got {p.tolist()} {r.tolist()}, "
                                f"want {wp.tolist()} {wr.tolist()}")
            elif not all(_close(float(a), float(b), stol) for a, b in zip(t, wt)):
                problems.append(f"pr thresholds: got {t.tolist()}, want {wt.tolist()}")
    assert not problems, "engine != reference:\n  " + "\n  ".join(problems)


def min_gap(scores: np.ndarray) -> float:
    """Smallest positive difference between two scores of one row (inf when none)."""
    best = math.inf
    for row in scores:
        u = np.unique(row)
        if len(u) > 1:
            best = min(best, float(np.diff(u).min()))
    return best


# ---------------------------------------------------------------------------
# hypothesis strategies
# ---------------------------------------------------------------------------

def int_cases(*, cameras: bool = False, same_set: bool = False, max_q: int = 8,
              max_g: int = 12, max_d: int = 6, n_labels: int = 3):
    """Small-integer embeddings (values -2..2) with HEAVY ties: duplicated gallery
    rows, queries copied from gallery rows, labels in -1..n_labels-1 (queries up to
    n_labels, a label absent from the gallery), optional cameras in 0..2.
    Inner products and squared distances are exact in float32 and float64."""
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    @st.composite
    def build(draw):
        d = draw(st.integers(1, max_d))
        g = draw(st.integers(1, max_g))
        q = g if same_set else draw(st.integers(1, max_q))
        vals = st.integers(-2, 2)
        ge = draw(arrays(np.int64, (g, d), elements=vals)).astype(np.float64)
        for src, dst in draw(st.lists(st.tuples(st.integers(0, g - 1), st.integers(0, g - 1)),
                                      max_size=g)):
            ge[dst] = ge[src]
        gl = draw(arrays(np.int64, g, elements=st.integers(-1, n_labels - 1)))
        gc = draw(arrays(np.int64, g, elements=st.integers(0, 2))) if cameras else None
        if same_set:
            return Case(ge.copy(), gl.copy(), ge, gl, None if gc is None else gc.copy(), gc)
        qe = draw(arrays(np.int64, (q, d), elements=vals)).astype(np.float64)
        for qi, gi in draw(st.lists(st.tuples(st.integers(0, q - 1), st.integers(0, g - 1)),
                                    max_size=q)):
            qe[qi] = ge[gi]
        ql = draw(arrays(np.int64, q, elements=st.integers(-1, n_labels)))
        qc = draw(arrays(np.int64, q, elements=st.integers(0, 2))) if cameras else None
        return Case(qe, ql, ge, gl, qc, gc)

    return build()


def gauss_cases(*, cameras: bool = False, same_set: bool = False, max_q: int = 10,
                max_g: int = 16, max_d: int = 8, n_labels: int = 4, min_q: int = 1,
                min_g: int = 1):
    """Gaussian float embeddings (exactly representable in float32), random labels in
    -1..n_labels-1 (queries up to n_labels), optional cameras; no duplicates."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw):
        seed = draw(st.integers(0, 2**32 - 1))
        d = draw(st.integers(1, max_d))
        g = draw(st.integers(min_g, max_g))
        q = g if same_set else draw(st.integers(min_q, max_q))
        return gauss_case(seed, q, g, d, cameras=cameras, same_set=same_set, n_labels=n_labels)

    return build()


def gauss_case(seed: int, q: int, g: int, d: int, *, cameras: bool = False,
               same_set: bool = False, n_labels: int = 4) -> Case:
    """The gaussian case ``gauss_cases`` draws, rebuilt from its seed and sizes."""
    origin = (f"gauss_case({seed}, {q}, {g}, {d}, cameras={cameras}, same_set={same_set}, "
              f"n_labels={n_labels})")
    rng = np.random.default_rng(seed)
    ge = rng.standard_normal((g, d)).astype(np.float32).astype(np.float64)
    gl = rng.integers(-1, n_labels, g)
    gc = rng.integers(0, 3, g) if cameras else None
    if same_set:
        return Case(ge.copy(), gl.copy(), ge, gl, None if gc is None else gc.copy(), gc, origin)
    qe = rng.standard_normal((q, d)).astype(np.float32).astype(np.float64)
    ql = rng.integers(-1, n_labels + 1, q)
    qc = rng.integers(0, 3, q) if cameras else None
    return Case(qe, ql, ge, gl, qc, gc, origin)
