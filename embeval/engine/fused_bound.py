"""The rounding-error bound of the fused Triton pass (:mod:`embeval.engine.triton_pass`).

The fused kernel computes each dot product with ``tl.dot(..., input_precision="tf32x3")``
(:data:`KERNEL_PRECISION`): every float32 operand ``a`` is split into ``a_hi`` (a tf32 number,
11 significant bits) and ``a_lo = a - a_hi`` (exact in float32), and ``a·b`` is approximated
by ``a_hi·b_hi + a_hi·b_lo + a_lo·b_hi`` on the tensor cores, accumulated in float32. The
kernel's scores only *filter*, as the BLAS scores of the CPU pass do: a score that lies within
the bound of a decision (a positive's score, the hardest negative) is settled afterwards with
the canonical score (:func:`embeval.engine.similarity.canonical_dot`). So the bound must hold
for every pair, and it is pessimistic on purpose:

- splitting (``a_hi``, ``a_lo`` truncated to tf32 rather than rounded): each product is off by
  ``|a_hi (b_lo - b_lo')| + |(a_lo - a_lo') b_hi| + |a_lo b_lo| ≤ 3.01 · 2^-20 · |a||b|``;
- accumulation: the ``3·D`` exact tf32 products are summed in float32 in any order, each
  addition off by at most one unit in the last place (truncating tensor-core adders:
  ``u_t = 2^-23``, twice float32's round-to-nearest unit), so the sum is within
  ``γ_3D(u_t) · Σ|terms|`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 3.1;
  Fasi, Higham, Mikaitis and Pranesh, *Numerical behavior of NVIDIA tensor cores*, PeerJ CS
  2021, for the products being exact and the adders truncating);
- the canonical score is within ``γ_D(2^-24) · |q||g|`` of the exact dot product;

and the metric transform adds the same few roundings as :func:`embeval.engine.rank.tie_tolerance`.
The sum is doubled for margin. ``input_precision="ieee"`` (plain float32 FMA) and Triton's
interpreter (a float32 BLAS product) are far inside it.
"""

from __future__ import annotations

import torch

__all__ = ["KERNEL_PRECISION", "kernel_dot_error", "fused_tolerance"]

#: ``tl.dot``'s input precision in the fused kernel: float32-level accuracy on tensor cores
KERNEL_PRECISION = "tf32x3"

_U = 2.0 ** -24  # float32 unit roundoff (round to nearest)
_UT = 2.0 ** -23  # a truncating float32 adder
_SPLIT = 3.01 * 2.0 ** -20  # tf32x3: the dropped a_lo·b_lo term and the tf32 truncation of a_lo, b_lo


def kernel_dot_error(dim: int) -> float:
    """Relative bound on |kernel dot - exact dot| / (|q|·|g|) of the tf32x3 product, ``dim``
    elements (terms: the splitting error and the float32 accumulation of 3·dim products)."""
    n = 3 * dim
    gamma = n * _UT / (1 - n * _UT)
    return _SPLIT + gamma * (1 + 2 * 2.0 ** -10) * (1 + 2.0 ** -10) ** 2


def fused_tolerance(qemb: torch.Tensor, metric: str, gallery_max_norm: float) -> torch.Tensor:
    """[Q] float32: a bound on |fused-kernel score - canonical score| for any pair of query i.

    ``qemb`` [Q, D] float32 queries; ``gallery_max_norm``: the largest gallery row norm.
    """
    dim = qemb.shape[1]
    gamma_c = dim * _U / (1 - dim * _U)  # canonical order vs exact
    rel = kernel_dot_error(dim) + gamma_c + 4 * _U  # + rounding of the norms behind m
    qn = torch.linalg.vector_norm(qemb.double(), dim=1)
    gn = float(gallery_max_norm) * (1 + 4 * _U)
    m = qn * gn  # bounds |q·g| and Σ|q_i g_i|
    dot_err = rel * m
    if metric == "cosine":  # scaled by 1/(|q||g|), rounded three more times on each side
        eps = torch.full_like(qn, rel + 16 * _U)
    elif metric in ("euclid", "sq_euclid"):
        big = qn * qn + gn * gn + 2 * m
        eps = 2 * dot_err + 8 * _U * big
        if metric == "euclid":
            eps = eps.sqrt() + 8 * _U * big.sqrt()
    else:
        eps = dot_err
    return (2 * eps).float().nextafter(torch.tensor(float("inf")))
