#!/usr/bin/env python
"""The fused Triton pass on one GPU, against the floor (the bare matrix product) and faiss-gpu.

For Q = G = 100,000 and 1,000,000 (D = 512) it generates bench_cmc.py's *decent* workload shape
on the device from a seed (identities with unit centres, noise sigma 2.48, ~16.7 gallery items
per identity; the same shape, not the same numbers as bench_cmc.py's numpy draw), then times in
one process, each after an untimed warm-up (Triton compiles its kernel once):

1. floor: ``q @ g.T`` over the same blocks the engine streams (65,536 gallery items × query
   chunks, written into one reused buffer), fp32 (TF32 off) and tf32 (TF32 on);
2. faiss-gpu ``GpuIndexFlatIP`` exact top-10 of every query, where ``faiss`` with GPUs imports
   (``pip install faiss-gpu-cu12``): the peer;
3. embeval's torch pass (``rank_stats(..., backend="torch")``; 100k only);
4. embeval's fused pass (``rank_stats(..., backend="triton")``): exact rank-1/5/10, mAP, mINP.

Reported: wall seconds (``torch.cuda.synchronize`` around each), peak GPU memory (allocator
peak; faiss's own allocations are outside it), ratios of the fused pass to the fp32 floor, the
tf32 floor and faiss, the metrics, and at 100k whether the fused and torch passes gave
bit-identical statistics. Budget: under 8 minutes on one H100 (``--sizes 100000`` for a
one-minute run). Without CUDA it refuses with one line.

    python benchmarks/bench_gpu.py                     # 100k and 1M
    python benchmarks/bench_gpu.py --sizes 100000 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

BLOCK = 1 << 16  # gallery items per block: embeval.engine.triton_pass.LAUNCH_ROWS
KS = (1, 5, 10)


def generate(n: int, dim: int, seed: int, dev) -> tuple:
    """bench_cmc.py's *decent* shape on the device: ``(q, ql, g, gl)``, rows unit length."""
    import torch

    gen = torch.Generator(device=dev).manual_seed(seed)
    n_ids = max(1, round(n / (50_000 / 3000)))
    centres = torch.nn.functional.normalize(torch.randn(n_ids, dim, generator=gen, device=dev), dim=1)

    def items(count: int) -> tuple:
        labels = (torch.arange(count, device=dev) % n_ids)[torch.randperm(count, generator=gen,
                                                                          device=dev)]
        x = centres[labels] + 2.48 / math.sqrt(dim) * torch.randn(count, dim, generator=gen,
                                                                  device=dev)
        return torch.nn.functional.normalize(x, dim=1), labels

    g, gl = items(n)
    q, ql = items(n)
    return q, ql, g, gl


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, peak GPU GB allocated, result) of ``fn()``, synchronised."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, torch.cuda.max_memory_allocated() / 1e9, out


def floor(q, g, tf32: bool, q_chunk: int = 16384) -> None:
    """The bare products of every (query chunk × gallery block), into one reused buffer."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        out = torch.empty(min(q_chunk, len(q)), min(BLOCK, len(g)), device=q.device)
        for a in range(0, len(g), BLOCK):
            gb = g[a:a + BLOCK]
            for s in range(0, len(q), q_chunk):
                qb = q[s:s + q_chunk]
                torch.mm(qb, gb.T, out=out[:len(qb), :len(gb)])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def faiss_top10(q, g):
    """faiss-gpu flat inner-product top-10, or None when faiss with GPUs is not importable."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401 - lets faiss take torch CUDA tensors
    except ImportError:
        return None
    if faiss.get_num_gpus() < 1:
        return None
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(res, q.shape[1])
    index.add(g)
    out = index.search(q, 10)
    del index, res
    return out


