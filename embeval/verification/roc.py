"""Verification metrics from trial counts: the ROC, TAR@FAR, EER and AUC, exactly.

Accept a trial iff its score ≥ the threshold. At threshold t, TPR(t) = #genuine ≥ t / #genuine
and FAR(t) = FPR(t) = #impostor ≥ t / #impostor (DESIGN.md section 7):

- ``TAR@FAR=f`` (rule ``step``, the default): the largest TPR over thresholds with FAR ≤ f;
  its threshold is the highest one reaching it (the lowest accepted genuine score). Rule
  ``nearest`` (insightface): the TPR of the ROC point whose FAR is nearest to f
  (:func:`nearest_far`, needs every score).
- ``EER``: where FNR = FPR on the ROC drawn as straight segments between consecutive points;
  ``EER_threshold``: the highest genuine score whose FNR ≤ EER.
- ``AUC``: P(genuine > impostor) + ½ P(tie) (= scikit-learn's ``roc_auc_score``).

The ROC's points at genuine scores and at the ends of impostor-only runs between them are
exact from :class:`~embeval.engine.trials.VerifyStats`; points inside such a run share one
TPR and lie on one horizontal segment, so the polyline, the EER and every TAR@FAR are those
of the full ROC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

from embeval.engine.trials import VerifyStats
from embeval.errors import OptionError

__all__ = ["Curve", "curve", "far_count", "tar_at_far", "eer", "auc", "nearest_far",
           "nearest_far_candidates", "verification_metrics", "DEFAULT_FARS", "FAR_RULES",
           "check_fars", "far_key"]

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FAR_RULES = ("step", "nearest")
INF = float("inf")


def far_key(prefix: str, f: float) -> str:
    """``TAR@FAR=1e-06``: the metric's name for target ``f``."""
    return f"{prefix}={f:g}"


def check_fars(fars: Sequence[float], param: str = "fars") -> list[float]:
    """The targets, each in (0, 1); raises :class:`OptionError` naming ``param``."""
    out = []
    for f in fars:
        if not (isinstance(f, (int, float)) and 0 < f < 1):
            raise OptionError(f"{param}: {f!r} is not a rate in (0, 1)", param=param)
        out.append(float(f))
    return out


@dataclass
class Curve:
    """ROC points in order of decreasing threshold: ``fp``/``tp`` [V] int64 counts of accepted
    impostor / genuine trials, ``threshold`` [V] float32 (accept iff score ≥ it; +inf first, -inf
    for the last point when impostors score below every genuine), ``genuine`` [V] int64: index
    into ``gen_values`` of the lowest genuine score ≥ the threshold (U where none)."""

    fp: torch.Tensor
    tp: torch.Tensor
    threshold: torch.Tensor
    genuine: torch.Tensor
    n_genuine: int
    n_impostor: int

    @property
    def fpr(self) -> torch.Tensor:
        return self.fp.double() / max(self.n_impostor, 1)

    @property
    def tpr(self) -> torch.Tensor:
        return self.tp.double() / max(self.n_genuine, 1)


