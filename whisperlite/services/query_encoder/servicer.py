"""gRPC face of the Embedder: proto messages in and out, nothing else."""

from __future__ import annotations

import numpy as np

from whisperlite.core.clients.query_encoder import BULK, INTERACTIVE, PRIORITY_METADATA_KEY
from whisperlite.core.errors import InvalidArgument
from whisperlite.services.query_encoder.embedder import Embedder
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc


def _vectors(matrix: np.ndarray) -> list[query_encoder_pb2.Vector]:
    return [query_encoder_pb2.Vector(values=row.tolist()) for row in matrix]


def _bulk_priority(value: str | None) -> bool | None:
    if value is None:
        return None
    if value not in (BULK, INTERACTIVE):
        raise InvalidArgument(f"metadata {PRIORITY_METADATA_KEY}: must be {BULK!r} or {INTERACTIVE!r}, got {value!r}")
    return value == BULK


class QueryEncoderServicer(query_encoder_pb2_grpc.QueryEncoderServiceServicer):
    def __init__(self, embedder: Embedder):
        self._embedder = embedder

    async def Embed(self, request, context):
        priorities = [value for key, value in context.invocation_metadata() or () if key == PRIORITY_METADATA_KEY]
        if len(priorities) > 1:
            raise InvalidArgument(f"metadata {PRIORITY_METADATA_KEY}: sent {len(priorities)} times; send it once")
        bulk = _bulk_priority(priorities[0] if priorities else None)
        text_vectors, image_vectors = await self._embedder.embed(list(request.texts), list(request.images), bulk=bulk)
        encoder = self._embedder.require_encoder()
        return query_encoder_pb2.EmbedResponse(
            text_vectors=_vectors(text_vectors),
            image_vectors=_vectors(image_vectors),
            model_name=encoder.name,
            dimension=encoder.dimension,
        )

    async def GetModelInfo(self, request, context):
        encoder = self._embedder.require_encoder()
        return query_encoder_pb2.GetModelInfoResponse(
            model_name=encoder.name,
            backend=encoder.backend,
            dimension=encoder.dimension,
            device=encoder.device,
            supports_images=encoder.supports_images,
            max_text_chars=self._embedder.settings.max_text_chars,
            max_inputs=self._embedder.settings.max_inputs,
        )
