"""The asyncio client of QueryEncoderService, used by the ranker (requests) and the catalog (items)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from whisperlite.core.clients.errors import DownstreamClient, call_when_ready, downstream_error
from whisperlite.core.request_context import outgoing_metadata
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc

# Request metadata a caller sets on an Embed to say how urgent it is: "bulk" (the catalog embedding
# items, ingest) waits behind "interactive" (the ranker embedding a shopper's query). Without it the
# encoder decides by the request's size. A header, so the protos need no change.
PRIORITY_METADATA_KEY = "x-whisperlite-priority"
BULK, INTERACTIVE = "bulk", "interactive"


@dataclass(frozen=True)
class EncoderModel:
    name: str
    dimension: int
    max_text_chars: int
    max_inputs: int


@dataclass(frozen=True)
class TextEmbeddings:
    model_name: str
    vectors: np.ndarray  # float32 (len(texts), dimension)


class QueryEncoderClient(DownstreamClient):
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float, address: str = ""):
        super().__init__("query encoder", timeout_seconds, address)
        self._stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)

    async def model(self) -> EncoderModel:
        request = query_encoder_pb2.GetModelInfoRequest()
        info = await call_when_ready(
            lambda wait: self._stub.GetModelInfo(request, timeout=self._call_timeout(), metadata=outgoing_metadata(), wait_for_ready=wait),
            self._service, "GetModelInfo",
        )  # fmt: skip
        return EncoderModel(info.model_name, info.dimension, info.max_text_chars, info.max_inputs)

    async def embed_texts(self, texts: Sequence[str], priority: str = INTERACTIVE) -> TextEmbeddings:
        """`priority` BULK for background work (item embedding) that must not delay interactive queries."""
        try:
            response = await self._stub.Embed(
                query_encoder_pb2.EmbedRequest(texts=list(texts)), timeout=self._call_timeout(),
                metadata=(*outgoing_metadata(), (PRIORITY_METADATA_KEY, priority)),
            )  # fmt: skip
        except grpc.aio.AioRpcError as error:
            raise downstream_error(self._service, "Embed", error) from None
        vectors = np.asarray([v.values for v in response.text_vectors], dtype=np.float32).reshape(len(texts), -1)
        return TextEmbeddings(response.model_name, vectors)
