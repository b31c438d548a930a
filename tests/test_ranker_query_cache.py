"""The ranker's query-vector cache: bounded, read-only, and never mixing two encoder models' vectors."""

import numpy as np
import pytest

from whisperlite.services.ranker.query_cache import QueryVectorCache


def test_keeps_read_only_copies_and_evicts_the_least_recently_used():
    cache = QueryVectorCache(2)
    batch = np.arange(6, dtype=np.float32).reshape(3, 2)
    cache.put("m", ["a", "b"], batch[:2])
    batch[0] = -1  # the caller's array may change later: the cache holds its own copy
    assert cache.get("a").tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        cache.get("a")[0] = 5.0
    cache.put("m", ["c"], batch[2:])
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2


def test_a_vector_from_another_encoder_model_empties_the_cache():
    cache = QueryVectorCache(10)
    cache.put("minilm-v1", ["boots", "dress"], np.ones((2, 3), dtype=np.float32))
    cache.put("minilm-v2", ["coat"], np.zeros((1, 3), dtype=np.float32))
    assert cache.get("boots") is None and cache.get("dress") is None
    assert cache.get("coat").tolist() == [0.0, 0.0, 0.0] and len(cache) == 1


def test_size_zero_disables_it_and_a_negative_size_is_refused():
    cache = QueryVectorCache(0)
    cache.put("m", ["a"], np.ones((1, 2), dtype=np.float32))
    assert cache.get("a") is None and len(cache) == 0
    with pytest.raises(ValueError, match="query_cache_size"):
        QueryVectorCache(-1)
