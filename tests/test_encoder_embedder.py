"""The query encoder's domain layer without gRPC: readiness, settings and cache behaviour."""

import numpy as np
import pytest

from whisperlite.core.errors import InvalidArgument, Unavailable
from whisperlite.services.query_encoder.embedder import Embedder, EmbedderSettings, ModelLoadError


async def test_requests_before_the_model_is_loaded_are_unavailable():
    embedder = Embedder(EmbedderSettings())
    with pytest.raises(Unavailable, match="still loading"):
        await embedder.embed(["boots"], [])
    await embedder.close()


@pytest.mark.parametrize(
    ("field", "value"), [("max_batch_size", 0), ("max_text_chars", 0), ("max_inputs", 0), ("cache_size", -1)]
)
def test_settings_out_of_range_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        Embedder(EmbedderSettings(**{field: value}))


async def test_unloadable_model_raises_model_load_error(tmp_path):
    embedder = Embedder(EmbedderSettings(backend="clip", model=str(tmp_path / "missing")))
    with pytest.raises(ModelLoadError, match="does not exist"):
        await embedder.load()
    await embedder.close()


async def test_cache_disabled_still_embeds_and_cached_vectors_are_read_only():
    uncached = Embedder(EmbedderSettings(cache_size=0, device="cpu"))
    cached = Embedder(EmbedderSettings(cache_size=10, device="cpu"))
    await uncached.load()
    await cached.load()
    try:
        a, _ = await uncached.embed(["wool scarf", "wool scarf"], [])
        b, _ = await cached.embed(["wool scarf"], [])
        c, _ = await cached.embed(["wool scarf"], [])
        np.testing.assert_allclose(a[0], a[1])
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)
        np.testing.assert_array_equal(b, c)
        c[0, 0] = 42.0  # the caller's copy; the cache must not change
        d, _ = await cached.embed(["wool scarf"], [])
        np.testing.assert_array_equal(d, b)
        with pytest.raises(InvalidArgument, match=r"texts\[0\]"):
            await cached.embed([" "], [])
    finally:
        await uncached.close()
        await cached.close()


async def test_token_budgets_hold_for_short_texts_counted_inline_and_long_ones_counted_in_a_thread():
    embedder = Embedder(EmbedderSettings(device="cpu", max_batch_tokens=24, max_request_tokens=40, cache_size=0))
    await embedder.load()
    try:
        short = "a light linen dress for a summer wedding by the sea with friends and family"  # 17 tokens, counted inline
        long = "wool " * 60  # 62 tokens in 300 characters: counted in a worker thread
        with pytest.raises(InvalidArgument, match=r"texts\[0\]: 62 tokens, over the 24-token batch budget"):
            await embedder.embed([long], [])
        vectors, _ = await embedder.embed([short], [])
        assert vectors.shape == (1, 384)
        with pytest.raises(InvalidArgument, match=r"texts\[1\]: 32 tokens, over the 24-token batch budget"):
            await embedder.embed([short, short + " " + short], [])
        with pytest.raises(InvalidArgument, match=r"54 tokens in all, over the 40-token request limit"):
            await embedder.embed([short, short + " again", short + " once more"], [])
    finally:
        await embedder.close()
