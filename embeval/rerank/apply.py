"""One entry point for :func:`embeval.evaluation_stats`: re-ranked or expanded statistics."""

from __future__ import annotations

from embeval.data.relevance import Relevance
from embeval.data.store import EmbeddingSet
from embeval.engine.rank import Progress, rank_stats
from embeval.engine.stats import Protocol, RankStats
from embeval.errors import OptionError
from embeval.options import EvalOptions
from embeval.rerank.options import RerankOptions

__all__ = ["reranked"]


def reranked(query: EmbeddingSet, gallery: EmbeddingSet, opts: RerankOptions, o: EvalOptions, *,
             topk: int = 0, shard: tuple[int, int] | None = None,
             gallery_range: tuple[int, int] | None = None, progress: Progress | None = None,
             relevance: Relevance | None = None) -> RankStats:
    """The statistics of ``query`` × ``gallery`` (or its ``gallery_range``) under ``opts``.

    k-reciprocal re-ranking computes every item's neighbours, V and its expansion whole (the
    same in every shard), then ranks only ``gallery_range`` (shards merge exactly); QE / DBA
    compute the new embeddings (the same in every shard), then the usual pass ranks
    ``gallery_range``. ``shard`` is unused (``gallery_range`` is its range).
    """
    protocol = Protocol(o.exclude_same_camera, o.exclude_self)
    if opts.method is not None:
        if o.precision != "fp32":
            raise OptionError(f"rerank: k-reciprocal re-ranking runs in fp32 (its neighbour sets "
                              f"are exact), not {o.precision}", param=("rerank", "precision"))
        from embeval.rerank.kreciprocal import reranked_stats

        return reranked_stats(query, gallery, opts, metric=o.metric, protocol=protocol,
                              topk=topk, device=o.device, memory=o.memory,
                              block_size=o.block_size, backend=o.backend, progress=progress,
                              relevance=relevance, gallery_range=gallery_range)
    from embeval.rerank.expansion import expand

    query, gallery = expand(query, gallery, opts, metric=o.metric, exclude_self=o.exclude_self,
                            device=o.device, memory=o.memory)
    return rank_stats(query, gallery, metric=o.metric, protocol=protocol, topk=topk,
                      device=o.device, precision=o.precision, memory=o.memory,
                      block_size=o.block_size, backend=o.backend, gallery_range=gallery_range,
                      progress=progress, relevance=relevance)
