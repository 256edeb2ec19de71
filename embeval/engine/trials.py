"""The mergeable statistics of a verification run: every (query, gallery) pair is a trial.

Genuine trials (same known label) are few: their scores are kept, as distinct values with
counts. Impostor trials are many: each is only counted, in the *slot* its score falls in
among the genuine values (strictly between two consecutive ones, or equal to one). Every
point of the ROC at a genuine score, TAR@FAR, the EER and the AUC follow exactly from these
counts (:mod:`embeval.verification.roc`); slot counts of disjoint trial sets add up, so
gallery shards, query shards and torchrun ranks merge by addition.

A radix histogram of the impostor scores (the top 16 bits of their order-preserving key)
is kept for plots.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = ["VerifyStats", "KEY_BINS", "ordered_keys", "slot_of", "slot_table", "genuine_values"]

KEY_BINS = 1 << 16


def ordered_keys(x: torch.Tensor) -> torch.Tensor:
    """[N] int64 order-preserving keys of float32 scores (uint32 range; -0.0 counts as +0.0):
    ``bits ^ 0xFFFFFFFF`` for negative numbers, ``bits | 0x80000000`` otherwise."""
    bits = (x.float() + 0.0).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 0x80000000, bits ^ 0xFFFFFFFF, bits | 0x80000000)


def slot_of(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[N] int64 slot of each score ``x`` among the ascending distinct ``values`` [U]:
    ``2i + 1`` when it equals ``values[i]``, ``2i`` when strictly between ``values[i-1]`` and
    ``values[i]`` (``values[-1] = -inf``, ``values[U] = +inf``)."""
    if len(values) == 0:
        return torch.zeros(x.shape, dtype=torch.int64, device=x.device)
    r = torch.searchsorted(values, x.contiguous(), right=True)
    equal = (r > 0) & (values[(r - 1).clamp_min(0)] == x)
    return 2 * r - equal.long()


def slot_table(u: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The kernel's slot bounds: bin t of T equal bins over [u_0, u_last] starts at
    ``base + t / scale``; ``table[t]`` [T + 1] = #u below that edge (``table[T]`` = U)."""
    if len(u) == 0:
        return np.zeros(2, np.int64), 0.0, 0.0
    n = int(min(max(4 * len(u), 16), 1 << 22))
    base, top = float(u[0]), float(u[-1])
    scale = n / (top - base) if top > base else 0.0
    edges = base + np.arange(n, dtype=np.float64) / scale if scale else np.full(1, base)
    table = np.searchsorted(u.astype(np.float64), edges, side="left").astype(np.int64)
    return np.append(table, len(u)), base, scale


def genuine_values(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct genuine scores, ascending ([U] float32, -0.0 as +0.0), and their counts ([U] int64)."""
    values, counts = torch.unique(scores.float() + 0.0, sorted=True, return_counts=True)
    return values, counts.long()


@dataclass
class VerifyStats:
    """Trial counts of one verification run.

    ``gen_values`` [U] float32: the distinct genuine scores, ascending; ``gen_counts`` [U] int64
    their multiplicities. ``imp_slots`` [2U + 1] int64: impostors per slot (:func:`slot_of`).
    ``imp_keys`` [65536] int64: impostors by ``ordered_keys(score) >> 16`` (plots only).
    ``n_query`` / ``n_gallery``: the sizes of the sets paired (0 for listed trials).
    """

    metric: str
    gen_values: torch.Tensor
    gen_counts: torch.Tensor
    imp_slots: torch.Tensor
    imp_keys: torch.Tensor
    n_query: int = 0
    n_gallery: int = 0

    @property
    def n_genuine(self) -> int:
        return int(self.gen_counts.sum())

    @property
    def n_impostor(self) -> int:
        return int(self.imp_slots.sum())

    @classmethod
    def empty(cls, genuine: torch.Tensor, metric: str, n_query: int = 0,
              n_gallery: int = 0) -> VerifyStats:
        """No impostor counted yet: the start of a pass, from all its genuine scores [M]."""
        values, counts = genuine_values(genuine)
        return cls(metric, values, counts, torch.zeros(2 * len(values) + 1, dtype=torch.int64),
                   torch.zeros(KEY_BINS, dtype=torch.int64), n_query, n_gallery)

    @classmethod
    def from_scores(cls, genuine: torch.Tensor, impostor: torch.Tensor,
                    metric: str = "cosine") -> VerifyStats:
        """The statistics of listed trials whose scores are all at hand ([M] and [N] float32)."""
        out = cls.empty(genuine, metric)
        out.add_impostors(impostor.float().flatten())
        return out

    def add_impostors(self, scores: torch.Tensor) -> None:
        """Count impostor scores ([N] float32, exact) in place."""
        slots = slot_of(scores, self.gen_values.to(scores.device))
        self.imp_slots += torch.bincount(slots, minlength=len(self.imp_slots)).cpu()
        keys = ordered_keys(scores) >> 16
        self.imp_keys += torch.bincount(keys, minlength=KEY_BINS).cpu()

    def merge(self, other: VerifyStats) -> VerifyStats:
        """The statistics of two disjoint sets of impostor trials (same genuine trials)."""
        if (self.metric != other.metric or (self.n_query, self.n_gallery) != (other.n_query, other.n_gallery)
                or not torch.equal(self.gen_values, other.gen_values)
                or not torch.equal(self.gen_counts, other.gen_counts)):
            raise ValueError("cannot merge verification statistics with different genuine trials: "
                             "shards must split one run's impostor trials")
        return replace(self, imp_slots=self.imp_slots + other.imp_slots,
                       imp_keys=self.imp_keys + other.imp_keys)
