"""The fused kernel's rounding bound (:func:`embeval.engine.fused_bound.fused_tolerance`) against
an emulation of ``tl.dot(input_precision="tf32x3")`` on tensor cores, pessimistic at every step:
operands split by truncation to tf32 (not rounding), the three partial products accumulated in
float32 with truncating additions (round toward zero: errors of one sign add up), in several
orders. Adversarial inputs: every mantissa bit set (the largest truncation loss), all products
of one sign, cancellation (q·g ≈ 0 and q ≈ g under euclid), one dominant element, long rows.
The canonical score is the reference the kernel's scores are settled against; float64 says how
far both are from the exact product. Needs no Triton.
"""

from __future__ import annotations

import pytest
import torch

from embeval.engine.fused_bound import CHUNK, fused_tolerance, kernel_dot_error
from embeval.engine.similarity import aux, canonical_dot, transform


def tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 → tf32 by truncation: the low 13 mantissa bits dropped."""
    return (x.view(torch.int32) & ~0x1FFF).view(torch.float32)


def toward_zero(x: torch.Tensor) -> torch.Tensor:
    """float64 → the float32 next to it on zero's side."""
    f = x.float()
    over = f.double().abs() > x.abs()
    return torch.where(over, f.nextafter(torch.zeros_like(f)), f)


def tf32x3(q: torch.Tensor, g: torch.Tensor, order: str, split: bool = True,
           chunk: int | None = CHUNK) -> torch.Tensor:
    """[n] the emulated kernel dot products of the rows of ``q``, ``g`` ([n, D] float32):
    ``chunk`` dimensions per ``tl.dot`` summed from zero, then added to the running sum (None:
    one chain over all of D, as ``tl.dot(a, b, acc)`` would)."""
    qh, gh = tf32(q), tf32(g)
    ql, gl = tf32(q - qh), tf32(g - gh)
    acc = torch.zeros(len(q), dtype=torch.float32)
    step = chunk or q.shape[1]
    for k in range(0, q.shape[1], step):
        c = slice(k, k + step)
        big = qh[:, c].double() * gh[:, c].double()  # tf32 × tf32: exact (and on tensor cores)
        small = [ql[:, c].double() * gh[:, c].double(), qh[:, c].double() * gl[:, c].double()]
        small = small if split else []
        if order == "triton":  # F32DotTC: a_lo·b_hi, then a_hi·b_lo, then a_hi·b_hi
            terms = torch.cat([*small, big], 1)
        elif order == "interleaved":
            terms = torch.stack([*small, big], 2).flatten(1)
        elif order == "reversed":
            terms = torch.cat([*small, big], 1).flip(1)
        else:
            terms = torch.cat([*small, big], 1)
            perm = torch.randperm(terms.shape[1], generator=torch.Generator().manual_seed(k))
            terms = terms[:, perm]
        part = torch.zeros(len(q), dtype=torch.float32) if chunk else acc
        for t in range(terms.shape[1]):
            part = toward_zero(part.double() + terms[:, t])
        acc = toward_zero(acc.double() + part.double()) if chunk else part
    return acc


def adversarial(kind: str, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(hash(kind) % 1000)
    if kind == "full_mantissa":  # 1.11...1 × 2^e: every bit below tf32's lost by truncation
        mant = torch.full((2, n, d), 2 - 2.0 ** -23)
        exp = torch.randint(-3, 3, (2, n, d), generator=gen).float()
        x = (mant * 2.0 ** exp).float()
        return x[0], x[1]
    if kind == "one_sign":  # every product positive: truncation errors all the same way
        x = torch.rand(2, n, d, generator=gen) + 0.5
        return x[0].float(), x[1].float()
    if kind == "orthogonal":  # q·g ≈ 0 against |q||g| = O(1)
        q = torch.randn(n, d, generator=gen, dtype=torch.float64)
        g = torch.randn(n, d, generator=gen, dtype=torch.float64)
        g -= (g * q).sum(1, keepdim=True) / (q * q).sum(1, keepdim=True) * q
        return q.float(), g.float()
    if kind == "near_copies":  # euclid: ‖q‖² + ‖g‖² - 2q·g cancels
        q = torch.randn(n, d, generator=gen)
        return q, (q + 1e-4 * torch.randn(n, d, generator=gen)).float()
    if kind == "dominant":  # one element carries the product, the rest are tiny
        q = torch.randn(n, d, generator=gen) * 1e-3
        g = torch.randn(n, d, generator=gen) * 1e-3
        q[:, 0], g[:, 0] = 1.0 + 2.0 ** -20, -(1.0 + 2.0 ** -21)
        return q, g
    raise ValueError(kind)


def kernel_and_canonical(q: torch.Tensor, g: torch.Tensor, metric: str, order: str,
                         split: bool = True, chunk: int | None = CHUNK
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(|kernel score - canonical score| [n], the bound [n], |kernel dot - exact dot| / |q||g|)."""
    qa, ga = aux(q, metric), aux(g, metric)
    kdot = tf32x3(q, g, order, split, chunk)
    kernel = transform(kdot, qa, ga, metric)
    canon = transform(canonical_dot(q, g), qa, ga, metric)
    eps = fused_tolerance(q, metric, float(torch.linalg.vector_norm(g.double(), dim=1).max()))
    exact = (q.double() * g.double()).sum(1)
    scale = torch.linalg.vector_norm(q.double(), dim=1) * torch.linalg.vector_norm(g.double(), dim=1)
    return (kernel.double() - canon.double()).abs(), eps.double(), (kdot.double() - exact).abs() / scale


KINDS = ("full_mantissa", "one_sign", "orthogonal", "near_copies", "dominant")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["inner", "cosine", "euclid", "sq_euclid"])
def test_the_bound_holds_for_the_emulated_tf32x3_product(kind: str, metric: str) -> None:
    for d, order in ((512, "triton"), (77, "interleaved"), (16, "reversed"), (300, "shuffled")):
        q, g = adversarial(kind, 64, d)
        diff, eps, rel = kernel_and_canonical(q, g, metric, order)
        assert bool((diff <= eps).all()), (d, order, float((diff / eps).max()))
        assert float(rel.max()) <= kernel_dot_error(d)
        canon = canonical_dot(q, g).double()  # the canonical term: ⌈D/16⌉ + 5 roundings deep
        h = -(-d // 16) + 5
        exact = (q.double() * g.double()).sum(1)
        scale = torch.linalg.vector_norm(q.double(), dim=1) * torch.linalg.vector_norm(g.double(), dim=1)
        assert bool(((canon - exact).abs() <= h * 2.0 ** -24 / (1 - h * 2.0 ** -24) * scale).all())


def test_the_emulation_can_break_a_bound() -> None:
    """The test above could fail: plain tf32 (no split: 11-bit operands) is off by far more
    than the bound, and so is one accumulation chain over all of D (``tl.dot(a, b, acc)``)
    where every product has one sign; the chunked emulation uses a visible part of the kernel's
    share of it."""
    q, g = adversarial("one_sign", 64, 512)
    diff, eps, _ = kernel_and_canonical(q, g, "inner", "triton", split=False)
    assert bool((diff > eps).any())
    _, _, rel = kernel_and_canonical(q, g, "inner", "interleaved", chunk=None)
    assert float(rel.max()) > kernel_dot_error(512)
    _, _, rel = kernel_and_canonical(q, g, "inner", "triton")
    assert float(rel.max()) > 0.05 * kernel_dot_error(512)
