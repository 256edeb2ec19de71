"""A plain dense reimplementation of the reference k-reciprocal ``re_ranking`` (Zhong et al.,
CVPR 2017; the function torchreid's ``utils/rerank.py`` and fast-reid ship), written from the
paper and the reference's documented behaviour, for tests and benchmarks. It imports nothing
of embeval.

Steps, as the reference: the (Q+G)² matrix of the given distances, squared, each column divided
by its maximum, transposed; rows argsorted (here: stable, so ties keep the lower index first);
k-reciprocal sets with the round(k1/2) expansion under the 2/3 rule; Gaussian weights
exp(-d) normalised per row; local query expansion (mean of the k2 nearest rows) when k2 != 1;
Jaccard distance 1 - Σmin / (2 - Σmin) from an inverted index; final
(1 - λ)·Jaccard + λ·distance, query rows × gallery columns. ``dtype``: the working precision
of the distances, V and the Jaccard sums (the reference, torchreid's and fast-reid's
``rerank.py``: float32; the authors' ``re_ranking_feature``: float16).
"""

from __future__ import annotations

import numpy as np

__all__ = ["re_ranking", "k_reciprocal"]


def k_reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Items j among i's k + 1 nearest (``rank`` rows: argsorted distances) with i among j's."""
    forward = rank[i, :k + 1]
    backward = rank[forward, :k + 1]
    return forward[np.where(backward == i)[0]]


def re_ranking(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int = 20,
               k2: int = 6, lambda_value: float = 0.3, dtype=np.float64,
               v_dtype=None) -> np.ndarray:
    """[Q, G] re-ranked distances (lower = better)."""
    v_dtype = v_dtype or dtype
    q = q_g_dist.shape[0]
    top = np.concatenate([q_q_dist, q_g_dist], axis=1)
    bottom = np.concatenate([q_g_dist.T, g_g_dist], axis=1)
    original = np.concatenate([top, bottom], axis=0).astype(np.float64)
    original = np.power(original, 2).astype(dtype)
    colmax = np.max(original, axis=0)
    original = np.transpose(original / np.where(colmax > 0, colmax, 1)).astype(dtype)
    n = original.shape[0]
    rank = np.argsort(original, axis=1, kind="stable")
    v = np.zeros((n, n), dtype=v_dtype)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        rec = k_reciprocal(rank, i, k1)
        expanded = rec
        for c in rec:
            cand = k_reciprocal(rank, c, half)
            if len(np.intersect1d(cand, rec)) > 2.0 / 3 * len(cand):
                expanded = np.append(expanded, cand)
        expanded = np.unique(expanded)
        weight = np.exp(-original[i, expanded])
        v[i, expanded] = weight / np.sum(weight)
    if k2 != 1:
        v = np.stack([np.mean(v[rank[i, :k2]], axis=0) for i in range(n)]).astype(v_dtype)
    jaccard = np.zeros((q, n), dtype=dtype)
    for i in range(q):
        mins = np.minimum(v[i][None, :], v).astype(dtype).sum(axis=1, dtype=dtype)
        jaccard[i] = 1 - mins / (2.0 - mins)
    final = jaccard * (1 - lambda_value) + original[:q] * lambda_value
    return final[:, q:].astype(np.float64)
