"""The rounding-error bound of the fused Triton pass (:mod:`embeval.engine.triton_pass`).

The fused kernel computes each dot product with ``tl.dot(..., input_precision="tf32x3")``
(:data:`KERNEL_PRECISION`), :data:`CHUNK` dimensions at a time: every float32 operand ``a`` is
split into ``a_hi`` (tf32, 11 significant bits; Triton rounds with ``cvt.rna.tf32.f32``) and
``a_lo = a - a_hi`` (exact in float32), and a chunk's ``a·b`` is approximated by
``a_lo·b_hi + a_hi·b_lo + a_hi·b_hi`` on the tensor cores, summed from zero in float32; the
chunk's sum is then added to the running sum with one float32 add (the kernel writes
``acc += tl.dot(a, b)``, never ``tl.dot(a, b, acc)``: short chains, a bound 10x smaller at
D = 512). The kernel's scores only *filter*, as the BLAS scores of the CPU pass do: a score
within the bound of a decision (a positive's score, the hardest negative) is settled afterwards
with the canonical score (:func:`embeval.engine.similarity.canonical_dot`). So the bound must
hold for every pair, and it is pessimistic on purpose:

- splitting (as if ``a_hi`` and the tensor core's reading of ``a_lo`` truncated): each product is
  off by ``|a_hi (b_lo - b_lo')| + |(a_lo - a_lo') b_hi| + |a_lo b_lo| ≤ 3.01 · 2^-20 · |a||b|``;
- a chunk: ``3·CHUNK`` exact tf32 products summed in float32 in any order, each addition off by
  at most one unit in the last place (truncating tensor-core adders: ``u_t = 2^-23``, twice
  float32's round-to-nearest unit): within ``γ_3C(u_t) · Σ|terms|`` (Higham, *Accuracy and
  Stability of Numerical Algorithms*, 3.1; Fasi, Higham, Mikaitis and Pranesh, *Numerical
  behavior of NVIDIA tensor cores*, PeerJ CS 2021, for exact products and truncating adders);
- the ``⌈D / CHUNK⌉`` chunk sums added up: within ``γ_⌈D/C⌉(u_t) · Σ|chunk sums|``;
- the canonical score is within ``γ_h(2^-24) · |q||g|`` of the exact dot product, where
  ``h = ⌈D/16⌉ + 5`` is the most roundings on any product's path (its own, its lane's sums,
  the four levels of the lane tree: a summation tree's error is ``Σ_i |x_i| γ_{h_i}``);

and the metric transform adds the same few roundings as :func:`embeval.engine.rank.tie_tolerance`.
The sum is doubled for margin. ``input_precision="ieee"`` and Triton's interpreter (a float32
BLAS product per chunk) are inside it too. ``tests/engine/test_fused_bound.py`` checks it against
a truncating emulation on adversarial inputs.
"""

from __future__ import annotations

import torch

from embeval.engine.similarity import LANES, score_tolerance

__all__ = ["KERNEL_PRECISION", "CHUNK", "kernel_dot_error", "fused_tolerance"]

#: ``tl.dot``'s input precision in the fused kernel: float32-level accuracy on tensor cores
KERNEL_PRECISION = "tf32x3"
#: the most dimensions one ``tl.dot`` of the kernel sums before adding to the running sum (BK)
CHUNK = 32

_U = 2.0 ** -24  # float32 unit roundoff (round to nearest)
_UT = 2.0 ** -23  # a truncating float32 adder
_SPLIT = 3.01 * 2.0 ** -20  # tf32x3: the dropped a_lo·b_lo term and the tf32 truncation of a_lo, b_lo


def kernel_dot_error(dim: int, chunk: int = CHUNK) -> float:
    """Relative bound on |kernel dot - exact dot| / (|q|·|g|) of the chunked tf32x3 product of
    ``dim`` elements, ``chunk`` per ``tl.dot`` (splitting, chunk sums, the sum of the chunks)."""
    def gamma(n: int) -> float:
        return n * _UT / (1 - n * _UT)

    inner = gamma(3 * min(chunk, dim)) * (1 + 2 * 2.0 ** -10) * (1 + 2.0 ** -10) ** 2
    outer = gamma(-(-dim // chunk)) * (1 + inner) * (1 + 3 * 2.0 ** -10)
    return _SPLIT + inner + outer


def fused_tolerance(qemb: torch.Tensor, metric: str, gallery_max_norm: float) -> torch.Tensor:
    """[Q] float32: a bound on |fused-kernel score - canonical score| for any pair of query i.

    ``qemb`` [Q, D] float32 queries; ``gallery_max_norm``: the largest gallery row norm.
    """
    dim = qemb.shape[1]
    depth = -(-dim // LANES) + 5  # canonical order vs exact: roundings on a product's path
    gamma_c = depth * _U / (1 - depth * _U)
    rel = kernel_dot_error(dim) + gamma_c + 4 * _U  # + rounding of the norms behind |q||g|
    # the cosine: scaled by 1/(|q||g|), rounded three more times on each side
    return score_tolerance(qemb, metric, gallery_max_norm, dot_rel=rel, cos_rel=rel + 16 * _U)
