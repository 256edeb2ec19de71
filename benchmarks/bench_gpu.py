#!/usr/bin/env python
"""The fused Triton passes on one GPU, against the floor (the bare matrix product) and faiss-gpu.

For Q = G = 100,000 and 1,000,000 (D = 512) it generates bench_cmc.py's *decent* workload shape
on the device from a seed (identities with unit centres, noise sigma 2.48, ~16.7 gallery items
per identity; the same shape, not the same numbers as bench_cmc.py's numpy draw), then times in
one process, each after an untimed warm-up (Triton compiles its kernel once):

1. floor: ``q @ g.T`` over the same blocks the engine streams (65,536 gallery items × query
   chunks, written into one reused buffer), fp32 (TF32 off), tf32 (TF32 on) and fp64 (the
   verification kernel's products: DGEMM on the float64 tensor cores);
2. faiss-gpu ``GpuIndexFlatIP`` exact top-10 of every query, where ``faiss`` with GPUs imports
   (``pip install faiss-gpu-cu12``): the peer;
3. embeval's torch pass (``rank_stats(..., backend="torch")``; 100k only);
4. embeval's fused pass (``rank_stats(..., backend="triton")``): exact rank-1/5/10, mAP, mINP;
5. ``verify`` over the same pairs: ``trial_stats(..., backend="triton")`` (the fused float64
   kernel; ``backend="torch"`` too at 100k): every trial counted, AUC, EER, TAR@FAR=1e-6.

Reported: wall seconds (``torch.cuda.synchronize`` around each), peak GPU memory (allocator
peak; faiss's own allocations are outside it), ratios of the fused pass to the fp32 floor, the
tf32 floor and faiss (verify: to the fp32 and fp64 floors), the metrics, and at 100k whether
the fused and torch passes gave bit-identical statistics. Budget: under 8 minutes on one H100
(``--sizes 100000`` for a one-minute run). Without CUDA it refuses with one line;
``--cpu-smoke`` runs the whole script on CPU in Triton's interpreter at a tiny size (a test of
the script, never a measurement: ``tests/engine/test_bench_gpu.py``).

    python benchmarks/bench_gpu.py                     # 100k and 1M
    python benchmarks/bench_gpu.py --sizes 100000 --json
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --cpu-smoke --sizes 200 --dim 8
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

BLOCK = 1 << 16  # gallery items per block: embeval.engine.triton_pass.LAUNCH_ROWS
KS = (1, 5, 10)
VERIFY_METRICS = ("AUC", "EER", "TAR@FAR=1e-06")


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
    """(wall seconds, peak GPU GB allocated, result) of ``fn()``, synchronised (on CPU: no peak)."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    if not cuda:
        return time.perf_counter() - t, 0.0, out
    torch.cuda.synchronize()
    return time.perf_counter() - t, torch.cuda.max_memory_allocated() / 1e9, out


