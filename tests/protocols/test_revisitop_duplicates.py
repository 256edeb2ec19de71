"""Revisited Oxford/Paris with duplicate database items (issue 23) against revisitop's
``compute_map`` (:mod:`helpers.revisitop`: its formula re-implemented as an oracle).

revisitop ranks by ``np.argsort(-sim, axis=0)``: its order among tied items is numpy's. When
every duplicate copy has its original's kind for every query, ties only join items of one
kind, the order among them changes nothing, and embeval must equal revisitop exactly. When a
copy's kind differs from its original's, revisitop's number depends on that order: embeval's is
``compute_map`` of the worst order (inside a run of equal scores, non-positives first).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.revisitop import SETTINGS, compute_map, gnd_of

import embeval
from embeval.protocols.revisited import revisited, revisited_settings


def dataset(seed: int, nq: int = 25, ng: int = 200, d: int = 16, dup: float = 0.05,
            copy_kind: bool = True):
    """Gaussian embeddings (float32-exact), ``dup`` of the database duplicated exactly."""
    rng = np.random.default_rng(seed)
    base = ng - int(ng * dup)
    g = rng.standard_normal((base, d)).astype(np.float32)
    src = rng.choice(base, ng - base, replace=False)
    g = np.concatenate([g, g[src]])
    q = rng.standard_normal((nq, d)).astype(np.float32)
    # queries near some database items, so that the settings have positives ranked high
    q[: nq // 2] = g[rng.choice(base, nq // 2)] + 0.3 * q[: nq // 2]
    kind = np.where(rng.random((nq, ng)) < 0.08, rng.integers(0, 3, (nq, ng)), -1)
    if copy_kind:
        kind[:, base:] = kind[:, src]
    return q, g, kind


def embeval_metrics(q, g, kind, ks):
    qs = embeval.EmbeddingSet(torch.from_numpy(q), torch.zeros(len(q), dtype=torch.long))
    gs = embeval.EmbeddingSet(torch.from_numpy(g), torch.zeros(len(g), dtype=torch.long))
    qi, gi = np.nonzero(kind >= 0)
    gt = revisited_settings(qi, gi, kind[qi, gi], n_query=len(q), n_gallery=len(g))
    return revisited(qs, gs, gt, ks=ks, metric="inner", device="cpu").metrics


def scores(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    s = q.astype(np.float64) @ g.astype(np.float64).T
    return s


@pytest.mark.parametrize("seed", [0, 1])
def test_duplicates_of_one_kind_equal_revisitop(seed: int) -> None:
    q, g, kind = dataset(seed)
    ks = [1, 5, 10]
    sim = scores(q, g)
    got = embeval_metrics(q, g, kind, ks)
    for name in SETTINGS:
        gnd = gnd_of(kind, name)
        # revisitop's own ranking, and the reversed order among ties: the same numbers
        for ranks in (np.argsort(-sim.T, axis=0, kind="stable"),
                      np.lexsort((-np.arange(len(g))[:, None].repeat(len(q), 1), -sim.T), axis=0)):
            m, mp = compute_map(ranks, gnd, ks)
            assert got[f"mAP@{name}"] == pytest.approx(m, abs=1e-12), name
            for k, v in zip(ks, mp):
                assert got[f"mP@{k}@{name}"] == pytest.approx(v, abs=1e-12), (name, k)


def test_duplicates_of_mixed_kinds_equal_revisitop_on_the_worst_order() -> None:
    q, g, kind = dataset(7, dup=0.2, copy_kind=False)
    ks = [1, 5, 10]
    sim = scores(q, g)
    got = embeval_metrics(q, g, kind, ks)
    differs = False
    for name in SETTINGS:
        gnd = gnd_of(kind, name)
        ok = np.zeros((len(g), len(q)), dtype=bool)
        for i, x in enumerate(gnd):
            ok[x["ok"], i] = True
        worst = np.lexsort((ok, -sim.T), axis=0)  # by score, then non-positives first
        m, mp = compute_map(worst, gnd, ks)
        assert got[f"mAP@{name}"] == pytest.approx(m, abs=1e-12), name
        for k, v in zip(ks, mp):
            assert got[f"mP@{k}@{name}"] == pytest.approx(v, abs=1e-12), (name, k)
        differs |= compute_map(np.lexsort((~ok, -sim.T), axis=0), gnd, ks)[0] != m
    assert differs  # the case does put positives in ties with non-positives
