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
in one fixed summation order (the one ``embeval.engine.kernels`` compiles): the scores
that decide ranks are computed with it, so they depend on the pair alone.

Scores are float32 and rows are not rescaled: :func:`overflow_rule` tells from the largest
row norms whether any score (or a step of computing it) could overflow; the engine refuses
such inputs instead of ranking infinities and NaN.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from embeval.errors import InputFileError, OptionError
from embeval.options import METRICS, PRECISIONS

__all__ = [
    "METRICS", "PRECISIONS", "METRIC_CODES", "LANES", "aux", "row_norms", "overflow_rule",
    "check_finite_scores", "transform", "score_tolerance", "canonical_dot",
    "scores", "resolve_device", "matmul_dtype", "precision_context",
]

METRIC_CODES = {name: i for i, name in enumerate(METRICS)}
LANES = 16  # canonical dot product: 16 running sums, lane l takes elements t ≡ l (mod 16)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise OptionError(f"metric: unknown metric {metric!r} ({', '.join(METRICS)})", param="metric")
    return metric


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of [N, D] ``x``: [N] float64, never infinite.

    Summed in float32 (10x faster than float64, relative error below (1 + u)^D); the rows
    whose float32 sum of squares overflows (norm above ~1.8e19) again in float64.
    """
    norms = torch.linalg.vector_norm(x.float(), dim=1).double()
    big = ~torch.isfinite(norms)
    if bool(big.any()):
        norms[big] = torch.linalg.vector_norm(x[big], dim=1, dtype=torch.float64)
    return norms


def aux(x: torch.Tensor, metric: str, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row number the transform needs: [N] float32 (inverse norm or squared norm).

    ``norms``: :func:`row_norms` of ``x`` when already at hand (cosine uses them).
    """
    x = x.float()
    if metric == "cosine":
        norms = row_norms(x) if norms is None else norms
        return (1.0 / norms.clamp_min(1e-12)).float()
    if metric in ("euclid", "sq_euclid"):
        return (x * x).sum(dim=1)
    return torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)


# (operand rounding, output rounding) of the score matmul: accumulation is float32 in every
# precision (PyTorch's CPU kernels, cuBLAS's default compute type).
_ROUNDING = {"fp32": (0.0, 0.0), "tf32": (2.0 ** -11, 0.0), "bf16": (2.0 ** -8, 2.0 ** -8),
             "fp16": (2.0 ** -11, 2.0 ** -11)}


def overflow_rule(metric: str, precision: str, dim: int, query_norm: float,
                  gallery_norm: float) -> str | None:
    """Why scores of rows with L2 norms up to ``query_norm`` / ``gallery_norm`` can overflow,
    or None when every score and every intermediate of computing it is finite.

    Bounds (norms from :func:`row_norms`, within (1 + u)^D of exact): any dot product's
    partial sums are at most (1 + u)^D · Σ|q_i g_i| ≤ (1 + u)^D · |q||g| (Cauchy-Schwarz;
    u = 2^-24, every summation order); the squared norms of euclid / sq_euclid at most
    (1 + u)^D · |x|², so ‖q‖² + ‖g‖² − 2 q·g stays below (1 + u)^D · (|q| + |g|)². Each must
    stay below half the largest value of its dtype (the half covers the metric transform,
    reduced-precision operand and output rounding and the tie tolerance); a row norm must
    also stay below 2^126, so that cosine's 1 / |x| is a normal float32.
    """
    op_u, out_u = _ROUNDING[precision]
    # rounding of the dot product's partial sums, and of the two norms (summed in float32)
    growth = (1 + op_u) ** 2 * (1 + out_u) * math.exp(3 * dim * math.log1p(2.0 ** -24))
    mm = matmul_dtype(precision)
    dot_max = float(torch.finfo(mm).max) / (2 * growth)
    f32_max = float(torch.finfo(torch.float32).max) / (2 * growth)
    mm_name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(mm, "float32")
    checks = [(query_norm * gallery_norm, dot_max, "|q|·|g|", mm_name),
              (max(query_norm, gallery_norm), min(dot_max, 2.0 ** 126), "the row norm", mm_name)]
    if metric in ("euclid", "sq_euclid"):
        checks.insert(0, ((query_norm + gallery_norm) ** 2, f32_max, "(|q| + |g|)²", "float32"))
    for value, limit, what, dtype in checks:
        if not value <= limit:  # also catches NaN
            return f"{what} = {value:.3g} is above {limit:.3g}, where {dtype} scores can overflow"
    return None


