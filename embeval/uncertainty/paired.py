"""Paired comparison of two results on the same queries (DESIGN.md section 7).

For every metric both results report from per-query values: A, B, the difference B − A, a
paired percentile bootstrap interval of it (one resample of units weighs A's and B's records
alike) and a two-sided p-value of a paired randomisation test: under the null hypothesis that
the two models are exchangeable on every unit (a query, or a label's queries with
``by="label"``), swapping A's and B's records within any set of units is as likely as the
observed assignment. For a mean metric a swap flips the sign of the unit's difference (the
sign-flip test); TPIR@FPIR is recomputed from the swapped records. With d units where A and B
differ, all 2^d assignments are enumerated when 2^d <= ``n_permutations`` (an exact p-value,
``#{|T*| >= |T|} / 2^d``), else ``n_permutations`` random ones give ``(1 + #{|T*| >= |T|}) /
(1 + n)``, never 0. Differences within 1e-12 of |T| count as ties (as extreme).

A metric without a value in A or B (nan: no query it averages over) is skipped, not tested.
The p-values are per metric and not corrected for comparing several metrics at once; ``p_holm``
holds Holm's step-down adjustment over the compared metrics (family-wise error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embeval.errors import OptionError
from embeval.options import MAX_RESAMPLES, IntervalOptions, check_resample_work, short_repr

from .bootstrap import (
    CHUNK_CELLS,
    PERMUTATION_STREAM,
    MeanStatistics,
    percentile_interval,
    record_weights,
    resample_counts,
    resampling_units,
)
from .confidence import Joined
from .listed import ListedTrials, VerificationStatistics, verification_keys
from .openset import OpenSetRecords, OpenSetStatistics, tpir_key
from .saved import SavedResult

__all__ = ["MetricComparison", "Comparison", "compare", "check_same_queries", "holm"]

TIE = 1e-12


@dataclass
class MetricComparison:
    """One metric: ``a``, ``b``, ``diff`` = b − a, ``ci`` of the difference (None: no
    resample had a value), two-sided ``p_value`` and its Holm adjustment ``p_holm``;
    ``n_differing``: units whose records of this metric differ; ``exact``: p enumerated all
    2^n_differing assignments."""

    a: float
    b: float
    diff: float
    ci: tuple[float, float] | None
    p_value: float
    p_holm: float
    n_differing: int
    exact: bool


@dataclass
class Comparison:
    """``metrics``: name → :class:`MetricComparison`; ``n_permutations``: random assignments
    of the metrics whose p-value is not exact; ``n_units``: resampling units; ``skipped``:
    metric names not compared, and why."""

    metrics: dict[str, MetricComparison]
    options: IntervalOptions
    n_permutations: int
    n_units: int
    skipped: dict[str, str] = field(default_factory=dict)


def check_same_queries(a: SavedResult, b: SavedResult) -> None:
    """Raise :class:`OptionError` naming the first difference unless ``a`` and ``b`` evaluated
    the same queries: count, labels in order, and the query items' fingerprint (labels, cameras
    and item paths, :func:`~embeval.uncertainty.saved.query_items`, when both files recorded
    paths). The embedding files themselves differ between two models."""
    if (a.command == "verify") != (b.command == "verify"):
        raise OptionError(f"{a.name} is a {a.command} result but {b.name} is a {b.command} result: "
                          "compare results of the same command (ranked queries and verification "
                          "trials do not pair)")
    if (a.listed is None) != (b.listed is None):
        raise OptionError(f"one of {a.name} and {b.name} holds listed trials (verify of listed pairs) "
                          "and the other does not: nothing to pair")
    if a.listed is not None and b.listed is not None:
        la, lb = a.listed, b.listed
        if len(la.scores) != len(lb.scores) or not torch.equal(la.genuine, lb.genuine) \
                or not torch.equal(la.labels, lb.labels):
            raise OptionError(f"{a.name} and {b.name} list different trials ({len(la.scores)} "
                              f"vs {len(lb.scores)}, or other genuine pairs or labels): a paired "
                              "comparison needs the same pairs file on the same items")
    if a.n_query != b.n_query:
        raise OptionError(f"{a.name} has {a.n_query} queries but {b.name} has {b.n_query}: a "
                          "paired comparison needs the same queries")
    if not torch.equal(a.query_labels, b.query_labels):
        i = int((a.query_labels != b.query_labels).nonzero()[0, 0])
        raise OptionError(f"{a.name} and {b.name} differ in the label of query {i} "
                          f"({int(a.query_labels[i])} vs {int(b.query_labels[i])}): not the same "
                          "queries in the same order")
    fa, fb = a.inputs.get("query_items"), b.inputs.get("query_items")
    if fa and fb and fa["paths"] and fb["paths"] and fa["sha256"] != fb["sha256"]:
        raise OptionError(f"{a.name} and {b.name} were computed on different query items (the "
                          "labels match but the cameras or item paths recorded in the query "
                          "files differ): a paired comparison needs the same queries")


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as ``p``)."""
    order = np.argsort(p, kind="stable")
    m, out, running = len(p), [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _shared(a: SavedResult, b: SavedResult) -> tuple[list[str], dict[str, str]]:
    """(the metric names both report and a resample recomputes: mean metrics, then TPIR@FPIR,
    then listed-trial verification metrics; skipped name → why)."""
    means = [k for k in a.terms if k in b.terms]
    skipped = {k: "reported by only one of the two" for k in [*a.metrics, *b.metrics]
               if (k in a.metrics) != (k in b.metrics)}
    tpirs = [k for k in a.metrics if k.startswith("TPIR@FPIR=") and k in b.metrics]
    if tpirs and (a.openset is None or b.openset is None
                  or a.options.get("fpir_rule") != b.options.get("fpir_rule")):
        skipped.update({k: "computed under different --fpir-rule" for k in tpirs})
        tpirs = []
    trials: list[str] = []
    if a.listed is not None and b.listed is not None:
        rules = {str(x.options.get("far_rule", "step")) for x in (a, b)}
        trials = [k for k in verification_keys(a.metrics, rules.pop() if len(rules) == 1 else "")
                  if k in b.metrics]
    names = means + tpirs + trials
    for k in a.metrics:
        if k in b.metrics and k not in names and k not in skipped:
            skipped[k] = "not recomputable from per-query values or listed trials"
    return names, skipped


def compare(a: SavedResult, b: SavedResult, options: IntervalOptions | None = None, *,
            n_permutations: int = 10000, **overrides: Any) -> Comparison:
    """Compare ``b`` with ``a`` on every shared metric (module doc). ``options`` / ``overrides``:
    :class:`~embeval.options.IntervalOptions` (level, bootstrap resamples, seed, unit)."""
    o = IntervalOptions.build(options, **overrides)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) \
            or not 1 <= n_permutations <= MAX_RESAMPLES:
        raise OptionError(f"n_permutations {short_repr(n_permutations)}: must be an integer from 1 to "
                          f"{MAX_RESAMPLES:,} (a limit on the work)", param="n_permutations")
    check_same_queries(a, b)
    n_records = len(_record_labels(a))
    check_resample_work(o.n_resamples, n_records)
    check_resample_work(n_permutations, n_records, "n_permutations")
    names, skipped = _shared(a, b)
    if not names:
        raise OptionError(f"{a.name} and {b.name} share no metric with per-query values or "
                          "listed trials (all-pairs verify results keep trial counts only)")
    labels = _record_labels(a)
    unit, n_units = resampling_units(labels, o.by)
    undefined = {k: "no value in one of the two (no query it averages over): nothing to test"
                 for k in names
                 if math.isnan(_value(a.metrics[k])) or math.isnan(_value(b.metrics[k]))}
    skipped.update(undefined)  # a nan observed difference would give p = 0
    names = [k for k in names if k not in undefined]
    if not names:
        return Comparison({}, o, n_permutations, n_units, skipped)
    both = np.concatenate([unit, unit])
    q = len(labels)
    statistic = _paired_statistic(a, b, names, both, n_units)
    records = record_weights(unit, n_units)
    boot = [_diff(statistic, records(c), None)
            for c in resample_counts(n_units, o.n_resamples, o.seed)]
    ci = percentile_interval(np.concatenate(boot), o.level)
    # p-values: exact enumeration per group of metrics that differ on the same few units,
    # random swaps (one seeded stream) for the others together
    differing = {k: _differing_units(a, b, k, unit) for k in names}
    groups: dict[tuple[int, ...], list[str]] = {}
    for k in names:
        small = 2 ** len(differing[k]) <= n_permutations
        groups.setdefault(tuple(differing[k]) if small else (-1,), []).append(k)
    p: dict[str, float] = {}
    for key, group in groups.items():
        exact = key != (-1,)
        units = np.array(key if exact else np.unique(np.concatenate(
            [differing[k] for k in group])), dtype=np.int64)
        stat = _paired_statistic(a, b, group, both, n_units)
        observed = _diff(stat, np.ones((1, q)), None)[0]
        extreme, total = np.zeros(len(group)), 0
        for swaps in _assignments(units, n_units, exact, n_permutations, o.seed):
            t = _diff(stat, None, records(swaps))
            tie = TIE * np.maximum(1.0, np.abs(observed))
            extreme += (np.abs(t) >= np.abs(observed) - tie).sum(0)
            total += len(t)
        values = extreme / total if exact else (1 + extreme) / (1 + total)
        p.update({k: float(v) for k, v in zip(group, values)})
    p_adj = holm([p[k] for k in names])
    out = {k: MetricComparison(_value(a.metrics[k]), _value(b.metrics[k]),
                               _value(b.metrics[k]) - _value(a.metrics[k]), ci[i], p[k], p_adj[i],
                               len(differing[k]), 2 ** len(differing[k]) <= n_permutations)
           for i, k in enumerate(names)}
    return Comparison(out, o, n_permutations, n_units, skipped)


