#!/usr/bin/env python
"""The scale table: ``embeval cmc`` at Q = G = 10k, 100k, 1M (D = 512) beside faiss and argsort.

For every size it writes the *decent* workload of ``bench_cmc.py`` (the same generator,
deterministic) as embeval files and times each contender as a WHOLE separate process
(interpreter start, imports and file loading included):

1. ``embeval cmc Q G -k 1 5 10 --metric inner --json``          (exact, fp32)
2. the same with ``--precision bf16``                          (approximate matmul; GPU mainly)
3. with ``--gloo N``: ``torchrun --standalone --nproc-per-node N -m embeval cmc ... --device cpu``
   beside the same command in 1 process (``--device cpu``)
4. faiss ``IndexFlatIP`` exact top-10 (``bench_cmc.py --run-faiss``)
5. full matrix + argsort (``bench_cmc.py --run-argsort``), only where the Q x G float32 matrix
   and its sort buffers fit in 80% of the available RAM
6. the matrix product alone (``--run-matmul``: blocks of ``q @ g.T`` on the device, nothing
   else): the floor that the ranking pass is measured against

Wall time is measured around the child; peak memory is the largest summed RSS of the child's
whole process tree (psutil, sampled every 50 ms; all ranks of a torchrun) and, as a check, the
child's ``ru_maxrss`` (largest single process). A contender that runs past ``--timeout`` is
killed and reported as such.

    python benchmarks/bench_scale.py --sizes 2000                    # smoke test, seconds
    python benchmarks/bench_scale.py --sizes 10000 100000 --gloo 2   # CPU: 1 process vs 2 ranks
    python benchmarks/bench_scale.py --device cuda --out-dir /data/bench --skip faiss
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cmc import (  # noqa: E402 - the shared workload and helpers
    KS,
    WORKLOADS,
    embeval_command,
    fmt,
    last_json,
    log,
    machine,
    prepare,
)

HERE = Path(__file__).resolve()
CMC = HERE.parent / "bench_cmc.py"


def run_matmul(qpath: str, gpath: str, device: str, precision: str, rows: int) -> dict:
    """Child process: every score of ``q @ g.T`` in gallery blocks, then nothing: the floor."""
    t0 = time.perf_counter()
    import torch
    from safetensors import safe_open

    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    with safe_open(qpath, "pt") as f:
        q = f.get_tensor("embeddings").to(dev, dtype)
    t1 = time.perf_counter()
    t_mm, checksum = 0.0, 0.0
    with safe_open(gpath, "pt") as f:
        s = f.get_slice("embeddings")
        n = s.get_shape()[0]
        for a in range(0, n, rows):
            g = s[a:min(a + rows, n)].to(dev, dtype)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            tm = time.perf_counter()
            for q0 in range(0, q.shape[0], 65536):
                checksum += float((q[q0:q0 + 65536] @ g.T).float().amax())
            t_mm += time.perf_counter() - tm
    return {"matmul_s": t_mm, "load_s": t1 - t0, "device": str(dev), "checksum": checksum}


def measure(cmd: list[str], timeout: float) -> dict:
    """Run ``cmd``; wall time, peak RSS of its process tree (sampled) and ru_maxrss."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the [bench] extra
        psutil = None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group: killable whole
        peak_tree, status, ru, timed_out = 0, 0, None, False
        root = psutil.Process(proc.pid) if psutil else None
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if root is not None:
                try:
                    tree = [root, *root.children(recursive=True)]
                    peak_tree = max(peak_tree, sum(p.memory_info().rss for p in tree))
                except psutil.Error:
                    pass
            if time.perf_counter() - t > timeout:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # torchrun's ranks too
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    row = {"wall_s": wall, "peak_tree_bytes": peak_tree or None, "ru_maxrss_bytes": ru.ru_maxrss * 1024,
           "cpu_s": ru.ru_utime + ru.ru_stime, "rc": proc.returncode, "result": last_json(stdout)}
    if timed_out:
        row["error"] = f"timeout after {timeout:.0f} s"
    elif proc.returncode != 0:
        row["error"] = f"rc={proc.returncode}: " + " | ".join((stderr or stdout).strip().splitlines()[-2:])
    return row


def argsort_fits(n_query: int, n_gallery: int, chunk: int) -> tuple[bool, float]:
    """Whether the full-matrix evaluator fits in 80% of MemAvailable; and the GB it needs."""
    need = n_query * n_gallery * 4 + chunk * n_gallery * 8 * 4 + (n_query + n_gallery) * 512 * 4
    try:
        avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        avail = 0
    return need < 0.8 * avail, need / 1e9


