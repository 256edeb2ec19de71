"""Similarity scores (higher = more similar), devices and matmul precision.

Every metric is an inner product followed by an element-wise transform with one
per-query and one per-gallery number ("aux"):

=========  ==========================  =========================
metric     score                       aux (query, gallery)
=========  ==========================  =========================
inner      q·g                         unused
cosine     (q·g) · (1/‖q‖) · (1/‖g‖)   inverse norms
euclid     −sqrt(max(‖q‖²+‖g‖²−2q·g, 0))  squared norms
sq_euclid  −max(‖q‖²+‖g‖²−2q·g, 0)     squared norms
=========  ==========================  =========================

Because the transform is applied to the raw dot product with the same float32
operations everywhere (block matmul, positive gather, numba kernel), two equal
dot products always give bit-equal scores. :func:`canonical_dot` is the dot product
in one fixed summation order (the one ``embeval._kernels`` compiles): the scores
that decide ranks are computed with it, so they depend on the pair alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import OptionError

__all__ = [
    "METRICS", "PRECISIONS", "METRIC_CODES", "LANES", "aux", "transform", "canonical_dot",
    "scores", "resolve_device", "matmul_dtype", "precision_context",
]

METRICS = ("inner", "cosine", "euclid", "sq_euclid")
METRIC_CODES = {name: i for i, name in enumerate(METRICS)}
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
LANES = 16  # canonical dot product: 16 running sums, lane l takes elements t ≡ l (mod 16)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise OptionError(f"--metric: unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    return metric


def aux(x: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-row number the transform needs: [N] float32 (inverse norm or squared norm)."""
    x = x.float()
    if metric == "cosine":
        return 1.0 / torch.linalg.vector_norm(x, dim=1).clamp_min(1e-12)
    if metric in ("euclid", "sq_euclid"):
        return (x * x).sum(dim=1)
    return torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)


def transform(dot: torch.Tensor, qa: torch.Tensor, ga: torch.Tensor, metric: str) -> torch.Tensor:
    """Scores from raw dot products; ``qa``/``ga`` broadcast against ``dot`` (float32)."""
    if metric == "inner":
        return dot
    if metric == "cosine":
        return dot * qa * ga
    d2 = ((qa + ga) - 2.0 * dot).clamp_min(0.0)
    return -_sqrt(d2) if metric == "euclid" else -d2


def canonical_dot(q: torch.Tensor, g: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """Row-wise dot products ``q[m]·g[m]`` of [n, D] float32 rows in the canonical order: [n].

    Lane l (of 16) sums the products of elements l, l + 16, l + 32, ... in order (the last
    ``D mod 16`` elements go to lanes 0, 1, ...), then lanes are added in a fixed tree
    (l + 8 into l, then l + 4, l + 2, l + 1). Every operation is one IEEE float32 multiply
    or add, so the bits are the same on CPU and CUDA and equal ``embeval._kernels``'s.
    """
    n, d = q.shape
    out = torch.empty(n, dtype=torch.float32, device=q.device)
    full = d - d % LANES
    for c in range(0, n, chunk):
        a, b = q[c:c + chunk].float(), g[c:c + chunk].float()
        acc = torch.zeros(len(a), LANES, dtype=torch.float32, device=q.device)
        for t in range(0, full, LANES):
            acc += a[:, t:t + LANES] * b[:, t:t + LANES]
        if d > full:
            acc[:, :d - full] += a[:, full:] * b[:, full:]
        width = LANES
        while width > 1:
            width //= 2
            acc = acc[:, :width] + acc[:, width:2 * width]
        out[c:c + chunk] = acc[:, 0]
    return out


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt. PyTorch's vectorised CPU float32 sqrt is off by an ulp
    for some inputs (sqrt(34) → 5.830952, IEEE 5.8309517), which would split ties between
    scores computed on different paths; float64 sqrt rounded to float32 is exact."""
    return torch.sqrt(x) if x.is_cuda else torch.sqrt(x.double()).float()


def scores(query: torch.Tensor, gallery: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """The full score matrix [Q, G] float32 (small inputs only: tests, ``score --out``)."""
    q, g = query.float(), gallery.float()
    return transform(q @ g.T, aux(q, metric)[:, None], aux(g, metric)[None, :], metric)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available else CPU; validates ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise OptionError(f"--device: unknown device {device!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise OptionError(f"--device: unsupported device {device!r} (auto, cpu, cuda, cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def matmul_dtype(precision: str) -> torch.dtype:
    """Operand dtype of the score matmul (``bf16``/``fp16`` are approximate)."""
    if precision not in PRECISIONS:
        raise OptionError(f"--precision: unknown precision {precision!r} "
                          f"(choose from {', '.join(PRECISIONS)})")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


@contextlib.contextmanager
def precision_context(precision: str) -> Iterator[None]:
    """Enable TF32 matmuls inside the block for ``tf32`` (CUDA only; a no-op elsewhere)."""
    if precision != "tf32":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
