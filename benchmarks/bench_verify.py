#!/usr/bin/env python
"""Benchmark ``embeval verify`` against ``embeval cmc`` and dense scores + scikit-learn's ROC.

Uses bench_cmc.py's synthetic workload (default *decent*, 10,000 queries x 50,000 gallery x 512
dims: 5·10^8 trials), written once as embeval files, and times each contender as a WHOLE
separate process reading the same files (interpreter start, imports and loading included):

1. ``embeval verify Q G --metric inner --far 1e-6 ... 1e-1 --json``  (TAR@FAR, EER, AUC, exact)
2. ``embeval cmc Q G -k 1 5 10 --metric inner --json``  (the ranking pass over the same pairs)
3. the usual way: a child process that scores Q x G in float32 row chunks, fills one dense
   list of genuine + impostor scores and calls scikit-learn's ``roc_curve`` and
   ``roc_auc_score``. Only where its peak memory (measured on a small probe, extrapolated per
   score) fits in the available RAM; else on the largest gallery prefix that fits, beside an
   extra ``embeval verify`` run on that same prefix so the metrics can be compared.

Wall time is measured around each child; peak memory is the child's ``ru_maxrss`` (``os.wait4``).

    python benchmarks/bench_verify.py                                  # full run, minutes
    python benchmarks/bench_verify.py --queries 1000 --gallery 5000    # smoke test, seconds
    python benchmarks/bench_verify.py --out-dir /tmp/bench --json      # keep files + results

See benchmarks/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cmc import (  # noqa: E402 - the helpers live next to this file
    KS,
    WORKLOADS,
    bench_contender,
    embeval_command,
    failure,
    fmt,
    last_json,
    log,
    machine,
    measure,
    prepare,
    report_end,
    write_set,
)

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PROBE_SCORES = 5_000_000  # dense probe size used to measure the dense child's bytes per score
TARGET_RATIO = 2.5  # verify <= 2.5x cmc (issue 13)


# --------------------------------------------------------------------------- the dense child


def rss_bytes() -> int:
    """This process's current RSS (``/proc/self/statm``; peak ``ru_maxrss`` where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def step_metrics(fpr, tpr, thr, n_imp: int, fars) -> dict:
    """TAR@FAR (last ROC point with fpr <= f; skipped where n_imp * f < 1) with the highest
    threshold giving that TAR, and the EER on the ROC polyline (where FNR = FPR, interpolated
    between consecutive points) from ``roc_curve(drop_intermediate=False)`` output."""
    import numpy as np

    out: dict = {}
    for f in fars:
        if n_imp * f < 1:
            continue
        i = int(np.searchsorted(fpr, f, side="right")) - 1
        out[f"TAR@FAR={f:g}"] = float(tpr[i])
        # embeval's convention: the highest threshold reaching that TAR (the first such point)
        out[f"threshold@FAR={f:g}"] = float(thr[int(np.searchsorted(tpr, tpr[i], side="left"))])
    d = (1.0 - tpr) - fpr  # FNR - FPR: 1 at the first point, decreasing to -1
    b = int(np.argmax(d <= 0))
    if b == 0 or d[b] == 0:
        out["EER"] = float(fpr[b])
    else:
        a = d[b - 1] / (d[b - 1] - d[b])
        out["EER"] = float(fpr[b - 1] + a * (fpr[b] - fpr[b - 1]))
    return out


