"""The verification pass's engine: correctly rounded dot products (embeval.engine.exact) against
Python Fractions rounded to float32 by hand, and the trial statistics (trial_stats) against a
dense count of the exact scores, and invariant to blocks, backends, gallery order and shards."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import embeval
from embeval.engine.exact import dot_bound, exact_dots, pair_dots, round_dots
from embeval.engine.stats import Protocol
from embeval.engine.trial_pass import trial_stats
from embeval.engine.trials import VerifyStats

# ---------------------------------------------------------------------------------- the oracle


def round_f32(x: Fraction) -> float:
    """The float32 nearest to the exact ``x``, ties to even, computed on the Fraction (as a
    Python float, which holds every float32 exactly); ±inf past the float32 range."""
    if x == 0:
        return 0.0
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    ulp = Fraction(2) ** max(e - 23, -149)  # 24 significant bits; subnormals below 2**-126
    n, rest = divmod(a, ulp)
    if 2 * rest > ulp or (2 * rest == ulp and n % 2 == 1):
        n += 1
    r = n * ulp
    out = float("inf") if r >= Fraction(2) ** 128 else float(r)
    return out if x > 0 else -out


def exact_dot(q: list[float], g: list[float]) -> Fraction:
    return sum((Fraction(a) * Fraction(b) for a, b in zip(q, g)), Fraction(0))


def f32(values: list[float]) -> list[float]:
    """Values as float32 (the inputs' precision)."""
    return torch.tensor(values, dtype=torch.float32).double().tolist()


def test_round_f32_oracle_sanity() -> None:
    """The hand rounding agrees with numpy's float64 → float32 cast where float64 is exact."""
    for v in [1.0, 1 + 2**-24, 1 + 3 * 2**-24, -(1 + 2**-24), 2**-149, 2**-150, 3 * 2**-150,
              2**-126 * (1 - 2**-24), 0.1, -7.3e30, 2.0**128 - 2**103, 2.0**128 - 2**104]:
        with np.errstate(over="ignore"):
            assert round_f32(Fraction(v)) == float(np.float64(v).astype(np.float32)), v


# Midpoints: 1 + 2^-24 lies halfway between 1 and 1 + 2^-23 (ties to even: 1.0); 1 + 3·2^-24
# halfway between 1 + 2^-23 and 1 + 2^-22 (even: the upper). A term ±2^-80 breaks the tie, and
# float64 cannot see it (the float64 sum is the midpoint itself).
MIDPOINTS = [
    ([1.0, 2**-12], [1.0, 2**-12], 1.0),
    ([1.0, 2**-11, 2**-12], [1.0, 2**-12, 2**-12], 1 + 2**-22),
    ([1.0, 2**-12, 2**-40], [1.0, 2**-12, 2**-40], 1 + 2**-23),
    ([1.0, 2**-12, 2**-40], [1.0, 2**-12, -(2**-40)], 1.0),
    ([1.0, 2**-11, 2**-12, 2**-40], [1.0, 2**-12, 2**-12, -(2**-40)], 1 + 2**-23),
    ([-1.0, 2**-12, 2**-40], [1.0, -(2**-12), -(2**-40)], -(1 + 2**-23)),
    ([2.0**60, 1.0, -(2.0**60)], [2.0**60, 2**-12, 2.0**60], 0.0),  # cancellation: 2^-12
]


@pytest.mark.parametrize(("q", "g", "want"), MIDPOINTS)
def test_exact_dots_round_midpoints_by_the_exact_sum(q: list[float], g: list[float],
                                                     want: float) -> None:
    ref = round_f32(exact_dot(q, g))
    if want == 0.0:  # the cancellation case: the oracle's value
        want = ref
    assert ref == want
    got = exact_dots(torch.tensor([q]), torch.tensor([g]))
    assert got.dtype == torch.float32 and float(got[0]) == want
    bound = dot_bound(torch.tensor([q]).double().norm(dim=1), float(torch.tensor(g).norm()), len(q))
    assert float(pair_dots(torch.tensor([q]), torch.tensor([g]), bound)[0]) == want


FLOATS = st.floats(min_value=-2.0**30, max_value=2.0**30, allow_nan=False, width=32)


@st.composite
def vector_pairs(draw) -> tuple[list[float], list[float]]:
    d = draw(st.integers(1, 9))
    q = draw(st.lists(FLOATS, min_size=d, max_size=d))
    g = draw(st.lists(FLOATS, min_size=d, max_size=d))
    if draw(st.booleans()):  # cancellation: g nearly orthogonal to q
        g = f32([-x for x in q[1:]] + [q[0]]) if d > 1 else g
    return q, g


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(vector_pairs(), min_size=1, max_size=6), st.integers(1, 4))
def test_exact_and_pair_dots_equal_fractions_rounded_by_hand(
        pairs: list[tuple[list[float], list[float]]], chunk: int) -> None:
    d = max(len(q) for q, _ in pairs)
    pad = [(q + [0.0] * (d - len(q)), g + [0.0] * (d - len(g))) for q, g in pairs]
    q = torch.tensor([p[0] for p in pad], dtype=torch.float32)
    g = torch.tensor([p[1] for p in pad], dtype=torch.float32)
    want = [round_f32(exact_dot(a, b)) for a, b in zip(q.double().tolist(), g.double().tolist())]
    assert exact_dots(q, g).tolist() == want
    bound = dot_bound(q.double().norm(dim=1), float(g.double().norm(dim=1).max()), d)
    assert pair_dots(q, g, bound, chunk=chunk).tolist() == want
    # the bound holds: the float64 sum is within half of it of the exact value
    x = (q.double() * g.double()).sum(1)
    for xi, a, b, e in zip(x.tolist(), q.double().tolist(), g.double().tolist(), bound.tolist()):
        assert abs(Fraction(xi) - exact_dot(a, b)) <= Fraction(e) / 2