def curve(stats: VerifyStats) -> Curve:
    """The exact ROC points at every genuine score and at the low end of every impostor-only run
    (there the threshold is the next float32 above the genuine score below the run)."""
    u, slots = stats.gen_values, stats.imp_slots
    n_u = len(u)
    z = torch.arange(2 * n_u, -1, -1)  # slots from the top
    fp = torch.cumsum(slots.flip(0), 0)
    gsuffix = torch.cat([torch.cumsum(stats.gen_counts.flip(0), 0).flip(0),
                         torch.zeros(1, dtype=torch.int64)])
    tp = gsuffix[z // 2]
    odd = z % 2 == 1
    below = (z // 2 - 1).clamp_min(0)
    u_pad = u if n_u else torch.zeros(1)
    thr = torch.where(odd, u_pad[((z - 1) // 2).clamp_min(0)],
                      torch.nextafter(u_pad[below], torch.tensor(INF)))
    thr = torch.where((z == 0) & ~odd, torch.tensor(-INF), thr)
    gen = torch.where(odd, (z - 1) // 2, z // 2)
    keep = odd | (slots.flip(0) > 0)
    zero = torch.zeros(1, dtype=torch.int64)
    return Curve(torch.cat([zero, fp[keep]]), torch.cat([zero, tp[keep]]),
                 torch.cat([torch.tensor([INF]), thr[keep].float()]),
                 torch.cat([torch.tensor([n_u]), gen[keep]]), stats.n_genuine, stats.n_impostor)


def far_count(f: float, n: int) -> int:
    """The largest count c with c / n ≤ f as floats compare (``fpr <= f`` of a dense ROC)."""
    c = math.floor(f * n)
    while (c + 1) / n <= f:
        c += 1
    while c > 0 and c / n > f:
        c -= 1
    return c


def tar_at_far(stats: VerifyStats, f: float) -> tuple[float, float | None] | None:
    """(TAR, threshold) at FAR ≤ ``f`` (rule ``step``); None when fewer than 1/f impostors.

    The (m+1)-th highest impostor score t*, m = ``far_count(f, N)``, lies in a known slot; every
    threshold above t* has FAR ≤ f, and the TAR is the share of genuine scores above t*.
    """
    n_imp, n_gen = stats.n_impostor, stats.n_genuine
    if n_imp * f < 1:
        return None
    if n_gen == 0:
        return math.nan, None
    m = far_count(f, n_imp)
    cum = torch.cumsum(stats.imp_slots.flip(0), 0)
    z = len(stats.imp_slots) - 1 - int(torch.searchsorted(cum, torch.tensor([m + 1]))[0])
    j = (z + 1) // 2  # the lowest genuine value above t*
    accepted = int(stats.gen_counts[j:].sum())
    return accepted / n_gen, (float(stats.gen_values[j]) if j < len(stats.gen_values) else None)


def eer(c: Curve, gen_values: torch.Tensor) -> tuple[float, float | None]:
    """(EER, EER_threshold) on the ROC polyline; (nan, None) without genuine or impostor trials."""
    ng, ni = c.n_genuine, c.n_impostor
    if ng == 0 or ni == 0:
        return math.nan, None
    # h = FPR + TPR reaches 1 (FPR = FNR) on the first segment whose end has h >= 1
    h = c.fp.double() / ni + c.tp.double() / ng
    b = int(torch.searchsorted(h, torch.tensor([1.0 - 1e-9], dtype=torch.float64))[0])
    b = max(b, 1)

    def reached(k: int) -> bool:  # exactly: fp/ni + tp/ng >= 1
        return int(c.fp[k]) * ng + int(c.tp[k]) * ni >= ni * ng

    while b > 1 and reached(b - 1):
        b -= 1
    while not reached(b):
        b += 1
    fa, ta, fb, tb = (int(c.fp[b - 1]), int(c.tp[b - 1]), int(c.fp[b]), int(c.tp[b]))
    # on the segment, FPR = (fa + α (fb - fa)) / ni and TPR = (ta + α (tb - ta)) / ng
    alpha = Fraction(ni * ng - fa * ng - ta * ni, (fb - fa) * ng + (tb - ta) * ni)
    rate = (fa + alpha * (fb - fa)) / Fraction(ni)
    g = min(int(c.genuine[b]), len(gen_values) - 1)
    return float(rate), float(gen_values[g])


def auc(stats: VerifyStats) -> float:
    """P(genuine > impostor) + ½ P(genuine = impostor); nan without either kind of trial."""
    ng, ni = stats.n_genuine, stats.n_impostor
    if ng == 0 or ni == 0:
        return math.nan
    slots = stats.imp_slots
    below = torch.cumsum(slots, 0)[0::2][:-1]  # impostors below gen_values[i]: slots 0..2i
    equal = slots[1::2]
    wins = (stats.gen_counts.double() * (below.double() + 0.5 * equal.double())).sum()
    return float(wins / ng / ni)


def nearest_far(genuine: torch.Tensor, impostor: torch.Tensor,
                fars: Sequence[float]) -> dict[float, float]:
    """insightface's reading of TAR@FAR, from every score (listed trials): scikit-learn's
    ``roc_curve`` points (collinear points dropped, its default), and for each f the TPR of
    the point whose FPR is nearest to f, the highest TPR among equally near points."""
    ng, ni = len(genuine), len(impostor)
    if ng == 0 or ni == 0:
        return {}
    scores = torch.cat([genuine.double(), impostor.double()])
    is_gen = torch.cat([torch.ones(ng, dtype=torch.int64), torch.zeros(ni, dtype=torch.int64)])
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], is_gen[order]
    last = torch.ones(len(s), dtype=torch.bool)  # the last of each run of equal scores
    last[:-1] = s[1:] != s[:-1]
    near = _nearest(torch.cumsum(1 - y, 0)[last], torch.cumsum(y, 0)[last], ng, ni, fars)
    return {f: tpr for f, (tpr, _) in near.items()}


def _nearest(fps: torch.Tensor, tps: torch.Tensor, ng: int, ni: int,
             fars: Sequence[float]) -> dict[float, tuple[float, float]]:
    """For each f: (TPR, distance |FPR - f|) of :func:`nearest_far`'s point, from the ROC points
    ``fps`` / ``tps`` [V] int64 (accepted impostor / genuine trials at each distinct score, in
    order of decreasing score; before scikit-learn drops collinear points)."""
    if len(fps) > 2:  # scikit-learn's drop_intermediate: drop points collinear with both neighbours
        bend = ((fps[2:] - 2 * fps[1:-1] + fps[:-2]) != 0) | ((tps[2:] - 2 * tps[1:-1] + tps[:-2]) != 0)
        keep = torch.cat([torch.tensor([True]), bend, torch.tensor([True])])
        fps, tps = fps[keep], tps[keep]
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fps.double() / ni])
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tps.double() / ng])
    out = {}
    for f in fars:
        d = (fpr - f).abs()
        best = torch.nonzero(d == d.min()).flatten()
        out[f] = (float(tpr[best[-1]]), float(d.min()))
    return out