def run_dense(qpath: str, gpath: str, n_gallery: int | None, chunk: int, fars) -> dict:
    """Child process: dense score list + ``roc_curve`` + ``roc_auc_score``. One JSON object.

    Scores ``q @ g.T`` (float32 torch matmul) in chunks of ``chunk`` query rows; genuine scores
    (same label >= 0) go to the front and impostors to the back of ONE preallocated float32 list
    of Q x G scores (no concatenation copies). ``roc_curve(drop_intermediate=False)`` keeps
    every point so the last one with fpr <= f is the exact step TAR@FAR; the big ROC arrays are
    dropped before ``roc_auc_score`` (which sorts again). Uses the first ``n_gallery`` items.
    """
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from sklearn.metrics import roc_auc_score, roc_curve

    t1 = time.perf_counter()
    q, g = load_file(qpath), load_file(gpath)
    qe, ql = q["embeddings"].float(), q["labels"]
    ge, gl = g["embeddings"].float()[:n_gallery], g["labels"][:n_gallery]
    base_rss = rss_bytes()
    t2 = time.perf_counter()
    nq, ng = len(qe), len(ge)
    # genuine count from the label histograms: sum over known labels of #q(l) * #g(l)
    lab, cq = torch.unique(ql[ql >= 0], return_counts=True)
    known = gl[gl >= 0]
    cg = torch.zeros(len(lab), dtype=torch.int64)
    if len(lab):
        idx = torch.searchsorted(lab, known).clamp(max=len(lab) - 1)
        cg = torch.bincount(idx[lab[idx] == known], minlength=len(lab))
    n_gen = int((cq * cg).sum())
    n = nq * ng
    y_score = np.empty(n, dtype=np.float32)
    y_true = np.zeros(n, dtype=bool)
    y_true[:n_gen] = True
    gp, ip = 0, n_gen
    for a in range(0, nq, chunk):
        s = (qe[a:a + chunk] @ ge.T).numpy()  # [c, G] float32
        m = ((ql[a:a + chunk, None] == gl[None, :]) & (ql[a:a + chunk, None] >= 0)).numpy()
        gen, imp = s[m], s[~m]
        y_score[gp:gp + len(gen)] = gen
        y_score[ip:ip + len(imp)] = imp
        gp, ip = gp + len(gen), ip + len(imp)
        del s, m, gen, imp
    assert gp == n_gen and ip == n, (gp, n_gen, ip, n)
    t3 = time.perf_counter()
    fpr, tpr, thr = roc_curve(y_true, y_score, drop_intermediate=False)
    t4 = time.perf_counter()
    out = step_metrics(fpr, tpr, thr, n - n_gen, fars)
    n_points = len(fpr)
    del fpr, tpr, thr
    t5 = time.perf_counter()
    out["AUC"] = float(roc_auc_score(y_true, y_score))
    t6 = time.perf_counter()
    out.update(n_genuine=n_gen, n_impostor=n - n_gen)
    return {"metrics": out, "n_query": nq, "n_gallery": ng, "n_scores": n,
            "roc_points": n_points, "base_rss_bytes": base_rss,
            "import_s": t1 - t0, "load_s": t2 - t1, "scores_s": t3 - t2,
            "roc_curve_s": t4 - t3, "roc_auc_score_s": t6 - t5,
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- sizing the dense run


def mem_available_bytes() -> int | None:
    """``MemAvailable`` (psutil, else /proc/meminfo); None where unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def plan_dense(dense_cmd, n_query: int, n_gallery: int, frac: float) -> dict:
    """Probe the dense child on ~PROBE_SCORES scores; extrapolate its peak to Q x G.

    Returns ``{"n_gallery": G' or 0 (skip), "reason": str, ...}``: G' = the full gallery when
    ``base + bytes_per_score * Q * G <= frac * MemAvailable``, else the largest prefix that fits.
    The per-score cost is measured above the child's RSS after imports and loading; with many
    more scores than distinct float32 values the ROC arrays grow slower than linearly, so the
    extrapolation errs on the safe side.
    """
    g_probe = max(1, min(n_gallery, PROBE_SCORES // max(n_query, 1)))
    r = measure([*dense_cmd, "--dense-gallery", str(g_probe)])
    res = last_json(r.stdout) if r.rc == 0 else None
    if res is None:
        return {"n_gallery": 0, "reason": f"dense probe failed ({failure(r)})"}
    base = res["base_rss_bytes"]
    bps = max(r.peak_rss_bytes - base, 0) / res["n_scores"]
    avail = mem_available_bytes()
    plan = {"probe_gallery": g_probe, "probe_scores": res["n_scores"], "bytes_per_score": bps,
            "base_rss_bytes": base, "mem_available_bytes": avail,
            "predicted_peak_bytes": base + bps * n_query * n_gallery}
    log(f"  dense probe: {res['n_scores']:,} scores, {bps:.1f} B/score above {base / 1e9:.2f} GB;"
        f" predicted peak at {n_query} x {n_gallery}: {plan['predicted_peak_bytes'] / 1e9:.1f} GB;"
        f" available {fmt(avail and avail / 1e9, '.1f')} GB (using {frac:.0%})")
    if avail is None:
        return {**plan, "n_gallery": 0, "reason": "available memory unknown"}
    budget = frac * avail
    if plan["predicted_peak_bytes"] <= budget:
        return {**plan, "n_gallery": n_gallery, "reason": "fits"}
    g_fit = int((budget - base) / (bps * n_query)) if bps > 0 else 0
    if g_fit < 1:
        return {**plan, "n_gallery": 0,
                "reason": f"needs ~{plan['predicted_peak_bytes'] / 1e9:.0f} GB, "
                          f"{budget / 1e9:.1f} GB usable"}
    return {**plan, "n_gallery": g_fit,
            "reason": f"full size needs ~{plan['predicted_peak_bytes'] / 1e9:.0f} GB > "
                      f"{budget / 1e9:.1f} GB usable: gallery cut to its first {g_fit}"}


def gallery_prefix(gpath: Path, n: int) -> Path:
    """An embeval file with the first ``n`` items of ``gpath`` (next to it, reused)."""
    from safetensors.numpy import load_file

    out = gpath.with_name(gpath.stem + f"_first{n}.safetensors")
    if not out.exists():
        g = load_file(str(gpath))
        write_set(out, g["embeddings"][:n].copy(), g["labels"][:n].copy(),
                  {"source": "benchmarks/bench_verify.py", "normalized": "true"})
    return out


# --------------------------------------------------------------------------- report


def metrics_of(row: dict | None) -> dict:
    if not row or "error" in row:
        return {}
    m = row.get("result") or {}
    return m.get("metrics", m)


def table(workload: str, rows: list[dict], plan: dict | None, full_size: bool) -> str:
    """Plain-text table: wall, peak, ratios, metrics per contender; then diffs and targets."""
    by = {r["key"]: r for r in rows if "error" not in r}
    cmc_wall = by["cmc"]["wall_s"] if "cmc" in by else None
    dense_wall = by["dense"]["wall_s"] if "dense" in by else None
    # rows timed on the same files as the dense run (the full ones, or the gallery prefix)
    same_files = {"dense", "verify_prefix" if "verify_prefix" in by else "verify"}
    head = (f"{'contender':<40}{'wall s':>8}{'peak GB':>9}{'x cmc':>7}{'x dense':>9}{'cpu s':>8}"
            f"{'other':>7}  metrics")
    lines = [f"== workload: {workload}", head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<40}  FAILED {r['error']}")
            continue
        m = metrics_of(r)
        keys = [f"TAR@FAR={f:g}" for f in FARS] + ["EER", "AUC"] + [f"rank{k}" for k in KS]
        shown = ", ".join(f"{k.replace('TAR@FAR=', 'TAR@')} {m[k]:.4f}" for k in keys if k in m)
        x_cmc = r["wall_s"] / cmc_wall if cmc_wall and r["key"] in ("verify", "cmc") else None
        x_dense = r["wall_s"] / dense_wall if dense_wall and r["key"] in same_files else None
        lines.append(
            f"{r['name']:<40}{r['wall_s']:>8.2f}{r['peak_rss_bytes'] / 1e9:>9.2f}"
            f"{fmt(x_cmc, '.2f'):>7}{fmt(x_dense, '.2f'):>9}{r['cpu_s']:>8.1f}"
            f"{fmt(r.get('other_cpu_s'), '.1f'):>7}  {shown}")
    if plan is not None:
        lines.append(f"dense run: {plan['reason']}"
                     + (f" (probe {plan['bytes_per_score']:.1f} B/score over "
                        f"{plan['probe_scores']:,} scores)" if "bytes_per_score" in plan else ""))
    ref = by.get("verify_prefix") or by.get("verify")
    if "dense" in by and ref is not None:
        e, d = metrics_of(ref), metrics_of(by["dense"])
        keys = [k for k in e if (k.startswith(("TAR@", "threshold@")) or k in ("EER", "AUC"))
                and k in d and e[k] is not None and d[k] is not None]
        lines.append(f"|{ref['name']} - dense|: "
                     + ", ".join(f"{k} {abs(e[k] - d[k]):.2e}" for k in keys)
                     + f"; trials {e.get('n_genuine')}+{e.get('n_impostor')} vs "
                       f"{d.get('n_genuine')}+{d.get('n_impostor')}")
        dd = by["dense"]["result"]
        lines.append(f"dense phases: import {dd['import_s']:.1f} s, load {dd['load_s']:.1f} s, "
                     f"scores {dd['scores_s']:.1f} s, roc_curve {dd['roc_curve_s']:.1f} s "
                     f"({dd['roc_points']:,} points), roc_auc_score {dd['roc_auc_score_s']:.1f} s")
    busy = [r for r in by.values() if (r.get("other_cpu_s") or 0) > 0.1 * r["wall_s"]]
    if busy:
        lines.append("WARNING: other processes used the CPU during: "
                     + ", ".join(f"{r['name']} ({r['other_cpu_s']:.1f} cpu-s)" for r in busy)
                     + "; those times are inflated (rerun on an idle machine, or --repeat)")
    if "verify" in by and cmc_wall:
        ratio = by["verify"]["wall_s"] / cmc_wall
        lines.append(f"target: verify <= {TARGET_RATIO}x cmc: {ratio:.2f}x "
                     f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'}"
                     + ("" if full_size else " (not the default size: indicative only)"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--gallery", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--workloads", nargs="+", default=["decent"], choices=list(WORKLOADS))
    p.add_argument("--repeat", type=int, default=1, help="timed runs per contender (median wall)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="keep the workload files (reused when parameters match) and results.json")
    p.add_argument("--far", type=float, nargs="+", default=list(FARS), help="FARs for verify")
    p.add_argument("--skip-dense", action="store_true", help="skip the dense + sklearn contender")
    p.add_argument("--dense-chunk", type=int, default=500, help="query rows scored at once")
    p.add_argument("--dense-mem-frac", type=float, default=0.75,
                   help="share of MemAvailable the dense run may use (default 0.75)")
    p.add_argument("--embeval-args", default="",
                   help="extra options for both embeval commands, e.g. '--memory 1GB'")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    # Child entry point (the dense contender runs as a whole separate process).
    p.add_argument("--run-dense", nargs=2, metavar=("QUERY", "GALLERY"), help=argparse.SUPPRESS)
    p.add_argument("--dense-gallery", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.run_dense:
        print(json.dumps(run_dense(*args.run_dense, args.dense_gallery, args.dense_chunk,
                                   args.far)))
        return 0

    info = machine()
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:
        info["sklearn"] = "missing"
        if not args.skip_dense:
            log("error: scikit-learn is not installed; the dense contender needs it "
                "(pip install scikit-learn psutil, or run with --skip-dense)")
            return 2
    log(f"machine: {info}")
    tmp = None
    out_dir = args.out_dir
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="embeval-bench-")
        out_dir = Path(tmp)
    out_dir.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    embeval = embeval_command()
    extra = args.embeval_args.split()
    fars = [format(f, "g") for f in args.far]
    full_size = (args.queries, args.gallery, args.dim) == (10_000, 50_000, 512)
    results: dict = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                     "workloads": {}}
    try:
        for name in args.workloads:
            log(f"workload {name}")
            qp, gp = prepare(WORKLOADS[name], args.queries, args.gallery, args.dim, out_dir)

            def verify_cmd(gallery: Path, qp: Path = qp) -> list[str]:
                return [*embeval, "verify", str(qp), str(gallery), "--metric", "inner",
                        "--far", *fars, "--json", *extra]

            rows = [
                {"key": "verify", **bench_contender("embeval verify", verify_cmd(gp),
                                                    args.repeat, True)},
                {"key": "cmc", **bench_contender(
                    "embeval cmc -k 1 5 10",
                    [*embeval, "cmc", str(qp), str(gp), "-k", *map(str, KS), "--metric",
                     "inner", "--json", *extra], args.repeat, True)},
            ]
            plan = None
            if not args.skip_dense:
                dense_cmd = [*me, "--run-dense", str(qp), str(gp), "--dense-chunk",
                             str(args.dense_chunk), "--far", *fars]
                plan = plan_dense(dense_cmd, args.queries, args.gallery, args.dense_mem_frac)
                g_dense = plan["n_gallery"]
                if 0 < g_dense < args.gallery:
                    gpp = gallery_prefix(gp, g_dense)
                    rows.append({"key": "verify_prefix", **bench_contender(
                        f"embeval verify, first {g_dense} gallery", verify_cmd(gpp),
                        args.repeat, False)})
                if g_dense > 0:
                    label = ("dense + sklearn roc_curve" if g_dense == args.gallery
                             else f"dense + sklearn, first {g_dense} gallery")
                    rows.append({"key": "dense", **bench_contender(
                        label, [*dense_cmd, "--dense-gallery", str(g_dense)],
                        args.repeat, False)})
                else:
                    log(f"  dense + sklearn skipped: {plan['reason']}")
            results["workloads"][name] = {"files": [str(qp), str(gp)], "dense_plan": plan,
                                          "rows": rows}
            print(table(name, rows, plan, full_size) + "\n", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    return report_end(info, args, results, f"sklearn {info['sklearn']}",
                      f"sizes: {args.queries} queries x {args.gallery} gallery x {args.dim} dims "
                      f"({args.queries * args.gallery:,} trials); wall = median of {args.repeat} "
                      "run(s), whole process; peak = max RSS of the process; cpu s = its "
                      "user+sys; other = cpu-s used by other processes meanwhile")

if __name__ == "__main__":
    sys.exit(main())
