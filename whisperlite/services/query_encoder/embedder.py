"""The query encoder's domain logic, free of gRPC: validation, the query cache and micro-batching."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
from cachetools import LRUCache

from whisperlite.core.errors import InvalidArgument, Unavailable
from whisperlite.services.query_encoder.batcher import MicroBatcher
from whisperlite.services.query_encoder.metrics import CACHE_HITS, CACHE_MISSES
from whisperlite.core.encoders import Encoder, load_encoder
from whisperlite.core.encoders.clip import ImageDecodeError, decode_image
from whisperlite.core.text import has_visible_characters

log = logging.getLogger("whisperlite.query_encoder")


TOKEN_COUNT_CHUNK = 128
# Requests whose uncached texts hold at most this many characters (~100 us of tokenizing) are
# token-counted on the event loop.
INLINE_TOKEN_COUNT_CHARS = 256
# Niceness of the bulk model thread (and the torch worker threads it starts, which inherit it):
# when a query's forward pass and a bulk one both want the cores, the kernel gives the query's
# nearly all of them, and bulk work still takes every idle cycle.
BULK_THREAD_NICENESS = 19


def _lower_bulk_thread_priority() -> None:
    try:  # on Linux a thread id given to setpriority changes that thread alone
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_THREAD_NICENESS)
    except (AttributeError, OSError) as error:  # another OS: the lanes still keep their own threads
        log.warning("cannot lower the bulk model thread's priority", extra={"reason": str(error)})


class ModelLoadError(RuntimeError):
    """The configured model could not be loaded (missing path, unknown backend, no CUDA...)."""


@dataclass(frozen=True)
class EmbedderSettings:
    backend: str = "minilm"
    model: str | None = None
    device: str = "auto"
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    cache_size: int = 10_000
    max_text_chars: int = 2_000
    max_inputs: int = 2_048
    # One model call pads its texts to the longest: at most this many tokens in all (texts x longest),
    # so a call takes tens of milliseconds on a CPU and a query waits at most one bulk batch.
    max_batch_tokens: int = 1_024
    # The most tokens one request may ask for: max_inputs texts of 256 tokens (MiniLM's limit) fit.
    max_request_tokens: int = 524_288


def warm_up(encoder: Encoder, max_batch_size: int) -> None:
    """Run the first forward passes before SERVING instead of on callers' time.

    On CUDA, kernels load lazily and cuBLAS chooses algorithms per shape, so the first batch of
    each size stalls (measured on an H100: p99 876 ms under load without this, see
    docs/encoder.md); warm every batch size up to the maximum, short and long. On CPU one pass
    is enough.
    """
    encoder.count_text_tokens(["warm up"])  # builds the token counter before requests race to
    sizes = range(1, max_batch_size + 1) if encoder.device != "cpu" else [1]
    for size in sizes:
        for words in (4, 48):
            encoder.encode_texts(["warm up " * words] * size, batch_size=size)


class Embedder:
    """Loads one encoder and serves embeddings of validated texts and images.

    Texts go through an LRU cache (repeated queries are common) and then the text micro-batcher;
    images are not cached (large keys, rarely repeated) and have their own batcher.
    """

    def __init__(self, settings: EmbedderSettings):
        for name in ("max_batch_size", "max_text_chars", "max_inputs", "max_batch_tokens", "max_request_tokens"):
            if getattr(settings, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(settings, name)}")
        if settings.cache_size < 0:
            raise ValueError(f"cache_size: must be >= 0 (0 disables the cache), got {settings.cache_size}")
        self.settings = settings
        self.encoder: Encoder | None = None
        # One model thread per lane: more concurrent forward passes on the same weights only contend
        # for cores, but bulk work (item embedding) on a thread of its own never makes a query wait
        # for a bulk batch to finish.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._bulk_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="encoder-bulk", initializer=_lower_bulk_thread_priority
        )
        # text -> (read-only vector, its token count): a repeated text costs no tokenization either.
        self._cache: LRUCache[str, tuple[np.ndarray, int]] | None = LRUCache(settings.cache_size) if settings.cache_size else None
        self._texts: MicroBatcher[str] | None = None
        self._images: MicroBatcher[bytes] | None = None

    async def load(self) -> None:
        s = self.settings
        log.info("loading encoder", extra={"backend": s.backend, "model": s.model, "device": s.device})
        loop = asyncio.get_running_loop()
        try:
            encoder = await loop.run_in_executor(self._executor, lambda: load_encoder(s.backend, s.model, s.device))
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load the {s.backend} encoder (model {s.model or 'default'}): {error}") from error
        await loop.run_in_executor(self._executor, warm_up, encoder, s.max_batch_size)
        # One batch per model call: the batcher already sized it.
        self._texts = MicroBatcher(
            lambda texts: encoder.encode_texts(texts, batch_size=s.max_batch_size),
            max_batch_size=s.max_batch_size, max_wait_s=s.max_wait_ms / 1e3, executor=self._executor, kind="text",
            max_batch_cost=s.max_batch_tokens, bulk_executor=self._bulk_executor,
        )
        self._texts.start()
        if encoder.supports_images:
            # Images run on the bulk model thread: decoding and preprocessing a batch of photos takes seconds on a CPU,
            # which a shopper's text query must not wait for (the ranker embeds only texts).
            self._images = MicroBatcher(
                lambda images: encoder.encode_images(images, batch_size=s.max_batch_size),
                max_batch_size=s.max_batch_size, max_wait_s=s.max_wait_ms / 1e3, executor=self._bulk_executor, kind="image",
            )
            self._images.start()
        self.encoder = encoder
        log.info(
            "encoder loaded",
            extra={"model_name": encoder.name, "dimension": encoder.dimension, "device": encoder.device, "torch_threads": torch.get_num_threads()},
        )

    async def close(self) -> None:
        for batcher in (self._texts, self._images):
            if batcher is not None:
                await batcher.close()
        for executor in (self._executor, self._bulk_executor):
            executor.shutdown(wait=True, cancel_futures=True)

    def require_encoder(self) -> Encoder:
        if self.encoder is None:
            raise Unavailable("the encoder model is still loading; retry when health reports SERVING")
        return self.encoder

    async def embed(self, texts: list[str], images: list[bytes], bulk: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Embed texts and images; returns float32 (len(texts), d) and (len(images), d).

        `bulk` (the caller says it is catalog or ingest work) waits behind interactive requests; a request larger
        than one batch is bulk whatever the caller says, and one that fits a batch is interactive unless marked bulk.
        """
        encoder = self.require_encoder()
        self._validate(encoder, texts, images)
        if images:
            await self._check_images_decode(images)
        cached = self._cached(texts)
        tokens = await self._text_costs(encoder, texts, cached) if texts else {}
        missing = [text for text in tokens if text not in cached]
        # Decided by what the model has to compute; a request larger than one batch is bulk whatever its header claims,
        # or one caller's "interactive" 64 long texts would hold every shopper's query for seconds.
        oversized = len(missing) > self.settings.max_batch_size or len(missing) * max((tokens[t] for t in missing), default=0) > self.settings.max_batch_tokens
        bulk = oversized or bool(bulk)
        text_vectors, image_vectors = await asyncio.gather(self._embed_texts(texts, cached, tokens, bulk), self._embed_images(images, bulk))
        return text_vectors, image_vectors

    def _cached(self, texts: list[str]) -> dict[str, tuple[np.ndarray, int]]:
        """The texts found in the cache, with their vectors and token counts (counted as hits and misses)."""
        found: dict[str, tuple[np.ndarray, int]] = {}
        if self._cache is not None:
            for text in texts:
                entry = self._cache.get(text)
                if entry is not None:
                    found[text] = entry
        hits = sum(1 for text in texts if text in found)
        CACHE_HITS.inc(hits)
        CACHE_MISSES.inc(len(texts) - hits)
        return found

    async def _text_costs(self, encoder: Encoder, texts: list[str], cached: dict[str, tuple[np.ndarray, int]]) -> dict[str, int]:
        """Tokens of each distinct text (counted unless cached); refuses a request that no batch, or no request, budget admits."""
        unique = [text for text in dict.fromkeys(texts) if text not in cached]
        counts: dict[str, int] = {text: tokens for text, (_, tokens) in cached.items()}
        if unique and sum(map(len, unique)) <= INLINE_TOKEN_COUNT_CHARS:
            # A query's few words tokenize in tens of microseconds: less than the hop to a thread.
            counts.update(zip(unique, encoder.count_text_tokens(unique), strict=True))
        else:
            # Off the event loop, in chunks: thousands of long texts take seconds to tokenize, and a
            # query's own count must not wait behind all of them.
            for start in range(0, len(unique), TOKEN_COUNT_CHUNK):
                chunk = unique[start : start + TOKEN_COUNT_CHUNK]
                counts.update(zip(chunk, await asyncio.to_thread(encoder.count_text_tokens, chunk), strict=True))
        s = self.settings
        for index, text in enumerate(texts):
            if counts[text] > s.max_batch_tokens:
                raise InvalidArgument(
                    f"texts[{index}]: {counts[text]} tokens, over the {s.max_batch_tokens}-token batch budget "
                    "(--max-batch-tokens); send a shorter text"
                )
        total = sum(counts[text] for text in texts)
        if total > s.max_request_tokens:
            raise InvalidArgument(
                f"texts: {total} tokens in all, over the {s.max_request_tokens}-token request limit "
                "(--max-request-tokens); split the request"
            )
        return counts

    def _validate(self, encoder: Encoder, texts: list[str], images: list[bytes]) -> None:
        limit = self.settings.max_text_chars
        if not texts and not images:
            raise InvalidArgument("texts: at least one text (or, with an image backend, one image) is required")
        if len(texts) + len(images) > self.settings.max_inputs:
            raise InvalidArgument(
                f"texts, images: at most {self.settings.max_inputs} inputs per request, got {len(texts) + len(images)}; "
                "split the request"
            )
        for index, text in enumerate(texts):
            if not has_visible_characters(text):  # NUL, zero-width spaces, a BOM...: the vector of the empty text
                raise InvalidArgument(f"texts[{index}]: must hold a visible character, not only whitespace, control or format characters")
            if len(text) > limit:
                raise InvalidArgument(f"texts[{index}]: {len(text)} characters, the limit is {limit}")
        if images and not encoder.supports_images:
            raise InvalidArgument(
                f"images: the {encoder.backend} backend embeds text only; run the query encoder with --backend clip"
            )
        for index, image in enumerate(images):
            if not image:
                raise InvalidArgument(f"images[{index}]: empty bytes, expected an encoded image (PNG, JPEG, ...)")

    async def _embed_texts(
        self, texts: list[str], cached: dict[str, tuple[np.ndarray, int]], tokens: dict[str, int], bulk: bool
    ) -> np.ndarray:
        encoder = self.require_encoder()
        if not texts:
            return np.zeros((0, encoder.dimension), dtype=np.float32)
        found = {text: vector for text, (vector, _) in cached.items()}
        missing = list(dict.fromkeys(text for text in texts if text not in found))
        if missing:
            assert self._texts is not None
            computed = await self._texts.submit(missing, [tokens[text] for text in missing], bulk=bulk)
            for text, vector in zip(missing, computed, strict=True):
                found[text] = vector
                if self._cache is not None:
                    # A copy, so a cached row does not keep its whole batch's array alive.
                    row = vector.copy()
                    row.setflags(write=False)
                    self._cache[text] = (row, tokens[text])
        return np.stack([found[text] for text in texts])

    @staticmethod
    async def _check_images_decode(images: list[bytes]) -> None:
        # Before batching, so one bad image fails its own request and not the merged batch.
        def decode_all() -> None:
            for index, data in enumerate(images):
                decode_image(data, index)

        try:
            await asyncio.to_thread(decode_all)
        except ImageDecodeError as error:
            raise InvalidArgument(str(error)) from None

    async def _embed_images(self, images: list[bytes], bulk: bool) -> np.ndarray:
        encoder = self.require_encoder()
        if not images:
            return np.zeros((0, encoder.dimension), dtype=np.float32)
        assert self._images is not None
        return await self._images.submit(images, bulk=bulk)