def nearest_far_candidates(stats: VerifyStats, fars: Sequence[float]) -> dict[float, list[float]]:
    """Every value :func:`nearest_far` can give on scores with these trial counts, for each f
    (none without genuine or impostor trials), so that a saved one can be checked.

    The counts fix every ROC point (:func:`curve`) except those inside an impostor-only run,
    whose scores are not kept; such points share the run's TPR. The first value is the one of
    scores whose impostors tie within each run (the curve's points alone); the others are the
    TPRs of the runs with room for a point at most as near f (a superset, exact but for ties).
    """
    ng, ni = stats.n_genuine, stats.n_impostor
    if ng == 0 or ni == 0:
        return {}
    c = curve(stats)
    base = _nearest(c.fp[1:], c.tp[1:], ng, ni, fars)
    run = (c.tp[1:] == c.tp[:-1]) & (c.fp[1:] - c.fp[:-1] >= 2)  # an impostor run with an inside
    lo, hi, tpr = c.fp[:-1][run] + 1, c.fp[1:][run] - 1, c.tp[1:][run].double() / ng
    out = {}
    for f, (value, dist) in base.items():
        k = torch.minimum(torch.maximum(torch.full_like(lo, round(f * ni)), lo), hi)  # nearest f
        room = tpr[(k.double() / ni - f).abs() <= dist].tolist()
        out[f] = [value, *sorted(set(room) - {value})]
    return out


def verification_metrics(stats: VerifyStats, fars: Sequence[float] = DEFAULT_FARS, *,
                         far_rule: str = "step",
                         scores: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Every metric of a verification run, in the ``--json`` order: ``TAR@FAR={f:g}`` and
    ``threshold@FAR={f:g}`` for each target with enough impostors, ``EER``, ``EER_threshold``,
    ``AUC``, ``n_genuine``, ``n_impostor``. ``far_rule="nearest"`` needs ``scores``
    (genuine, impostor) and gives no threshold."""
    out: dict[str, float] = {}
    near = None
    if far_rule == "nearest":
        if scores is None:
            raise OptionError("far_rule nearest needs every trial's score", param="far_rule")
        near = nearest_far(*scores, [f for f in fars if stats.n_impostor * f >= 1])
    elif far_rule != "step":
        raise OptionError(f"far_rule: unknown rule {far_rule!r} ({', '.join(FAR_RULES)})",
                          param="far_rule")
    for f in fars:
        hit = tar_at_far(stats, f)
        if hit is None:
            continue
        if near is not None:
            out[far_key("TAR@FAR", f)] = near.get(f, math.nan)
        else:
            out[far_key("TAR@FAR", f)] = hit[0]
            out[far_key("threshold@FAR", f)] = math.nan if hit[1] is None else hit[1]
    c = curve(stats)
    rate, thr = eer(c, stats.gen_values)
    out["EER"] = rate
    out["EER_threshold"] = math.nan if thr is None else thr
    out["AUC"] = auc(stats)
    out["n_genuine"] = stats.n_genuine
    out["n_impostor"] = stats.n_impostor
    return out