def contenders(args, qp: Path, gp: Path, n_query: int, n_gallery: int) -> list[tuple[str, list[str]]]:
    emb = embeval_command()
    cmc = ["cmc", str(qp), str(gp), "-k", *map(str, KS), "--metric", "inner", "--json",
           *args.embeval_args.split()]
    dev = ["--device", args.device]
    rows = [("embeval fp32", [*emb, *cmc, *dev]),
            ("embeval bf16", [*emb, *cmc, *dev, "--precision", "bf16"])]
    if args.gloo:
        rows.append(("embeval cpu, 1 process", [*emb, *cmc, "--device", "cpu"]))
        rows.append((f"embeval cpu, torchrun gloo x{args.gloo}",
                     [sys.executable, "-m", "torch.distributed.run", "--standalone",
                      "--nproc-per-node", str(args.gloo), "-m", "embeval", *cmc, "--device", "cpu"]))
    rows.append(("faiss IndexFlatIP top-10", [sys.executable, str(CMC), "--run-faiss", str(qp), str(gp)]))
    fits, need = argsort_fits(n_query, n_gallery, args.argsort_chunk)
    if fits:
        rows.append(("full matrix + argsort", [sys.executable, str(CMC), "--run-argsort", str(qp),
                                               str(gp), "--argsort-chunk", str(args.argsort_chunk)]))
    else:
        log(f"  argsort skipped: needs ~{need:.0f} GB")
    for precision in ("fp32", "bf16"):
        rows.append((f"matmul only {precision} (floor)",
                     [sys.executable, str(HERE), "--run-matmul", str(qp), str(gp), "--device",
                      args.device, "--precision", precision]))
    skip = [s.lower() for s in args.skip]
    return [(n, c) for n, c in rows if not any(s in n.lower() for s in skip)]


def report(size: int, rows: list[dict]) -> str:
    head = (f"{'contender':<36}{'wall s':>9}{'peak GB':>9}{'maxrss GB':>10}{'cpu s':>9}"
            f"{'rank1':>8}{'rank5':>8}{'rank10':>8}{'mAP':>10}{'mINP':>10}  inner")
    lines = [f"== Q = G = {size}, D = 512", head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<36}  FAILED {r['error']}")
            continue
        m = r.get("result") or {}
        m = m.get("metrics", m)
        inner = m.get("matmul_s") or m.get("search_s")
        peak = r["peak_tree_bytes"]
        lines.append(f"{r['name']:<36}{r['wall_s']:>9.2f}{fmt(peak and peak / 1e9, '.2f'):>9}"
                     f"{r['ru_maxrss_bytes'] / 1e9:>10.2f}{r['cpu_s']:>9.1f}"
                     + "".join(f"{fmt(m.get(f'rank{k}'), '.4f'):>8}" for k in KS)
                     + f"{fmt(m.get('mAP'), '.6f'):>10}{fmt(m.get('mINP'), '.6f'):>10}"
                     + (f"  {inner:.2f} s" if inner else ""))
    by = {r["name"]: r for r in rows if "error" not in r}
    floor = by.get("matmul only fp32 (floor)")
    if floor and "embeval fp32" in by:
        lines.append(f"embeval fp32 / matmul floor (whole processes): "
                     f"{by['embeval fp32']['wall_s'] / floor['wall_s']:.2f}x")
    one = next((r for n, r in by.items() if n == "embeval cpu, 1 process"), None)
    many = next((r for n, r in by.items() if "torchrun" in n), None)
    if one and many:
        same = (one["result"] or {}).get("metrics") == (many["result"] or {}).get("metrics")
        lines.append(f"torchrun / 1 process: {many['wall_s'] / one['wall_s']:.2f}x wall; "
                     f"metrics identical: {same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="Q = G sizes (D = 512)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--workload", default="decent", choices=list(WORKLOADS))
    p.add_argument("--device", default="auto", help="embeval and matmul device (auto, cpu, cuda)")
    p.add_argument("--gloo", type=int, default=0, metavar="N",
                   help="also time torchrun --nproc-per-node N on CPU beside 1 process")
    p.add_argument("--skip", nargs="*", default=[], help="skip contenders whose name contains "
                                                          "these words, e.g. faiss argsort bf16")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per contender")
    p.add_argument("--argsort-chunk", type=int, default=1000)
    p.add_argument("--embeval-args", default="", help="extra options for embeval cmc")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="keep the workload files (reused) and results.json here")
    p.add_argument("--run-matmul", nargs=2, metavar=("QUERY", "GALLERY"), help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=65536, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_matmul:
        print(json.dumps(run_matmul(*args.run_matmul, args.device, args.precision, args.rows)))
        return 0

    info = machine()
    log(f"machine: {info}")
    tmp = None if args.out_dir else tempfile.mkdtemp(prefix="embeval-scale-")
    out_dir = args.out_dir or Path(tmp)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "sizes": {}}
    try:
        warm_q, warm_g = prepare(WORKLOADS[args.workload], 200, 1000, args.dim, out_dir)
        log("warm-up (numba compiles and caches its kernels; untimed)")
        measure([*embeval_command(), "cmc", str(warm_q), str(warm_g), "--json"], args.timeout)
        for size in args.sizes:
            qp, gp = prepare(WORKLOADS[args.workload], size, size, args.dim, out_dir)
            rows = []
            for name, cmd in contenders(args, qp, gp, size, size):
                log(f"  {size}: {name} ...")
                row = {"name": name, "cmd": cmd, **measure(cmd, args.timeout)}
                log(f"    {row.get('error') or format(row['wall_s'], '.2f') + ' s'}")
                rows.append(row)
            results["sizes"][size] = rows
            print(report(size, rows) + "\n", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {info['cpu_count']} cores ({info['cpus_usable']} usable), {info['cpu_model']}, "
          f"{info.get('ram_gb', '?')} GB RAM; torch {info['torch']}, faiss {info['faiss']}; "
          "wall = whole process; peak = summed RSS of the process tree; maxrss = largest process")
    if args.out_dir is not None:
        (args.out_dir / "scale_results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