def test_round_dots_flags_intervals_that_straddle_a_rounding_boundary() -> None:
    mid = 1 + 2**-24
    x = torch.tensor([mid, mid + 2**-30, mid - 2**-30, 1.0, mid + 2**-30, -mid],
                     dtype=torch.float64)
    bound = torch.tensor([2**-50, 2**-50, 2**-50, 2**-50, 2**-29, 2**-50], dtype=torch.float64)
    f, amb = round_dots(x, bound)
    assert amb.tolist() == [True, False, False, False, True, True]
    assert f.dtype == torch.float32
    assert f[1:4].tolist() == [1 + 2**-23, 1.0, 1.0]


# ---------------------------------------------------------------------------------- the pass


def dense_stats(scores: list[float], genuine: list[bool]) -> tuple[list, list, list]:
    """(distinct genuine scores ascending, their counts, impostors per slot) counted by hand:
    slot 2i + 1 = equal to the i-th genuine value, 2i = strictly between the (i-1)-th and i-th."""
    gen = sorted(s for s, y in zip(scores, genuine) if y)
    values = sorted(set(gen))
    counts = [gen.count(v) for v in values]
    slots = [0] * (2 * len(values) + 1)
    for s, y in zip(scores, genuine):
        if not y:
            below = sum(v < s for v in values)
            slots[2 * below + (s in values)] += 1
    return values, counts, slots


#: rows whose dot products lie on float32 midpoints, or 2^-80 beside one (float64 cannot tell)
MIDPOINT_ROWS = [[1.0, 2**-12, 0.0, 0.0], [1.0, 2**-12, 2**-40, 0.0], [1.0, 2**-12, -(2**-40), 0.0],
                 [1.0, 2**-11, 2**-12, 0.0], [1.0, 2**-12, 2**-12, 2**-40], [1.0, 0.0, 2**-12, 0.0],
                 [1.0, 2**-12, 0.0, 2**-40], [1.0, 0.0, 0.0, 0.0]]


def test_pass_on_midpoint_scores_equals_the_correctly_rounded_count() -> None:
    """Scores on float32 midpoints that float64 cannot resolve: genuine and impostor scores
    1, 1 + 2^-23, 1 + 2^-22 interleave, so one wrong rounding moves a count to another slot."""
    rows = MIDPOINT_ROWS
    emb = torch.tensor(rows, dtype=torch.float32)
    labels = [2, 2, 2, 0, 0, 1, -1, 1]  # item 6 (unknown) is an impostor even to itself
    s = embeval.EmbeddingSet(emb, torch.tensor(labels))
    scores, genuine = [], []
    for i, j in itertools.product(range(len(rows)), repeat=2):
        scores.append(round_f32(exact_dot(rows[i], rows[j])))
        genuine.append(labels[i] >= 0 and labels[i] == labels[j])
    values, counts, slots = dense_stats(scores, genuine)
    assert values == [1.0, 1 + 2**-23, 1 + 2**-22] and slots[1] > 0 and slots[3] > 0
    for backend, block in itertools.product(["numba", "torch"], [1, 3, None]):
        st_ = trial_stats(s, s, metric="inner", device="cpu", backend=backend, block_size=block)
        assert st_.gen_values.tolist() == values, (backend, block)
        assert st_.gen_counts.tolist() == counts and st_.imp_slots.tolist() == slots


