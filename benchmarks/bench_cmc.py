#!/usr/bin/env python
"""Benchmark ``embeval cmc`` against faiss-cpu top-10 search and a full-matrix + argsort evaluator.

Builds synthetic clustered workloads (default 10,000 queries x 50,000 gallery x 512 dims) once,
writes them as embeval files (safetensors), then times each contender as a WHOLE separate process
reading the same files from disk (interpreter start, imports and file loading included):

1. ``embeval cmc Q G -k 1 5 10 --metric inner --json``  (rank-1/5/10 + mAP + mINP, exact)
2. faiss ``IndexFlatIP`` exact top-10 search of every query (all cores, faiss's default)
3. full Q x G score matrix (one matmul) + ``torch.argsort`` per row, CMC / mAP / mINP the
   usual torchreid way (row chunks of the sorted matrix, vectorised)

Wall time is measured around each child process; peak memory is the child's ``ru_maxrss``
(``os.wait4``, the same number ``/usr/bin/time -v`` prints as "Maximum resident set size").

    python benchmarks/bench_cmc.py                                   # full run, a few minutes
    python benchmarks/bench_cmc.py --queries 1000 --gallery 5000     # smoke test
    python benchmarks/bench_cmc.py --out-dir /tmp/bench --json       # keep files + results

See benchmarks/README.md for the workloads and how to read the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KS = (1, 5, 10)


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """A synthetic clustered embedding set: identities with random unit centres in R^D.

    Every item is ``normalize(centre[label] + sigma * z)`` with ``z ~ N(0, I/D)`` (so
    ``|z| ~= 1``): ``sigma`` is the noise-to-signal norm ratio. A fraction ``hard_gallery_frac``
    of gallery items gets ``hard_gallery_sigma`` instead (near-random embeddings: blurred,
    occluded, mislabelled images), which pushes the hardest positive of most queries below
    most negatives. Labels are balanced: ``n_ids = round(n_gallery / gallery_per_id)``.
    """

    name: str
    gallery_per_id: float
    sigma_query: float
    sigma_gallery: float
    hard_gallery_frac: float = 0.0
    hard_gallery_sigma: float = 0.0
    seed: int = 0
    note: str = ""


# Tuned with the argsort evaluator of this file on the full 10,000 x 50,000 x 512 size.
WORKLOADS = {
    # 3000 identities, ~16.7 gallery items and ~3.3 queries each (Market-1501-like shape).
    "decent": Workload(
        "decent", gallery_per_id=50_000 / 3000, sigma_query=2.48, sigma_gallery=2.48, seed=1,
        note="measured at 10k x 50k x 512: rank1 0.825, rank5 0.971, mAP 0.342, "
        "mINP 0.0126; 9.6% of negatives (median 6.0%) score above the hardest positive",
    ),
    # Same identities, noisier model, plus 20% near-random gallery items.
    "poor": Workload(
        "poor", gallery_per_id=50_000 / 3000, sigma_query=2.82, sigma_gallery=2.82,
        hard_gallery_frac=0.2, hard_gallery_sigma=10.0, seed=2,
        note="measured at 10k x 50k x 512: rank1 0.414, rank5 0.714, mAP 0.1015, "
        "mINP 0.0009; 54% of negatives (median 54%) score above the hardest positive",
    ),
}


def generate(w: Workload, n_query: int, n_gallery: int, dim: int):
    """Return ``(q [Nq,D] float32, q_labels [Nq] int64, g [Ng,D] float32, g_labels [Ng] int64)``.

    Every identity has ``>= 1`` gallery item (labels are ``arange % n_ids``, shuffled, and
    ``n_ids <= n_gallery``), so every query has positives. Deterministic for a given seed.
    """
    import numpy as np

    rng = np.random.default_rng(w.seed)
    n_ids = max(1, min(n_gallery, round(n_gallery / w.gallery_per_id)))

    def unit(x):
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        return x

    centres = unit(rng.standard_normal((n_ids, dim), dtype=np.float32))

    def items(n: int, sigma: float, hard_frac: float, hard_sigma: float):
        labels = rng.permutation(np.arange(n, dtype=np.int64) % n_ids)
        s = np.full((n, 1), sigma, dtype=np.float32)
        if hard_frac > 0:
            s[rng.random(n) < hard_frac] = hard_sigma
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x *= s / np.float32(np.sqrt(dim))
        x += centres[labels]
        return unit(x), labels

    g, gl = items(n_gallery, w.sigma_gallery, w.hard_gallery_frac, w.hard_gallery_sigma)
    q, ql = items(n_query, w.sigma_query, 0.0, 0.0)
    return q, ql, g, gl


def write_set(path: Path, emb, labels, meta: dict[str, str]) -> None:
    """Write an embeval file: with ``embeval.data.store.save`` when importable, else safetensors."""
    try:
        import torch

        from embeval.data.store import save
    except ImportError:
        from safetensors.numpy import save_file

        save_file({"embeddings": emb, "labels": labels}, str(path),
                  metadata={"embeval.format": "1", **meta})
    else:
        save(path, torch.from_numpy(emb), torch.from_numpy(labels), metadata=meta)


def prepare(w: Workload, n_query: int, n_gallery: int, dim: int, out_dir: Path) -> tuple[Path, Path]:
    """Generate the workload into ``out_dir`` (reused when files with the same parameters exist)."""
    from safetensors import safe_open

    stem = f"{w.name}_{n_query}x{n_gallery}x{dim}"
    qp, gp = out_dir / f"{stem}_query.safetensors", out_dir / f"{stem}_gallery.safetensors"
    params = json.dumps({**asdict(w), "n_query": n_query, "n_gallery": n_gallery, "dim": dim},
                        sort_keys=True)
    if qp.exists() and gp.exists():
        try:
            with safe_open(str(qp), "np") as a, safe_open(str(gp), "np") as b:
                if a.metadata().get("bench.params") == params == b.metadata().get("bench.params"):
                    return qp, gp
        except Exception:  # noqa: BLE001 - anything unreadable is regenerated
            pass
    t = time.perf_counter()
    q, ql, g, gl = generate(w, n_query, n_gallery, dim)
    meta = {"source": "benchmarks/bench_cmc.py", "normalized": "true", "bench.params": params}
    write_set(gp, g, gl, meta)
    write_set(qp, q, ql, meta)
    log(f"  generated {w.name}: {n_query} x {n_gallery} x {dim}, "
        f"{len(set(gl.tolist()))} ids ({time.perf_counter() - t:.1f} s) -> {out_dir}")
    return qp, gp


# --------------------------------------------------------------------------- contenders (children)


def run_faiss(qpath: str, gpath: str, k: int) -> dict:
    """Child process: faiss IndexFlatIP exact top-k of every query. Prints one JSON object."""
    t0 = time.perf_counter()
    import numpy as np
    from safetensors.numpy import load_file

    try:
        import faiss
    except ImportError:
        sys.exit("faiss is not installed: pip install faiss-cpu  (or: pip install -e '.[bench]')")
    t1 = time.perf_counter()
    q, g = load_file(qpath), load_file(gpath)
    qe = np.ascontiguousarray(q["embeddings"], dtype=np.float32)
    ge = np.ascontiguousarray(g["embeddings"], dtype=np.float32)
    t2 = time.perf_counter()
    index = faiss.IndexFlatIP(ge.shape[1])
    index.add(ge)
    t3 = time.perf_counter()
    _, ids = index.search(qe, k)
    t4 = time.perf_counter()
    hit = g["labels"][ids] == q["labels"][:, None]  # [Q, k]
    first = np.where(hit.any(1), hit.argmax(1), k)  # 0-based first-hit position, k = none
    out = {f"rank{r}": float((first < r).mean()) for r in KS if r <= k}
    out.update(import_s=t1 - t0, load_s=t2 - t1, add_s=t3 - t2, search_s=t4 - t3,
               threads=faiss.omp_get_max_threads())
    return out


def run_argsort(qpath: str, gpath: str, chunk: int) -> dict:
    """Child process: full score matrix + argsort per row; CMC / mAP / mINP. One JSON object.

    The usual evaluator (torchreid's ``eval_func``, vectorised): ``order = argsort(-scores)``,
    ``matches = g_labels[order] == q_label``; first-hit rank from the first match, AP from the
    cumulative sum of matches, INP = P / (rank of the last match). Rows are processed in chunks
    of ``chunk`` queries so only the score matrix (Q x G float32) is held whole. Ties between
    scores are broken by the sort order (torchreid's behaviour), not pessimistically.
    """
    t0 = time.perf_counter()
    import torch
    from safetensors.torch import load_file

    t1 = time.perf_counter()
    q, g = load_file(qpath), load_file(gpath)
    qe, ql = q["embeddings"].float(), q["labels"]
    ge, gl = g["embeddings"].float(), g["labels"]
    t2 = time.perf_counter()
    scores = qe @ ge.T  # [Q, G], the whole matrix
    t3 = time.perf_counter()
    nq, ng = scores.shape
    first = torch.empty(nq, dtype=torch.int64)
    ap = torch.zeros(nq, dtype=torch.float64)
    inp = torch.zeros(nq, dtype=torch.float64)
    surv = torch.zeros(nq, dtype=torch.float64)
    npos = torch.zeros(nq, dtype=torch.int64)
    t_sort = 0.0
    for a in range(0, nq, chunk):
        b = min(a + chunk, nq)
        ts = time.perf_counter()
        order = torch.argsort(scores[a:b], dim=1, descending=True)
        t_sort += time.perf_counter() - ts
        matches = gl[order] == ql[a:b, None]  # [n, G] bool
        del order
        p = matches.sum(1)
        first[a:b] = matches.to(torch.uint8).argmax(1)
        last = ng - 1 - matches.flip(1).to(torch.uint8).argmax(1)
        cum = matches.cumsum(1)
        row, col = matches.nonzero(as_tuple=True)
        prec = cum[row, col].double() / (col + 1).double()
        ap[a:b] = torch.zeros(b - a, dtype=torch.float64).index_add_(0, row, prec) / p.clamp(min=1)
        inp[a:b] = p.double() / (last + 1).double()
        surv[a:b] = (last + 1 - p).double() / (ng - p).clamp(min=1).double()
        npos[a:b] = p
        del matches, cum, row, col, prec
    t4 = time.perf_counter()
    valid = npos > 0
    out = {f"rank{r}": float((first[valid] < r).double().mean()) for r in KS}
    out.update(mAP=float(ap[valid].mean()), mINP=float(inp[valid].mean()),
               n_valid=int(valid.sum()), positives_per_query=float(npos[valid].double().mean()),
               survivors_mean=float(surv[valid].mean()),
               survivors_median=float(surv[valid].median()),
               import_s=t1 - t0, load_s=t2 - t1, matmul_s=t3 - t2, sort_s=t_sort,
               rank_s=t4 - t3, threads=torch.get_num_threads())
    return out


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    wall_s: float
    peak_rss_bytes: int
    cpu_s: float
    other_cpu_s: float | None
    rc: int
    stdout: str
    stderr: str


def busy_cpu_s() -> float | None:
    """CPU-seconds the whole machine has been busy (``/proc/stat``), None where unavailable."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = f[0] + f[1] + f[2] + sum(f[5:8])  # user nice system irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def measure(cmd: list[str]) -> Run:
    """Run ``cmd`` as a whole process; wall time around it, peak RSS and CPU from ``wait4``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0, t = busy_cpu_s(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        wall, busy1 = time.perf_counter() - t, busy_cpu_s()
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped
        cpu = ru.ru_utime + ru.ru_stime
        other = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - cpu)
        out.seek(0)
        err.seek(0)
        return Run(wall, ru.ru_maxrss * 1024, cpu, other, proc.returncode,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def last_json(text: str) -> dict | None:
    """The last line of ``text`` that parses as a JSON object (the contender's result)."""
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except ValueError:
        return None


def embeval_command() -> list[str]:
    """The installed console script next to this interpreter (not a pyenv shim), else -m."""
    exe = Path(sys.executable).parent / "embeval"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("embeval")
    return [found] if found else [sys.executable, "-m", "embeval"]


def bench_contender(name: str, cmd: list[str], repeat: int, warm: bool) -> dict:
    """Time ``cmd`` ``repeat`` times (after one untimed warm-up run when ``warm``)."""
    if warm:
        log(f"    {name}: warm-up (untimed)")
        w = measure(cmd)
        if w.rc != 0:
            return {"name": name, "cmd": cmd, "error": failure(w)}
    runs = []
    for i in range(repeat):
        r = measure(cmd)
        log(f"    {name}: run {i + 1}/{repeat}: {r.wall_s:.2f} s, {r.peak_rss_bytes / 1e9:.2f} GB"
            + ("" if r.other_cpu_s is None else f", other processes {r.other_cpu_s:.1f} cpu-s")
            + ("" if r.rc == 0 else f"  FAILED rc={r.rc}"))
        if r.rc != 0:
            return {"name": name, "cmd": cmd, "error": failure(r)}
        runs.append(r)
    median = sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]
    return {
        "name": name, "cmd": cmd,
        "wall_s": median.wall_s, "wall_all_s": [r.wall_s for r in runs],
        "peak_rss_bytes": max(r.peak_rss_bytes for r in runs),
        "cpu_s": median.cpu_s, "other_cpu_s": median.other_cpu_s,
        "result": last_json(runs[-1].stdout),
    }


def failure(r: Run) -> str:
    tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
    return f"rc={r.rc}: " + " | ".join(tail)


# --------------------------------------------------------------------------- report


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    import numpy
    import torch

    info = {
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": platform.processor() or platform.machine(),
        "python": platform.python_version(), "numpy": numpy.__version__,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["ram_gb"] = round(mem_kb / 2**20, 1)
    except OSError:
        pass
    for mod in ("faiss", "numba", "embeval"):
        try:
            info[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            info[mod] = "missing"
    return info


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(workload: str, rows: list[dict], targets: dict | None) -> str:
    """A plain-text table: one line per contender, then agreement and target checks."""
    faiss_wall = next((r["wall_s"] for r in rows if r["key"] == "faiss" and "wall_s" in r), None)
    head = (f"{'contender':<34}{'wall s':>8}{'peak GB':>9}{'x faiss':>9}{'cpu s':>8}{'other':>7}"
            f"{'rank1':>9}{'rank5':>9}{'rank10':>9}{'mAP':>10}{'mINP':>10}")
    lines = [f"== workload: {workload}", head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<34}  FAILED {r['error']}")
            continue
        m = r.get("result") or {}
        m = m.get("metrics", m)
        ratio = r["wall_s"] / faiss_wall if faiss_wall else None
        lines.append(
            f"{r['name']:<34}{r['wall_s']:>8.2f}{r['peak_rss_bytes'] / 1e9:>9.2f}"
            f"{fmt(ratio, '.2f'):>9}{r['cpu_s']:>8.1f}{fmt(r.get('other_cpu_s'), '.1f'):>7}"
            + "".join(f"{fmt(m.get(f'rank{k}'), '.4f'):>9}" for k in KS)
            + f"{fmt(m.get('mAP'), '.6f'):>10}{fmt(m.get('mINP'), '.6f'):>10}")
    by = {r["key"]: r for r in rows if "error" not in r}
    if "embeval" in by and "argsort" in by:
        e = by["embeval"]["result"].get("metrics", {})
        a = by["argsort"]["result"]
        diffs = {k: abs(e[k] - a[k]) for k in [f"rank{k}" for k in KS] + ["mAP", "mINP"]
                 if k in e and k in a}
        lines.append("|embeval - argsort|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if "argsort" in by:
        a = by["argsort"]["result"]
        lines.append(
            f"workload: {a['positives_per_query']:.1f} positives/query; negatives scoring above the "
            f"hardest positive: mean {a['survivors_mean']:.1%}, median {a['survivors_median']:.1%}; "
            f"argsort phases: matmul {a['matmul_s']:.1f} s, argsort {a['sort_s']:.1f} s, "
            f"ranking {a['rank_s']:.1f} s")
    if "faiss" in by:
        f = by["faiss"]["result"]
        lines.append(f"faiss phases: import {f['import_s']:.2f} s, load {f['load_s']:.2f} s, "
                     f"add {f['add_s']:.2f} s, search {f['search_s']:.2f} s "
                     f"({f['threads']} threads)")
    busy = [r for r in by.values() if (r.get("other_cpu_s") or 0) > 0.1 * r["wall_s"]]
    if busy:
        lines.append("WARNING: other processes used the CPU during: "
                     + ", ".join(f"{r['name']} ({r['other_cpu_s']:.1f} cpu-s)" for r in busy)
                     + "; those times are inflated (rerun on an idle machine, or --repeat)")
    if targets and "embeval" in by and faiss_wall:
        ratio = by["embeval"]["wall_s"] / faiss_wall
        gb = by["embeval"]["peak_rss_bytes"] / 1e9
        ok_t, ok_m = ratio <= targets["ratio"], gb < targets["peak_gb"]
        lines.append(f"target: embeval <= {targets['ratio']}x faiss: {ratio:.2f}x "
                     f"{'PASS' if ok_t else 'FAIL'}; peak < {targets['peak_gb']} GB: "
                     f"{gb:.2f} GB {'PASS' if ok_m else 'FAIL'}")
    return "\n".join(lines)


TARGETS = {"decent": {"ratio": 1.5, "peak_gb": 2.5}, "poor": {"ratio": 3.0, "peak_gb": 2.5}}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--gallery", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--repeat", type=int, default=1, help="timed runs per contender (median wall)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="keep the workload files (reused when parameters match) and results.json")
    p.add_argument("--skip-argsort", action="store_true", help="skip the full-matrix evaluator")
    p.add_argument("--argsort-chunk", type=int, default=1000, help="query rows sorted at once")
    p.add_argument("--embeval-args", default="",
                   help="extra options for embeval cmc, e.g. '--memory 1GB'")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    # Child entry points (each contender runs as a whole separate process).
    p.add_argument("--run-faiss", nargs=2, metavar=("QUERY", "GALLERY"), help=argparse.SUPPRESS)
    p.add_argument("--run-argsort", nargs=2, metavar=("QUERY", "GALLERY"), help=argparse.SUPPRESS)
    p.add_argument("-k", type=int, default=max(KS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.run_faiss:
        print(json.dumps(run_faiss(*args.run_faiss, args.k)))
        return 0
    if args.run_argsort:
        print(json.dumps(run_argsort(*args.run_argsort, args.argsort_chunk)))
        return 0

    try:
        import faiss  # noqa: F401
    except ImportError:
        log("error: faiss is not installed; the benchmark compares against it. "
            "Install it with: pip install faiss-cpu psutil   (or: pip install -e '.[bench]')")
        return 2

    info = machine()
    log(f"machine: {info}")
    tmp = None
    out_dir = args.out_dir
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="embeval-bench-")
        out_dir = Path(tmp)
    out_dir.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    embeval = embeval_command()
    results: dict = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                     "workloads": {}}
    tables = []
    full_size = (args.queries, args.gallery, args.dim) == (10_000, 50_000, 512)
    try:
        for name in args.workloads:
            w = WORKLOADS[name]
            log(f"workload {name}: {asdict(w)}")
            qp, gp = prepare(w, args.queries, args.gallery, args.dim, out_dir)
            contenders = [
                ("faiss", "faiss IndexFlatIP top-10", [*me, "--run-faiss", str(qp), str(gp)], True),
                ("embeval", "embeval cmc -k 1 5 10",
                 [*embeval, "cmc", str(qp), str(gp), "-k", *map(str, KS), "--metric", "inner",
                  "--json", *args.embeval_args.split()], True),
                ("startup", "embeval --help (startup only)", [*embeval, "--help"], False),
            ]
            if not args.skip_argsort:
                contenders.append(("argsort", "full matrix + argsort",
                                   [*me, "--run-argsort", str(qp), str(gp),
                                    "--argsort-chunk", str(args.argsort_chunk)], False))
            rows = []
            for key, label, cmd, warm in contenders:
                rows.append({"key": key, **bench_contender(label, cmd, args.repeat, warm)})
            results["workloads"][name] = {"params": asdict(w), "files": [str(qp), str(gp)],
                                          "rows": rows}
            tables.append(table(name, rows, TARGETS.get(name) if full_size else None))
            print(tables[-1] + "\n", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    return report_end(info, args, results, f"faiss {info['faiss']}",
                      f"sizes: {args.queries} queries x {args.gallery} gallery x {args.dim} dims; "
                      f"wall = median of {args.repeat} run(s), whole process; peak = max RSS of "
                      "the process; cpu s = the process's user+sys; other = cpu-s used by other "
                      "processes meanwhile")


def report_end(info: dict, args: argparse.Namespace, results: dict, library: str,
               sizes: str) -> int:
    """The closing lines of a benchmark: the machine (with ``library``, e.g. "faiss 1.8"), the
    sizes note; then results.json in ``--out-dir`` and the ``--json`` line. Returns 0."""
    print(f"machine: {info['cpu_count']} cores ({info['cpus_usable']} usable), {info['cpu_model']}, "
          f"{info.get('ram_gb', '?')} GB RAM; python {info['python']}, torch {info['torch']} "
          f"({info['torch_threads']} threads), numpy {info['numpy']}, {library}, "
          f"numba {info['numba']}, embeval {info['embeval']}")
    print(sizes)
    if args.out_dir is not None:
        (args.out_dir / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