def floor(q, g, tf32: bool, q_chunk: int = 16384) -> None:
    """The bare products of every (query chunk × gallery block), into one reused buffer (in
    float64 when ``q`` is: each gallery block is converted once, as the kernel reads it)."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        out = torch.empty(min(q_chunk, len(q)), min(BLOCK, len(g)), device=q.device, dtype=q.dtype)
        for a in range(0, len(g), BLOCK):
            gb = g[a:a + BLOCK].to(q.dtype)
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


def run_size(n: int, dim: int, seed: int, torch_path: bool, skip_faiss: bool,
             device: str = "cuda") -> dict:
    import torch

    import embeval
    from embeval.engine import rank_stats
    from embeval.engine.trial_pass import trial_stats
    from embeval.evaluation import summarize
    from embeval.verification.roc import verification_metrics

    dev = torch.device(device)
    q, ql, g, gl = generate(n, dim, seed, dev)
    row: dict = {"n": n, "dim": dim}
    q64 = q.double()
    for name, tf32, qx in (("floor_fp32", False, q), ("floor_tf32", True, q),
                           ("floor_fp64", False, q64)):
        floor(qx[:4096], g[:BLOCK], tf32)  # warm-up (cuBLAS heuristics)
        s, peak, _ = timed(lambda tf32=tf32, qx=qx: floor(qx, g, tf32))
        row[name] = {"s": s, "peak_gb": peak}
    del q64
    if not skip_faiss:
        faiss_top10(q[:1024], g[:BLOCK])
        s, peak, out = timed(lambda: faiss_top10(q, g))
        row["faiss_top10"] = {"s": s, "peak_gb": peak} if out is not None else None
    qs = embeval.EmbeddingSet(q.cpu(), ql.cpu())
    gs = embeval.EmbeddingSet(g.cpu(), gl.cpu())
    q = g = None  # free the device copies before the passes upload their own
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    small_q, small_g = embeval.EmbeddingSet(qs.embeddings[:2048], qs.labels[:2048]), gs
    stats = {}
    for backend in (("torch", "triton") if torch_path else ("triton",)):
        rank_stats(small_q, small_g, metric="inner", device=device, backend=backend)  # warm-up
        s, peak, st = timed(lambda b=backend: rank_stats(qs, gs, metric="inner", device=device,
                                                           backend=b))
        res = summarize(st, gs.labels, ks=KS)
        row[f"embeval_{backend}"] = {"s": s, "peak_gb": peak, **{k: res.metrics[k] for k in (
            "rank1", "rank5", "rank10", "mAP", "mINP")}}
        stats[backend] = st
    if len(stats) == 2:
        a, b = stats["torch"], stats["triton"]
        row["identical"] = all(torch.equal(getattr(a, f), getattr(b, f)) for f in (
            "pos_offsets", "pos_scores", "neg_hist", "n_neg", "max_neg"))
    trials = {}
    for backend in (("torch", "triton") if torch_path else ("triton",)):
        trial_stats(small_q, small_g, metric="inner", device=device, backend=backend)  # warm-up
        s, peak, vs = timed(lambda b=backend: trial_stats(qs, gs, metric="inner", device=device,
                                                            backend=b))
        m = verification_metrics(vs, (1e-6,))
        row[f"verify_{backend}"] = {"s": s, "peak_gb": peak, "trials": vs.n_genuine + vs.n_impostor,
                                    **{k: m.get(k) for k in VERIFY_METRICS}}
        trials[backend] = vs
    if len(trials) == 2:
        a, b = trials["torch"], trials["triton"]
        row["verify_identical"] = all(torch.equal(getattr(a, f), getattr(b, f)) for f in (
            "gen_values", "gen_counts", "imp_slots", "imp_keys"))
    fused = row["embeval_triton"]["s"]
    row["ratio"] = {"to_floor_fp32": fused / row["floor_fp32"]["s"],
                    "to_floor_tf32": fused / row["floor_tf32"]["s"]}
    if row.get("faiss_top10"):
        row["ratio"]["to_faiss"] = fused / row["faiss_top10"]["s"]
    verify = row["verify_triton"]["s"]
    row["ratio"]["verify_to_floor_fp32"] = verify / row["floor_fp32"]["s"]
    row["ratio"]["verify_to_floor_fp64"] = verify / row["floor_fp64"]["s"]
    return row


def table(rows: list[dict]) -> str:
    lines = [f"{'size':>9} {'contender':<16} {'wall s':>8} {'peak GB':>8}  notes"]
    for r in rows:
        for name in ("floor_fp32", "floor_tf32", "floor_fp64", "faiss_top10", "embeval_torch",
                     "embeval_triton", "verify_torch", "verify_triton"):
            v = r.get(name)
            if name not in r:
                continue
            if v is None:
                lines.append(f"{r['n']:>9} {name:<16} {'-':>8} {'-':>8}  faiss-gpu not importable")
                continue
            note = ""
            if name.startswith("embeval"):
                note = " ".join(f"{k} {v[k]:.4f}" for k in ("rank1", "rank5", "rank10", "mAP", "mINP"))
            elif name.startswith("verify"):
                note = f"{v['trials']:,} trials " + " ".join(
                    f"{k} {'n/a' if v[k] is None else format(v[k], '.6f')}" for k in VERIFY_METRICS)
            lines.append(f"{r['n']:>9} {name:<16} {v['s']:>8.2f} {v['peak_gb']:>8.2f}  {note}")
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in r["ratio"].items())
        same = f"; fused == torch pass bit for bit: {r['identical']}" if "identical" in r else ""
        same += (f"; verify fused == torch bit for bit: {r['verify_identical']}"
                 if "verify_identical" in r else "")
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
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run on CPU in Triton's interpreter (TRITON_INTERPRET=1): tiny sizes, a "
                        "test of this script, not a measurement")
    args = p.parse_args(argv)
    import torch

    if args.cpu_smoke:
        rows = [run_size(n, args.dim, args.seed, True, True, device="cpu") for n in args.sizes]
        print(json.dumps({"device": "cpu (Triton's interpreter)", "rows": rows}, indent=1))
        print(table(rows), file=sys.stderr)
        return 0
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
