"""Typed wrappers over the downstream gRPC services; the only place the ranker touches their protos."""

from dataclasses import dataclass

import grpc
import numpy as np

from services.common.errors import InvalidArgument, ServiceError, Unavailable
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, query_encoder_pb2, query_encoder_pb2_grpc


@dataclass(frozen=True)
class Candidate:
    item: common_pb2.Item  # without its vector
    vector: np.ndarray


def _downstream_error(service: str, error: grpc.aio.AioRpcError) -> ServiceError:
    """Keeps the caller's fault a caller's fault (INVALID_ARGUMENT passes through); anything else is ours."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(error.details() or f"{service} rejected the request")
    return Unavailable(f"{service} call failed: {error.code().name}: {error.details()}")


class QueryEncoderClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float):
        self._stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        self._timeout = timeout_seconds

    async def model_info(self) -> query_encoder_pb2.GetModelInfoResponse:
        return await self._stub.GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=self._timeout, wait_for_ready=True)

    async def embed_text(self, text: str) -> np.ndarray:
        try:
            response = await self._stub.Embed(query_encoder_pb2.EmbedRequest(texts=[text]), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise _downstream_error("query encoder", error) from None
        return np.asarray(response.text_vectors[0].values, dtype=np.float32)


class CatalogClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float):
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._timeout = timeout_seconds

    async def stats(self) -> catalog_pb2.GetStatsResponse:
        return await self._stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=self._timeout, wait_for_ready=True)

    async def search(self, vector: np.ndarray, top_k: int, item_filter: common_pb2.ItemFilter) -> list[Candidate]:
        request = catalog_pb2.SearchRequest(vector=vector.tolist(), top_k=top_k, filter=item_filter, include_vectors=True)
        try:
            response = await self._stub.Search(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise _downstream_error("catalog", error) from None
        return [_candidate(hit.item) for hit in response.hits]

    async def vectors(self, item_ids: list[str]) -> np.ndarray:
        """Vectors of the ids the catalog knows (unknown ids are skipped: a recent item may have been deleted)."""
        request = catalog_pb2.GetItemsRequest(item_ids=item_ids, include_vectors=True)
        try:
            response = await self._stub.GetItems(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise _downstream_error("catalog", error) from None
        if not response.items:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([np.asarray(item.vector, dtype=np.float32) for item in response.items])


def _candidate(item: common_pb2.Item) -> Candidate:
    vector = np.asarray(item.vector, dtype=np.float32)
    stripped = common_pb2.Item()
    stripped.CopyFrom(item)
    stripped.ClearField("vector")
    return Candidate(item=stripped, vector=vector)