def _value(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _record_labels(s: SavedResult) -> torch.Tensor:
    """The labels of the records a test resamples and swaps: listed trials or queries."""
    return s.listed.labels if s.listed is not None else s.query_labels


def _paired_statistic(a: SavedResult, b: SavedResult, names: list[str], unit: np.ndarray,
                      n_units: int) -> Joined:
    """One statistic of ``names`` (means, then TPIR, then listed-trial metrics, as
    :func:`_shared` orders them) over 2R records (A's, then B's)."""
    means = [k for k in names if k in a.terms]
    tpirs = [k for k in names if k.startswith("TPIR@FPIR=")]
    trials = [k for k in names if k not in means and k not in tpirs]
    parts: list[Any] = []
    if means:
        values = np.concatenate([_stack(a, means, "values"), _stack(b, means, "values")])
        include = np.concatenate([_stack(a, means, "include"), _stack(b, means, "include")])
        parts.append(MeanStatistics(values, include, unit, n_units))
    if tpirs:
        assert a.openset is not None and b.openset is not None
        records = OpenSetRecords(*(torch.cat([x, y]) for x, y in zip(a.openset, b.openset)))
        parts.append(OpenSetStatistics(records, [tpir_key(k) for k in tpirs],
                                       str(a.options["fpir_rule"])))
    if trials:
        assert a.listed is not None and b.listed is not None
        listed = ListedTrials(*(torch.cat([x, y]) for x, y in zip(a.listed, b.listed)))
        parts.append(VerificationStatistics(listed, trials))
    return Joined(parts)


def _stack(s: SavedResult, names: list[str], what: str) -> np.ndarray:
    return np.stack([getattr(s.terms[k], what).numpy() for k in names], axis=1)


def _diff(statistic: Joined, counts: np.ndarray | None, swaps: np.ndarray | None) -> np.ndarray:
    """``[b, M]`` B* − A* over A's records then B's: under a resample (record ``counts``
    [b, R], the same for both), or a permutation (0/1 ``swaps`` [b, R]: A* takes B's record
    where 1, B* A's). Mean metrics take the short way (:meth:`MeanStatistics.paired`)."""
    if counts is not None:
        keep, swap = counts, np.zeros_like(counts)
    else:
        assert swaps is not None
        keep, swap = 1 - swaps, swaps
    cols = []
    for part in statistic.parts:
        if isinstance(part, MeanStatistics):
            a, b = part.paired(counts, swaps)
        else:
            both = part(np.concatenate([np.concatenate([keep, swap], axis=1),
                                        np.concatenate([swap, keep], axis=1)]))
            a, b = both[:len(keep)], both[len(keep):]
        cols.append(b - a)
    return np.concatenate(cols, axis=1)


def _differing_units(a: SavedResult, b: SavedResult, name: str, unit: np.ndarray) -> np.ndarray:
    """The units where A's and B's records of metric ``name`` differ (swapping the others
    changes nothing), ascending."""
    if name in a.terms:
        ta, tb = a.terms[name], b.terms[name]
        differ = ((ta.values != tb.values) | (ta.include != tb.include)).numpy()
    elif not name.startswith("TPIR@FPIR="):
        assert a.listed is not None and b.listed is not None
        differ = (a.listed.scores != b.listed.scores).numpy()
    else:
        assert a.openset is not None and b.openset is not None
        differ = np.zeros(a.n_query, dtype=bool)
        for x, y in zip(a.openset, b.openset):
            differ |= (x != y).numpy()
    return np.unique(unit[differ])


def _assignments(differing: np.ndarray, n_units: int, exact: bool, n: int,
                 seed: int) -> Any:
    """Chunks ``[b, U]`` of 0/1 swap indicators: all 2^d over ``differing`` (exact), or ``n``
    random ones (seeded; the same for any chunking)."""
    d = len(differing)
    count = 2 ** d if exact else n
    rows = max(1, CHUNK_CELLS // max(n_units, 1))
    rng = np.random.default_rng([seed, PERMUTATION_STREAM])
    for start in range(0, count, rows):
        idx = np.arange(start, min(count, start + rows))
        chunk = np.zeros((len(idx), n_units))
        if exact:
            chunk[:, differing] = (idx[:, None] >> np.arange(d)[None, :]) & 1
        elif d:  # int64 draws: one call gives the stream of len(idx) calls of d
            chunk[:, differing] = rng.integers(0, 2, size=(len(idx), d))
        yield chunk
