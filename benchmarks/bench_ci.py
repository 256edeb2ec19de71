#!/usr/bin/env python
"""Benchmark what ``--ci 0.95`` adds to ``embeval cmc``, and ``embeval compare``.

Uses bench_cmc.py's synthetic workload (default *decent*, 10,000 queries x 50,000 gallery x 512
dims), written once as embeval files, and times as WHOLE separate processes reading the same
files (interpreter start, imports and loading included), runs interleaved so that a busy
neighbour slows both alike:

1. ``embeval cmc Q G -k 1 5 10 --json``
2. ``embeval cmc Q G -k 1 5 10 --json --ci 0.95`` (1000 resamples over queries; also
   ``--ci-by label`` with ``--by-label``)
3. ``embeval compare A B --json``: two result files of the same queries (the second model's
   queries are the first's plus noise), 1000 bootstrap resamples and 10,000 permutations.

    python benchmarks/bench_ci.py                               # full run, minutes
    python benchmarks/bench_ci.py --queries 1000 --gallery 5000 # smoke test, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cmc import (  # noqa: E402 - the helpers live next to this file
    KS,
    WORKLOADS,
    embeval_command,
    failure,
    log,
    machine,
    measure,
    prepare,
    report_end,
)

TARGET = 1.05  # --ci costs under 5% more (issue 15)


def noisy_copy(path: Path, out: Path, scale: float = 0.2) -> Path:
    """The query file with its embeddings plus Gaussian noise: a 'second model' of the same
    queries (labels, cameras and paths kept)."""
    import torch

    import embeval

    q = embeval.load(path, lazy=False)
    g = torch.Generator().manual_seed(1)
    emb = q.embeddings.float() + scale * torch.randn(q.embeddings.shape, generator=g)
    return embeval.save(out, emb, q.labels, q.cameras, metadata=q.metadata, paths=q.paths)


def timed(name: str, cmd: list[str], cpu: dict[str, list[float]] | None = None) -> float:
    """Wall seconds of one whole-process run (its CPU seconds appended to ``cpu[name]``)."""
    r = measure(cmd)
    if r.rc != 0:
        raise SystemExit(f"{name} failed: {failure(r)}")
    log(f"    {name}: {r.wall_s:.2f} s wall, {r.cpu_s:.2f} cpu-s"
        + ("" if r.other_cpu_s is None else f", other processes {r.other_cpu_s:.1f} cpu-s"))
    if cpu is not None:
        cpu.setdefault(name, []).append(r.cpu_s)
    return r.wall_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--gallery", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--workload", default="decent", choices=list(WORKLOADS))
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each (interleaved)")
    p.add_argument("--by-label", action="store_true", help="also time --ci-by label")
    p.add_argument("--out-dir", type=Path, default=None, help="keep the workload files")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args(argv)
    info = machine()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="embeval-bench-ci-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    qp, gp = prepare(WORKLOADS[args.workload], args.queries, args.gallery, args.dim, out_dir)
    exe = embeval_command()
    base = [*exe, "cmc", str(qp), str(gp), "-k", *map(str, KS), "--metric", "inner", "--json"]
    variants = {"cmc": base, "cmc --ci 0.95": [*base, "--ci", "0.95"]}
    if args.by_label:
        variants["cmc --ci 0.95 --ci-by label"] = [*base, "--ci", "0.95", "--ci-by", "label"]
    log("warm-up (untimed)")
    measure(base)
    walls: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {}
    for i in range(args.repeat):
        log(f"  round {i + 1}/{args.repeat}")
        for name, cmd in variants.items():
            walls[name].append(timed(name, cmd, cpus))
    # compare: two result files of the same queries
    qb = noisy_copy(qp, out_dir / "query_b.safetensors")
    ra, rb = out_dir / "a.result.safetensors", out_dir / "b.result.safetensors"
    for q, r in ((qp, ra), (qb, rb)):
        timed("save result", [*exe, "cmc", str(q), str(gp), "-k", *map(str, KS), "--metric",
                              "inner", "--save-result", str(r), "--json"])
    compare = [timed("compare", [*exe, "compare", str(ra), str(rb), "--json"])
               for _ in range(max(1, args.repeat // 2))]
    med = {k: statistics.median(v) for k, v in walls.items()}
    best = {k: min(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    print(f"\n{args.workload}: {args.queries} queries x {args.gallery} gallery x {args.dim} dims, "
          f"{args.repeat} interleaved whole-process runs each (min: the least disturbed run)")
    print(f"{'contender':32s} {'median s':>9s} {'min s':>7s} {'vs cmc':>7s} {'cpu-s':>7s} {'vs cmc':>7s}")
    for name in med:
        print(f"{name:32s} {med[name]:9.2f} {best[name]:7.2f} {best[name] / best['cmc']:6.3f}x "
              f"{cpu[name]:7.2f} {cpu[name] / cpu['cmc']:6.3f}x")
    print(f"{'compare A B (1000 + 10000)':32s} {statistics.median(compare):9.2f}")
    ratio = best["cmc --ci 0.95"] / best["cmc"]
    cpu_ratio = cpu["cmc --ci 0.95"] / cpu["cmc"]
    print(f"--ci 0.95 costs {100 * (ratio - 1):+.1f}% wall (min of runs), {100 * (cpu_ratio - 1):+.1f}% "
          f"CPU (target < {100 * (TARGET - 1):.0f}%): "
          f"{'met' if max(ratio, cpu_ratio) < TARGET else 'NOT met'}")
    results = {"machine": info, "walls": walls, "cpu_s": cpus, "median": med, "min": best,
               "compare_s": compare, "ratio": ratio, "cpu_ratio": cpu_ratio}
    return report_end(info, args, results, "no peer (no other tool reports intervals)",
                      f"files in {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
