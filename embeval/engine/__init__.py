"""The streaming engine (DESIGN.md section 4): exact per-query statistics without a Q×G matrix
or a sort.

- :mod:`.stats`: :class:`RankStats` (mergeable) and :class:`Protocol` (what a query ignores);
- :mod:`.similarity`: scores, the canonical dot product, devices, precisions, overflow bounds;
- :mod:`.plan`: memory budgets, gallery shards, the pass ``backend="auto"`` takes;
- :mod:`.rank`: :func:`rank_stats`, the one pass, run by :mod:`.cpu` (compiled
  :mod:`.kernels`), :mod:`.torch_pass` (CUDA, reduced precisions, small jobs) or
  :mod:`.triton_pass` (one fused Triton kernel, :mod:`.triton_kernel`, within the bound of
  :mod:`.fused_bound`; optional, imported only when run);
- :mod:`.distributed`: torchrun groups; :mod:`.hardest`: the item behind a hardest negative;
- :mod:`.trials` / :mod:`.trial_pass`: verification's trial counts (:class:`VerifyStats`) and
  their one pass, with the correctly rounded scores of :mod:`.exact` (fused on CUDA:
  :mod:`.triton_trials`, float64 products in :mod:`.triton_kernel`).
"""

from embeval.engine.plan import parse_memory, parse_shard, shard_range
from embeval.engine.rank import positive_pairs, rank_stats, tie_tolerance
from embeval.engine.stats import NO_INDEX, Protocol, RankStats, merge_topk

__all__ = ["NO_INDEX", "Protocol", "RankStats", "merge_topk", "rank_stats", "positive_pairs",
           "tie_tolerance", "parse_memory", "parse_shard", "shard_range"]
