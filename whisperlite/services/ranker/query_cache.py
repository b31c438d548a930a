"""The ranker's cache of query vectors: a repeated request text skips the Embed call altogether.

The query encoder keeps its own cache, but a hit there still costs the ranker an Embed round trip
(a gRPC call, 384 floats through protobuf, the encoder's request handling): 0.33-0.88 ms of the
encoder's CPU per cached Recommend, ~8% of the stack's CPU per call at load (docs/performance.md).
Vectors belong to the encoder model that computed them: an Embed answered by another model (the
encoder was redeployed with new weights) empties the cache, so vectors of two models never mix.
"""

from __future__ import annotations

import numpy as np
from cachetools import LRUCache

from whisperlite.services.ranker.metrics import QUERY_CACHE_LOOKUPS


class QueryVectorCache:
    """Request text -> its read-only query vector, at most `size` texts (LRU); size 0 disables it."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"query_cache_size: must be >= 0 (0 disables the cache), got {size}")
        self._vectors: LRUCache[str, np.ndarray] | None = LRUCache(size) if size else None
        self._model_name: str | None = None
        # Bound once: every Recommend counts a lookup.
        self._hits, self._misses = QUERY_CACHE_LOOKUPS.labels("hit"), QUERY_CACHE_LOOKUPS.labels("miss")

    def get(self, text: str) -> np.ndarray | None:
        if self._vectors is None:
            return None
        vector = self._vectors.get(text)
        (self._hits if vector is not None else self._misses).inc()
        return vector

    def put(self, model_name: str, texts: list[str], vectors: np.ndarray) -> None:
        """Keeps the vectors the encoder model `model_name` computed for `texts`."""
        if self._vectors is None:
            return
        if model_name != self._model_name:
            self._vectors.clear()
            self._model_name = model_name
        for text, vector in zip(texts, vectors, strict=True):
            row = vector.copy()  # a copy, so a cached row does not keep its whole batch alive
            row.setflags(write=False)
            self._vectors[text] = row

    def __len__(self) -> int:
        return 0 if self._vectors is None else len(self._vectors)
