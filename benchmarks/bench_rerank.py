#!/usr/bin/env python
"""Benchmark ``embeval cmc --rerank k-reciprocal`` against a dense re-ranking, and alone at scale.

Uses bench_cmc.py's synthetic workload (*decent*) written as embeval files, and runs each
contender as a WHOLE separate process (interpreter start, imports, loading included), the
contenders interleaved run by run (so a busy spell on the shared machine hits both):

1. ``embeval cmc Q G --rerank k-reciprocal --metric euclid -k 1 --json``
2. a dense k-reciprocal re-ranking written in this file from the paper (Zhong et al., CVPR
   2017): the (Q+G)² Euclidean distance matrix, squared and normalised by each column's
   maximum, argsorted rows, k-reciprocal sets with the round(k1/2) expansion under the 2/3
   rule, Gaussian weights, local query expansion over k2 rows, Jaccard distance from an
   inverted index, then (1 − λ)·Jaccard + λ·distance; mAP / rank-1 from the dense [Q, G]
   result. float32, as the authors' code.

Then ``embeval`` alone at the issue's target size (``--big``, default 20,000 × 50,000 × 512),
where the dense matrices (70,000² float32 = 19.6 GB each) do not fit.

    python benchmarks/bench_rerank.py                                    # 2000 x 6000 + big
    python benchmarks/bench_rerank.py --queries 500 --gallery 1500 --big 0 0   # smoke test

Wall time around each child, peak memory from ``os.wait4`` (``ru_maxrss``). See README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cmc import (  # noqa: E402 - the helpers live next to this file
    WORKLOADS,
    embeval_command,
    failure,
    fmt,
    last_json,
    log,
    machine,
    measure,
    prepare,
    report_end,
)

K1, K2, LAMBDA = 20, 6, 0.3


# --------------------------------------------------------------------------- the dense child


def dense_rerank(dist, n_query: int, k1: int, k2: int, lam: float):
    """[Q, G] re-ranked distances from the [N, N] float32 distance matrix of queries ∪ gallery."""
    import numpy as np

    e = np.square(dist, dtype=np.float32)
    e /= np.maximum(e.max(axis=0), np.float32(1e-30))
    e = np.ascontiguousarray(e.T)
    n = e.shape[0]
    near = np.argsort(e, axis=1, kind="stable")[:, :k1 + 1]  # all that the sets need
    half = int(np.around(k1 / 2.0))

    def mutual(i: int, k: int):
        cand = near[i, :k + 1]
        return cand[(near[cand, :k + 1] == i).any(axis=1)]

    v = np.zeros((n, n), np.float32)
    for i in range(n):
        r = mutual(i, k1)
        grown = [r]
        for c in r:
            h = mutual(int(c), half)
            if len(np.intersect1d(h, r)) > 2.0 / 3 * len(h):
                grown.append(h)
        s = np.unique(np.concatenate(grown))
        w = np.exp(-e[i, s])
        v[i, s] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[near[i, :k2]].mean(axis=0) for i in range(n)])
    support = [np.flatnonzero(v[:, x]) for x in range(n)]  # inverted index: rows using item x
    final = np.empty((n_query, n - n_query), np.float32)
    for i in range(n_query):
        m = np.zeros(n, np.float32)
        for x in np.flatnonzero(v[i]):
            rows = support[x]
            m[rows] += np.minimum(v[i, x], v[rows, x])
        jac = 1 - m / (2 - m)
        final[i] = (1 - lam) * jac[n_query:] + lam * e[i, n_query:]
    return final


def run_dense(qpath: str, gpath: str) -> dict:
    """Child: Euclidean distances, the dense re-ranking, mAP / rank-1. One JSON object."""
    t0 = time.perf_counter()
    import numpy as np
    from safetensors.numpy import load_file

    q, g = load_file(qpath), load_file(gpath)
    x = np.concatenate([q["embeddings"], g["embeddings"]]).astype(np.float32)
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * (x @ x.T)
    np.sqrt(np.maximum(d, 0, out=d), out=d)
    t1 = time.perf_counter()
    final = dense_rerank(d, len(q["labels"]), K1, K2, LAMBDA)
    del d
    t2 = time.perf_counter()
    ql, gl = q["labels"], g["labels"]
    aps, first = [], []
    for i in range(len(ql)):
        match = gl[np.argsort(final[i], kind="stable")] == ql[i]
        hits = np.flatnonzero(match)
        if len(hits):
            aps.append(float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1))))
            first.append(int(hits[0]))
    return {"mAP": float(np.mean(aps)), "rank1": float(np.mean(np.array(first) == 0)),
            "distances_s": t1 - t0, "rerank_s": t2 - t1}


# --------------------------------------------------------------------------- the parent


def embeval_cmd(qp: Path, gp: Path) -> list[str]:
    return [*embeval_command(), "cmc", str(qp), str(gp), "--rerank", "k-reciprocal",
            "--metric", "euclid", "-k", "1", "--json"]


def metrics_of(run_stdout: str) -> dict:
    m = last_json(run_stdout) or {}
    return m.get("metrics", m)


def compare(qp: Path, gp: Path, repeat: int) -> list[dict]:
    """Both contenders, interleaved ``repeat`` times; the median wall time of each."""
    cmds = {"embeval --rerank": embeval_cmd(qp, gp),
            "dense numpy re-ranking": [sys.executable, __file__, "--child-dense", str(qp), str(gp)]}
    runs: dict[str, list] = {k: [] for k in cmds}
    log("    embeval --rerank: warm-up (untimed: numba compiles and caches its kernels)")
    measure(cmds["embeval --rerank"])
    for i in range(repeat):
        for name, cmd in cmds.items():
            r = measure(cmd)
            log(f"    {name}: run {i + 1}/{repeat}: {r.wall_s:.1f} s, "
                f"{r.peak_rss_bytes / 1e9:.2f} GB" + ("" if r.rc == 0 else f" FAILED {failure(r)}"))
            runs[name].append(r)
    rows = []
    for name, rs in runs.items():
        ok = [r for r in rs if r.rc == 0]
        if not ok:
            rows.append({"name": name, "cmd": cmds[name], "error": failure(rs[-1])})
            continue
        med = sorted(ok, key=lambda r: r.wall_s)[len(ok) // 2]
        rows.append({"name": name, "cmd": cmds[name], "wall_s": med.wall_s,
                     "wall_all_s": [r.wall_s for r in ok],
                     "peak_rss_bytes": max(r.peak_rss_bytes for r in ok),
                     "other_cpu_s": med.other_cpu_s, "result": metrics_of(ok[-1].stdout)})
    return rows


def table(title: str, rows: list[dict]) -> str:
    head = (f"{'contender':<26}{'wall s':>9}{'peak GB':>9}{'x dense':>9}{'other':>8}"
            f"{'rank1':>9}{'mAP':>11}")
    lines = [f"== {title}", head, "-" * len(head)]
    dense = next((r for r in rows if r["name"].startswith("dense") and "wall_s" in r), None)
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<26}  FAILED {r['error']}")
            continue
        m = r["result"]
        ratio = r["wall_s"] / dense["wall_s"] if dense else None
        lines.append(f"{r['name']:<26}{r['wall_s']:>9.1f}{r['peak_rss_bytes'] / 1e9:>9.2f}"
                     f"{fmt(ratio, '.2f'):>9}{fmt(r.get('other_cpu_s'), '.0f'):>8}"
                     f"{fmt(m.get('rank1'), '.4f'):>9}{fmt(m.get('mAP'), '.6f'):>11}")
    ok = [r for r in rows if "error" not in r]
    if len(ok) == 2:
        a, b = (r["result"] for r in ok)
        lines.append(f"|embeval - dense|: rank1 {abs(a['rank1'] - b['rank1']):.2e}, "
                     f"mAP {abs(a['mAP'] - b['mAP']):.2e} (float32 reference vs float64: "
                     "expect ≲ 1e-4; exact ties break differently)")
    busy = [r for r in ok if (r.get("other_cpu_s") or 0) > 0.1 * r["wall_s"]]
    if busy:
        lines.append("WARNING: other processes used the CPU during " + ", ".join(
            f"{r['name']} ({r['other_cpu_s']:.0f} cpu-s)" for r in busy) + ": times inflated")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--gallery", type=int, default=6000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--big", type=int, nargs=2, default=(20_000, 50_000), metavar=("Q", "G"),
                   help="embeval alone at this size (0 0: skip)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-dense", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_dense:
        print(json.dumps(run_dense(*args.child_dense)))
        return 0
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_rerank_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    w = WORKLOADS["decent"]
    results: dict = {"machine": machine()}
    qp, gp = prepare(w, args.queries, args.gallery, args.dim, out_dir)
    rows = compare(qp, gp, args.repeat)
    results["compare"] = rows
    print(table(f"decent {args.queries} x {args.gallery} x {args.dim}, k1 {K1} k2 {K2} "
                f"lambda {LAMBDA}", rows))
    bq, bg = args.big
    if bq and bg:
        qp, gp = prepare(w, bq, bg, args.dim, out_dir)
        r = measure(embeval_cmd(qp, gp))
        row = ({"name": "embeval --rerank", "error": failure(r)} if r.rc else
               {"name": "embeval --rerank", "cmd": embeval_cmd(qp, gp), "wall_s": r.wall_s,
                "peak_rss_bytes": r.peak_rss_bytes, "other_cpu_s": r.other_cpu_s,
                "result": metrics_of(r.stdout)})
        results["big"] = row
        print(table(f"decent {bq} x {bg} x {args.dim} (embeval alone; target: peak < 3 GB)",
                    [row]))
    return report_end(results["machine"], args, results, "dense: numpy",
                      "sizes: dense matrices (Q+G)² float32 ×3 (distances, V, expanded V) "
                      "+ int64 argsort; the machine is shared: times are noisy")


if __name__ == "__main__":
    sys.exit(main())