def run_size(n: int, dim: int, seed: int, torch_path: bool, skip_faiss: bool) -> dict:
    import torch

    import embeval
    from embeval.engine import rank_stats
    from embeval.evaluation import summarize

    dev = torch.device("cuda")
    q, ql, g, gl = generate(n, dim, seed, dev)
    row: dict = {"n": n, "dim": dim}
    for name, tf32 in (("floor_fp32", False), ("floor_tf32", True)):
        floor(q[:4096], g[:BLOCK], tf32)  # warm-up (cuBLAS heuristics)
        s, peak, _ = timed(lambda tf32=tf32: floor(q, g, tf32))
        row[name] = {"s": s, "peak_gb": peak}
    if not skip_faiss:
        faiss_top10(q[:1024], g[:BLOCK])
        s, peak, out = timed(lambda: faiss_top10(q, g))
        row["faiss_top10"] = {"s": s, "peak_gb": peak} if out is not None else None
    qs = embeval.EmbeddingSet(q.cpu(), ql.cpu())
    gs = embeval.EmbeddingSet(g.cpu(), gl.cpu())
    q = g = None  # free the device copies before the passes upload their own
    torch.cuda.empty_cache()
    small_q, small_g = embeval.EmbeddingSet(qs.embeddings[:2048], qs.labels[:2048]), gs
    stats = {}
    for backend in (("torch", "triton") if torch_path else ("triton",)):
        rank_stats(small_q, small_g, metric="inner", device="cuda", backend=backend)  # warm-up
        s, peak, st = timed(lambda b=backend: rank_stats(qs, gs, metric="inner", device="cuda",
                                                           backend=b))
        res = summarize(st, gs.labels, ks=KS)
        row[f"embeval_{backend}"] = {"s": s, "peak_gb": peak, **{k: res.metrics[k] for k in (
            "rank1", "rank5", "rank10", "mAP", "mINP")}}
        stats[backend] = st
    if len(stats) == 2:
        a, b = stats["torch"], stats["triton"]
        row["identical"] = all(torch.equal(getattr(a, f), getattr(b, f)) for f in (
            "pos_offsets", "pos_scores", "neg_hist", "n_neg", "max_neg"))
    fused = row["embeval_triton"]["s"]
    row["ratio"] = {"to_floor_fp32": fused / row["floor_fp32"]["s"],
                    "to_floor_tf32": fused / row["floor_tf32"]["s"]}
    if row.get("faiss_top10"):
        row["ratio"]["to_faiss"] = fused / row["faiss_top10"]["s"]
    return row


def table(rows: list[dict]) -> str:
    lines = [f"{'size':>9} {'contender':<16} {'wall s':>8} {'peak GB':>8}  notes"]
    for r in rows:
        for name in ("floor_fp32", "floor_tf32", "faiss_top10", "embeval_torch", "embeval_triton"):
            v = r.get(name)
            if name not in r:
                continue
            if v is None:
                lines.append(f"{r['n']:>9} {name:<16} {'-':>8} {'-':>8}  faiss-gpu not importable")
                continue
            note = ""
            if name.startswith("embeval"):
                note = " ".join(f"{k} {v[k]:.4f}" for k in ("rank1", "rank5", "rank10", "mAP", "mINP"))
            lines.append(f"{r['n']:>9} {name:<16} {v['s']:>8.2f} {v['peak_gb']:>8.2f}  {note}")
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in r["ratio"].items())
        same = f"; fused == torch pass bit for bit: {r['identical']}" if "identical" in r else ""
        lines.append(f"{'':>9} fused pass: {ratios}{same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--torch-path-max", type=int, default=100_000,
                   help="run the torch pass only up to this size (default 100k)")
    p.add_argument("--skip-faiss", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: needs a CUDA GPU (torch.cuda.is_available() is False); nothing run",
              file=sys.stderr)
        return 2
    rows = []
    for n in args.sizes:
        rows.append(run_size(n, args.dim, args.seed, n <= args.torch_path_max, args.skip_faiss))
        print(table(rows[-1:]), flush=True)
    device = torch.cuda.get_device_name()
    if args.json:
        print(json.dumps({"device": device, "rows": rows}, indent=1))
    else:
        print(f"device: {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
