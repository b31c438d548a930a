"""Typed clients of the catalog for applications and operators: blocking and asyncio.

    from whisperlite.core.clients.catalog_admin import CatalogAdminClient, Item
    with CatalogAdminClient("localhost:50052") as catalog:
        catalog.upsert([Item("sku-1", "Red dress", price=49.0, attributes={"brand": "Acme"})])
        print(catalog.get(["sku-1"]).items[0].price, catalog.stats().item_count)

Needs only grpcio and protobuf (`pip install whisperlite[client]`). Calls raise grpc.RpcError.
(The ranker's own catalog client, with numpy vectors, is whisperlite.core.clients.catalog.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

from whisperlite.core.clients.connection import AsyncClient, ClientOptions, SyncClient
from whisperlite.core.clients.types import (
    CatalogStats,
    Item,
    ItemPage,
    ItemsDeleted,
    ItemsFound,
    UpsertResult,
    item_from_proto,
    item_to_proto,
    stats_from_proto,
    string_list,
)
from whisperlite.core.topology import CATALOG
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc

__all__ = ["AsyncCatalogAdminClient", "CatalogAdminClient", "ClientOptions", "Item"]


def _found(response: catalog_pb2.GetItemsResponse) -> ItemsFound:
    return ItemsFound([item_from_proto(item) for item in response.items], list(response.missing_item_ids))


def _deleted(response: catalog_pb2.DeleteItemsResponse) -> ItemsDeleted:
    return ItemsDeleted(response.deleted_count, list(response.missing_item_ids))


def _delete_request(item_ids: Sequence[str]) -> catalog_pb2.DeleteItemsRequest:
    return catalog_pb2.DeleteItemsRequest(item_ids=string_list("item_ids", item_ids))


def _page(response: catalog_pb2.ListItemsResponse) -> ItemPage:
    return ItemPage([item_from_proto(item) for item in response.items], response.next_page_token)


class CatalogAdminClient(SyncClient):
    GRPC_SERVICE = CATALOG.grpc_service

    def __init__(self, address: str = CATALOG.local_address, options: ClientOptions | None = None, **option_fields):
        super().__init__(address, options, **option_fields)
        self._stub = catalog_pb2_grpc.CatalogServiceStub(self._channel)

    def upsert(self, items: Sequence[Item], *, request_id: str | None = None, timeout_seconds: float | None = None) -> UpsertResult:
        """Inserts or replaces items by id; all or none (a bad item fails the whole call, INVALID_ARGUMENT)."""
        _, call = self._call_kwargs(request_id, timeout_seconds)
        response = self._stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[item_to_proto(i) for i in items]), **call)
        return UpsertResult(response.upserted_count, response.embedded_count)

    def get(self, item_ids: Sequence[str], *, include_vectors: bool = False, request_id: str | None = None) -> ItemsFound:
        _, call = self._call_kwargs(request_id, None)
        return _found(self._stub.GetItems(catalog_pb2.GetItemsRequest(item_ids=string_list("item_ids", item_ids), include_vectors=include_vectors), **call))

    def delete(self, item_ids: Sequence[str], *, request_id: str | None = None) -> int:
        """Deletes by id; returns how many existed (unknown ids are ignored)."""
        return self.delete_items(item_ids, request_id=request_id).deleted_count

    def delete_items(self, item_ids: Sequence[str], *, request_id: str | None = None) -> ItemsDeleted:
        """Deletes by id; returns how many existed and which ids were not in the catalog."""
        _, call = self._call_kwargs(request_id, None)
        return _deleted(self._stub.DeleteItems(_delete_request(item_ids), **call))

    def stats(self, *, request_id: str | None = None) -> CatalogStats:
        _, call = self._call_kwargs(request_id, None)
        return stats_from_proto(self._stub.GetStats(catalog_pb2.GetStatsRequest(), **call))

    def list_page(self, page_token: str = "", page_size: int = 0, *, include_vectors: bool = False) -> ItemPage:
        _, call = self._call_kwargs(None, None)
        request = catalog_pb2.ListItemsRequest(page_size=page_size, page_token=page_token, include_vectors=include_vectors)
        return _page(self._stub.ListItems(request, **call))

    def iter_items(self, page_size: int = 0, *, include_vectors: bool = False) -> Iterator[Item]:
        """Every item in id order, one page per call (each page under its own deadline)."""
        token = ""
        while True:
            page = self.list_page(token, page_size, include_vectors=include_vectors)
            yield from page.items
            if not page.next_page_token:
                return
            token = page.next_page_token


class AsyncCatalogAdminClient(AsyncClient):
    GRPC_SERVICE = CATALOG.grpc_service

    def __init__(self, address: str = CATALOG.local_address, options: ClientOptions | None = None, **option_fields):
        super().__init__(address, options, **option_fields)
        self._stub = catalog_pb2_grpc.CatalogServiceStub(self._channel)

    async def upsert(self, items: Sequence[Item], *, request_id: str | None = None, timeout_seconds: float | None = None) -> UpsertResult:
        _, call = self._call_kwargs(request_id, timeout_seconds)
        response = await self._stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[item_to_proto(i) for i in items]), **call)
        return UpsertResult(response.upserted_count, response.embedded_count)

    async def get(self, item_ids: Sequence[str], *, include_vectors: bool = False, request_id: str | None = None) -> ItemsFound:
        _, call = self._call_kwargs(request_id, None)
        request = catalog_pb2.GetItemsRequest(item_ids=string_list("item_ids", item_ids), include_vectors=include_vectors)
        return _found(await self._stub.GetItems(request, **call))

    async def delete(self, item_ids: Sequence[str], *, request_id: str | None = None) -> int:
        return (await self.delete_items(item_ids, request_id=request_id)).deleted_count

    async def delete_items(self, item_ids: Sequence[str], *, request_id: str | None = None) -> ItemsDeleted:
        _, call = self._call_kwargs(request_id, None)
        return _deleted(await self._stub.DeleteItems(_delete_request(item_ids), **call))

    async def stats(self, *, request_id: str | None = None) -> CatalogStats:
        _, call = self._call_kwargs(request_id, None)
        return stats_from_proto(await self._stub.GetStats(catalog_pb2.GetStatsRequest(), **call))

    async def list_page(self, page_token: str = "", page_size: int = 0, *, include_vectors: bool = False) -> ItemPage:
        _, call = self._call_kwargs(None, None)
        request = catalog_pb2.ListItemsRequest(page_size=page_size, page_token=page_token, include_vectors=include_vectors)
        return _page(await self._stub.ListItems(request, **call))

    async def iter_items(self, page_size: int = 0, *, include_vectors: bool = False) -> AsyncIterator[Item]:
        token = ""
        while True:
            page = await self.list_page(token, page_size, include_vectors=include_vectors)
            for item in page.items:
                yield item
            if not page.next_page_token:
                return
            token = page.next_page_token