def same_stats(a: VerifyStats, b: VerifyStats) -> bool:
    return a.metric == b.metric and all(
        torch.equal(getattr(a, k), getattr(b, k))
        for k in ("gen_values", "gen_counts", "imp_slots", "imp_keys"))


@st.composite
def float_cases(draw) -> dict:
    seed = draw(st.integers(0, 2**32 - 1))
    gen = torch.Generator().manual_seed(seed)
    self_ = draw(st.booleans())
    nq = draw(st.integers(1, 20))
    ng = nq if self_ else draw(st.integers(1, 30))
    d = draw(st.integers(1, 20))
    n_lab = draw(st.integers(1, 6))
    qe = torch.randn(nq, d, generator=gen) * draw(st.sampled_from([1e-3, 1.0, 30.0]))
    ge = qe if self_ else torch.randn(ng, d, generator=gen)
    ql = torch.randint(-1, n_lab, (nq,), generator=gen)
    gl = ql if self_ else torch.randint(-1, n_lab, (ng,), generator=gen)
    qc = torch.randint(0, 2, (nq,), generator=gen)
    gc = qc if self_ else torch.randint(0, 2, (ng,), generator=gen)
    return dict(q=embeval.EmbeddingSet(qe, ql, qc), g=embeval.EmbeddingSet(ge, gl, gc),
                self_=self_, metric=draw(st.sampled_from(["cosine", "inner", "euclid",
                                                          "sq_euclid"])),
                protocol=Protocol(draw(st.booleans()), self_), seed=seed)


def stats_of(c: dict, q: embeval.EmbeddingSet | None = None,
             g: embeval.EmbeddingSet | None = None, **kw) -> VerifyStats:
    q = c["q"] if q is None else q
    return trial_stats(q, c["g"] if g is None else g, metric=c["metric"],
                       protocol=c["protocol"], device="cpu", **kw)


def permuted(s: embeval.EmbeddingSet, perm: torch.Tensor) -> embeval.EmbeddingSet:
    return embeval.EmbeddingSet(s.embeddings[perm], s.labels[perm], s.cameras[perm])


@pytest.mark.slow
@settings(max_examples=examples(25), deadline=None)
@given(float_cases())
def test_counts_are_invariant_to_blocks_backends_order_and_shards(c: dict) -> None:
    """Random float embeddings (not integers): scores are a function of the pair alone, so the
    statistics are bit-identical however the pass is cut up."""
    whole = stats_of(c, backend="torch", block_size=None)
    for backend, block in itertools.product(["numba", "torch"], [1, 3, 1 << 20]):
        assert same_stats(stats_of(c, backend=backend, block_size=block), whole), (backend, block)
    rnd = random.Random(c["seed"])
    perm = torch.tensor(rnd.sample(range(c["g"].n), c["g"].n))
    if c["self_"]:  # the query set is the gallery: exclude_self pairs item i with item i
        moved = permuted(c["q"], perm)
        got = stats_of(c, moved, moved, backend="numba", block_size=3)
    else:
        got = stats_of(c, g=permuted(c["g"], perm), backend="numba", block_size=3)
    assert same_stats(got, whole)
    nq, ng = c["q"].n, c["g"].n
    g_cuts = sorted(rnd.choices(range(ng + 1), k=2))
    q_cuts = sorted(rnd.choices(range(nq + 1), k=1))
    g_parts = list(zip([0, *g_cuts], [*g_cuts, ng]))
    q_parts = list(zip([0, *q_cuts], [*q_cuts, nq]))
    parts = [stats_of(c, backend=rnd.choice(["numba", "torch"]), block_size=3,
                      gallery_range=gr, query_range=qr)
             for gr, qr in itertools.product(g_parts, q_parts)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert same_stats(merged, whole)
