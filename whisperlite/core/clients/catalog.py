"""The asyncio client of CatalogService: the ranker searches with it, `whisperlite ingest` writes with it."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from whisperlite.core.clients.errors import downstream_error
from whisperlite.core.request_context import outgoing_metadata
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2


@dataclass(frozen=True)
class Candidate:
    item: common_pb2.Item  # without its vector
    vector: np.ndarray


class CatalogClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float, address: str = ""):
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._timeout = timeout_seconds
        self._service = f"catalog at {address}" if address else "catalog"

    async def stats(self) -> catalog_pb2.GetStatsResponse:
        """Waits for a catalog that is not reachable yet; a catalog still opening answers UNAVAILABLE,
        raised as such (the caller decides how long to wait)."""
        try:
            return await self._stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=self._timeout, metadata=outgoing_metadata(), wait_for_ready=True)
        except grpc.aio.AioRpcError as error:
            raise downstream_error(self._service, "GetStats", error) from None

    async def upsert(self, items: list[common_pb2.Item]) -> int:
        """Upserts (idempotent: items are replaced by id); waits for a catalog not reachable yet. Returns the count written."""
        try:
            response = await self._stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=self._timeout, metadata=outgoing_metadata(), wait_for_ready=True)
        except grpc.aio.AioRpcError as error:
            raise downstream_error(self._service, "UpsertItems", error) from None
        return response.upserted_count

    async def search(self, vector: np.ndarray, top_k: int, item_filter: common_pb2.ItemFilter) -> list[Candidate]:
        request = catalog_pb2.SearchRequest(vector=vector.tolist(), top_k=top_k, filter=item_filter, include_vectors=True)
        try:
            response = await self._stub.Search(request, timeout=self._timeout, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as error:
            raise downstream_error(self._service, "Search", error) from None
        return [_candidate(hit.item) for hit in response.hits]

    async def vectors(self, item_ids: list[str]) -> np.ndarray:
        """Vectors of the ids the catalog knows (unknown ids are skipped: a recent item may have been deleted)."""
        request = catalog_pb2.GetItemsRequest(item_ids=item_ids, include_vectors=True)
        try:
            response = await self._stub.GetItems(request, timeout=self._timeout, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as error:
            raise downstream_error(self._service, "GetItems", error) from None
        if not response.items:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([np.asarray(item.vector, dtype=np.float32) for item in response.items])


def _candidate(item: common_pb2.Item) -> Candidate:
    vector = np.asarray(item.vector, dtype=np.float32)
    stripped = common_pb2.Item()
    stripped.CopyFrom(item)
    stripped.ClearField("vector")
    return Candidate(item=stripped, vector=vector)