def check_finite_scores(values: torch.Tensor, query_name: str, gallery_name: str,
                        what: str = "") -> None:
    """Defence in depth behind :func:`overflow_rule`: never rank a NaN or infinite score.

    Raises :class:`InputFileError` (naming both files) when any of ``values`` is not finite.
    """
    if not bool(torch.isfinite(values).all()):
        raise InputFileError(gallery_name, f"{what}scores against {query_name} are not finite "
                                           "(NaN or Inf); refusing to rank them")


def transform(dot: torch.Tensor, qa: torch.Tensor, ga: torch.Tensor, metric: str) -> torch.Tensor:
    """Scores from raw dot products; ``qa``/``ga`` broadcast against ``dot`` (float32)."""
    if metric == "inner":
        return dot
    if metric == "cosine":
        return dot * qa * ga
    d2 = ((qa + ga) - 2.0 * dot).clamp_min(0.0)
    return -_sqrt(d2) if metric == "euclid" else -d2


def score_tolerance(qemb: torch.Tensor, metric: str, gallery_max_norm: float, *, dot_rel: float,
                    cos_rel: float) -> torch.Tensor:
    """[Q] float32: a bound on |score - canonical score| for any pair of query i, from a bound on
    the dot products' error, ``dot_rel`` · |q|·|g|, and on the cosine's, ``cos_rel`` (the scaling
    by 1/(|q||g|) included). The metric transform adds the roundings of its operands; the sum is
    doubled for margin. ``qemb`` [Q, D]; ``gallery_max_norm``: the largest gallery row norm."""
    u = 2.0 ** -24
    qn = torch.linalg.vector_norm(qemb.double(), dim=1)
    gn = float(gallery_max_norm) * (1 + 4 * u)
    m = qn * gn  # bounds |q·g| and Σ|q_i g_i|
    dot_err = dot_rel * m
    if metric == "cosine":
        eps = torch.full_like(qn, cos_rel)
    elif metric in ("euclid", "sq_euclid"):
        big = qn * qn + gn * gn + 2 * m
        eps = 2 * dot_err + 8 * u * big
        if metric == "euclid":
            eps = eps.sqrt() + 8 * u * big.sqrt()
    else:
        eps = dot_err
    return (2 * eps).float().nextafter(torch.tensor(float("inf")))


def canonical_dot(q: torch.Tensor, g: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """Row-wise dot products ``q[m]·g[m]`` of [n, D] float32 rows in the canonical order: [n].

    Lane l (of 16) sums the products of elements l, l + 16, l + 32, ... in order (the last
    ``D mod 16`` elements go to lanes 0, 1, ...), then lanes are added in a fixed tree
    (l + 8 into l, then l + 4, l + 2, l + 1). Every operation is one IEEE float32 multiply
    or add, so the bits are the same on CPU and CUDA and equal ``embeval.engine.kernels``'s.
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
        raise OptionError(f"device: unknown device {device!r} (auto, cpu, cuda, cuda:N)",
                          param="device") from None
    if dev.type not in ("cpu", "cuda"):
        raise OptionError(f"device: unsupported device {device!r} (auto, cpu, cuda, cuda:N)",
                          param="device")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device {device}: CUDA is not available on this machine",
                              param="device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"device {device}: only {torch.cuda.device_count()} GPU(s) visible",
                              param="device")
    return dev


def matmul_dtype(precision: str) -> torch.dtype:
    """Operand dtype of the score matmul (``bf16``/``fp16`` are approximate)."""
    if precision not in PRECISIONS:
        raise OptionError(f"precision: unknown precision {precision!r} ({', '.join(PRECISIONS)})",
                          param="precision")
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
