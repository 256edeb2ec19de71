"""``cmc --protocol roxford --qe alpha`` / ``--dba`` (issue 23): the expanded embeddings, then
the three settings.

Checked (1) through the command line against each setting's own ``--relevance`` list run with
``--ap trapezoid`` and the same expansion, and (2) against oracles written here: dirtorch's
``expand_descriptors`` formula (dirtorch/test_dir.py of naver/dirtorch: sim = q·g, its k best
database items, mean of [q, g_j·sim_j^α], L2-normalised) for α-QE, embeval's documented DBA
weights (K − r)/K (Gordo et al.), then revisitop's ``compute_map`` (:mod:`helpers.revisitop`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.cli import cli
from helpers.revisitop import SETTINGS, compute_map, gnd_of

import embeval


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def data(seed: int = 3, nq: int = 10, ng: int = 60, d: int = 8):
    rng = np.random.default_rng(seed)
    g = unit(rng.standard_normal((ng, d))).astype(np.float32)
    q = unit(g[rng.integers(0, ng, nq)] + 0.4 * rng.standard_normal((nq, d))).astype(np.float32)
    kind = np.where(rng.random((nq, ng)) < 0.25, rng.integers(0, 3, (nq, ng)), -1)
    return q, g, kind


def dirtorch_aqe(q: np.ndarray, db: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """expand_descriptors(q, db=db, alpha, k), float64, with cosine similarities (equal to its
    q·db on unit rows; embeval's DBA rows are weighted means, not re-normalised, and its
    cosine QE weights them by their cosine)."""
    sim = unit(q) @ unit(db).T
    out = np.zeros_like(q)
    for i in range(len(q)):
        idx = np.argsort(-sim[i])[:k]
        assert (sim[i, idx] > 0).all()  # where embeval's max(s, 0)^α and dirtorch's s^α agree
        new = np.mean(np.vstack([q[i], *(db[j] * sim[i, j] ** alpha for j in idx)]), axis=0)
        out[i] = new / np.linalg.norm(new)
    return out


def dba(db: np.ndarray, k: int) -> np.ndarray:
    """Each item: Σ_r (K − r)/K · its r-th best item (itself first) / Σ weights."""
    sim = db @ db.T
    w = (k - np.arange(k)) / k
    out = np.zeros_like(db)
    for i in range(len(db)):
        idx = np.argsort(-sim[i], kind="stable")[:k]
        out[i] = (w[:, None] * db[idx]).sum(0) / w.sum()
    return out


def oracle(q: np.ndarray, g: np.ndarray, kind: np.ndarray, ks, *, k: int, alpha: float,
           dba_k: int | None) -> dict[str, float]:
    q, g = q.astype(np.float64), g.astype(np.float64)
    if dba_k is not None:
        g = dba(g, dba_k)
    qx = dirtorch_aqe(q, g, k, alpha)
    sim = unit(qx) @ unit(g).T  # cosine
    gaps = np.diff(np.sort(sim, axis=1), axis=1)
    assert gaps.min() > 1e-5  # no near-ties: float32 and float64 rank alike
    ranks = np.argsort(-sim.T, axis=0)
    out = {}
    for name in SETTINGS:
        m, mp = compute_map(ranks, gnd_of(kind, name), ks)
        out[f"mAP@{name}"] = m
        out.update({f"mP@{kk}@{name}": float(v) for kk, v in zip(ks, mp)})
    return out


@pytest.mark.parametrize("dba_k", [None, 4])
def test_protocol_with_alpha_qe_and_dba(capsys, tmp_path, dba_k) -> None:
    q, g, kind = data()
    qf = embeval.save(tmp_path / "q.safetensors", q, np.zeros(len(q), dtype=np.int64))
    gf = embeval.save(tmp_path / "g.safetensors", g, np.zeros(len(g), dtype=np.int64))
    names = {0: "easy", 1: "hard", 2: "junk"}
    lines = ["query,gallery,kind"] + [f"{i},{j},{names[int(kind[i, j])]}"
                                      for i, j in zip(*np.nonzero(kind >= 0))]
    (tmp_path / "gt.csv").write_text("\n".join(lines) + "\n")
    expand = ["--qe", "alpha", "--qe-k", "3", "--qe-alpha", "3",
              *(["--dba", str(dba_k)] if dba_k else [])]
    common = [qf, gf, "--metric", "cosine", "-k", "1", "5", "--device", "cpu", "--json", *expand]
    rc, out, err = cli(capsys, "cmc", *common, "--protocol", "roxford", "--relevance",
                       tmp_path / "gt.csv")
    assert rc == 0, err
    got = json.loads(out)
    metrics = got["metrics"]
    assert got["rerank"]["qe"] == "alpha" and got["rerank"].get("dba") == dba_k
    want = oracle(q, g, kind, [1, 5], k=3, alpha=3.0, dba_k=dba_k)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    # each setting's own relevance list, --ap trapezoid, the same expansion: the same mAP
    code = {"easy": 0, "hard": 1, "junk": 2}
    for name, (pos, ign) in SETTINGS.items():
        rows = ["query,gallery,relevance"]
        for i, j in zip(*np.nonzero(kind >= 0)):
            k = int(kind[i, j])
            if k in [code[x] for x in pos]:
                rows.append(f"{i},{j},1")
            elif k in [code[x] for x in ign]:
                rows.append(f"{i},{j},-1")
        rel = tmp_path / f"{name}.csv"
        rel.write_text("\n".join(rows) + "\n")
        rc, out, err = cli(capsys, "cmc", *common, "--relevance", rel, "--ap", "trapezoid")
        assert rc == 0, err
        assert json.loads(out)["metrics"]["mAP"] == metrics[f"mAP@{name}"], name


def test_k_reciprocal_still_refused_with_the_protocol(capsys, tmp_path) -> None:
    q, g, _ = data(nq=2, ng=5)
    qf = embeval.save(tmp_path / "q.safetensors", q, np.zeros(len(q), dtype=np.int64))
    gf = embeval.save(tmp_path / "g.safetensors", g, np.zeros(len(g), dtype=np.int64))
    (tmp_path / "gt.csv").write_text("query,gallery,kind\n0,0,easy\n")
    rc, _, err = cli(capsys, "cmc", qf, gf, "--protocol", "roxford", "--relevance",
                     tmp_path / "gt.csv", "--rerank", "k-reciprocal", "--metric", "euclid")
    assert rc == 2 and "--rerank: not with --protocol" in err and len(err.strip().splitlines()) == 1
