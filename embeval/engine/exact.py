"""Dot products rounded once: the float32 nearest to the exact q·g, on any device, in any order.

The verification pass compares every impostor score with every genuine score, so its scores
must not depend on where a pair sits in a block (see :mod:`embeval.engine.similarity` for the
ranking pass's answer, the canonical summation order). Here each dot product is computed in
float64 (any order: a float64 matrix product), whose error is at most
``γ_D · |q|·|g|`` with γ_D = D·2^-53 / (1 - D·2^-53) (Higham, section 3.1). Rounding it to
float32 gives the correctly rounded exact value unless a float32 rounding boundary lies within
that error: such a pair is *ambiguous* (about one in 10^6 at D = 512) and is summed exactly
(:func:`math.fsum` of the float32 products, which float64 holds exactly).

The metric transform then runs in float32 as everywhere else, so a score is a function of the
pair alone: block size, shards, threads, devices and gallery order cannot change it.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dot_bound", "round_dots", "exact_dots", "pair_dots"]

_U64 = 2.0 ** -53


def dot_bound(norms: torch.Tensor, other_max: float, dim: int) -> torch.Tensor:
    """[N] float64: twice the largest error of any float64 dot product of a row with L2 norm
    ``norms`` [N] (float64) and a row of norm ≤ ``other_max``, in ``dim`` dimensions."""
    gamma = dim * _U64 / (1 - dim * _U64)
    return 2 * gamma * norms.double() * (float(other_max) * (1 + 1e-6)) + 1e-300


def round_dots(x: torch.Tensor, bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 rounding of the float64 dot products ``x``, ambiguous mask): where the interval
    ``x ± bound`` rounds to one float32, that is the exact product's rounding."""
    f = x.float()
    ambiguous = (x - bound).float() != (x + bound).float()
    return f, ambiguous


def exact_dots(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """[n] float32: the correctly rounded (nearest, ties to even) dot products of the rows of
    ``q`` and ``g`` ([n, D] float32), summed exactly. Slow (Python): for ambiguous pairs only."""
    out = torch.empty(len(q), dtype=torch.float32)
    prods = (q.double() * g.double()).tolist()  # float32 × float32 is exact in float64
    for i, p in enumerate(prods):
        s = math.fsum(p)  # the exact sum, rounded to float64 once
        f = torch.tensor(s, dtype=torch.float64).float()
        if float(f) != s:  # s may sit exactly on a float32 midpoint: which side is the exact sum?
            lo, hi = sorted((float(f), float(torch.nextafter(
                f, torch.tensor(math.copysign(math.inf, s - float(f)))))))
            mid = (lo + hi) / 2  # exact in float64
            if s == mid:
                side = math.fsum([*p, -mid])
                if side > 0:
                    f = torch.tensor(hi, dtype=torch.float32)
                elif side < 0:
                    f = torch.tensor(lo, dtype=torch.float32)
        out[i] = f
    return out


def pair_dots(q: torch.Tensor, g: torch.Tensor, bound: torch.Tensor | float,
              chunk: int = 1 << 14) -> torch.Tensor:
    """[n] float32 correctly rounded dot products of the rows of ``q`` and ``g`` ([n, D]).
    ``bound``: :func:`dot_bound` of each pair (or one number for all)."""
    out = torch.empty(len(q), dtype=torch.float32)
    for c in range(0, len(q), chunk):
        a, b = q[c:c + chunk], g[c:c + chunk]
        x = (a.double() * b.double()).sum(1)
        e = bound[c:c + chunk] if isinstance(bound, torch.Tensor) else bound
        f, amb = round_dots(x, e)  # type: ignore[arg-type]
        if bool(amb.any()):
            idx = amb.nonzero().flatten()
            f[idx] = exact_dots(a[idx], b[idx])
        out[c:c + chunk] = f
    return out
