"""Asks the query encoder service for item vectors (items upserted without one) and for its model."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import numpy as np

from services.common.channels import create_channel
from services.common.errors import FailedPrecondition, Unavailable
from whisperlite.encoders import item_text
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc

# Texts per Embed call (fewer when the encoder accepts fewer): small enough that one call's work
# fits its deadline on a CPU.
EMBED_BATCH = 128
# Codes that say the encoder may answer later; any other is a fault retrying will not fix.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class EncoderModel:
    name: str
    dimension: int
    max_text_chars: int
    max_inputs: int


class ItemEmbedder:
    def __init__(self, address: str, timeout_seconds: float = 120.0):
        self.address = address
        self._timeout = timeout_seconds
        self._channel: grpc.aio.Channel | None = None
        self._stub: query_encoder_pb2_grpc.QueryEncoderServiceStub | None = None
        self._model: EncoderModel | None = None

    def _client(self) -> query_encoder_pb2_grpc.QueryEncoderServiceStub:
        if self._stub is None:
            self._channel = create_channel(self.address)
            self._stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(self._channel)
        return self._stub

    async def model(self, wait_seconds: float | None = None) -> EncoderModel:
        """The encoder's model; waits up to `wait_seconds` for an encoder that is still starting."""
        if self._model is not None:
            return self._model
        deadline = time.monotonic() + (self._timeout if wait_seconds is None else wait_seconds)
        while True:
            remaining = deadline - time.monotonic()
            try:
                info = await self._client().GetModelInfo(
                    query_encoder_pb2.GetModelInfoRequest(), timeout=max(remaining, 0.1), wait_for_ready=True
                )
                break
            except grpc.aio.AioRpcError as error:
                # UNAVAILABLE also covers "model still loading": retry until the deadline.
                if error.code() != grpc.StatusCode.UNAVAILABLE or remaining <= 0:
                    raise self._failure("GetModelInfo", error) from None
                await asyncio.sleep(min(1.0, max(remaining, 0)))
        self._model = EncoderModel(info.model_name, info.dimension, info.max_text_chars, info.max_inputs)
        return self._model

    async def embed_items(self, titles_and_texts: list[tuple[str, str]], expected_model: str) -> np.ndarray:
        """Vectors for `item_text(title, text)` of each item, in order; refuses a different model's vectors."""
        model = await self.model()
        if expected_model and model.name != expected_model:
            raise FailedPrecondition(
                f"the query encoder at {self.address} serves {model.name!r} but the catalog holds vectors from "
                f"{expected_model!r}; send vectors with the items or point the catalog at a matching encoder"
            )
        # The model reads at most a few hundred tokens; the encoder refuses longer input rather than
        # cutting it, so the catalog sends the leading part (the stored text stays whole).
        texts = [item_text(title, text)[: model.max_text_chars or None] for title, text in titles_and_texts]
        vectors = []
        batch_size = min(EMBED_BATCH, model.max_inputs or EMBED_BATCH)
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            try:
                response = await self._client().Embed(query_encoder_pb2.EmbedRequest(texts=batch), timeout=self._timeout)
            except grpc.aio.AioRpcError as error:
                raise self._failure("Embed", error) from None
            if response.model_name != model.name:
                self._model = None  # the encoder was swapped under us: re-read it next time
                raise FailedPrecondition(f"the query encoder changed model mid-request ({model.name!r} -> {response.model_name!r})")
            vectors.append(np.asarray([v.values for v in response.text_vectors], dtype=np.float32).reshape(len(batch), -1))
        return np.concatenate(vectors) if vectors else np.zeros((0, model.dimension), dtype=np.float32)

    def _failure(self, method: str, error: grpc.aio.AioRpcError) -> Unavailable | FailedPrecondition:
        """UNAVAILABLE (retry later) when the encoder may recover; FAILED_PRECONDITION when the catalog and
        its encoder do not fit together (wrong address, limits), which no retry fixes."""
        kind = Unavailable if error.code() in _TRANSIENT else FailedPrecondition
        return kind(f"query encoder at {self.address}: {method} failed: {error.code().name}: {error.details()}")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
