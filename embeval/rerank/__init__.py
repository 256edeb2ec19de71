"""Re-ranking and query expansion at any scale (issue 17).

- :mod:`.options`: :class:`RerankOptions` (no torch: the command line builds it while parsing);
- :mod:`.neighbours`: the exact k-nearest-neighbour graph of queries ∪ gallery, and each item's
  farthest distance, streamed in row blocks;
- :mod:`.kreciprocal`: k-reciprocal re-ranking (Zhong et al., CVPR 2017) as mergeable
  :class:`~embeval.engine.stats.RankStats`, without the (Q+G)² matrix;
- :mod:`.expansion`: average / alpha query expansion and database-side augmentation (new
  embeddings, then the usual exact pass).
"""

from embeval.rerank.options import RerankOptions

__all__ = ["RerankOptions"]
