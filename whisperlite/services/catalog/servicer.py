"""gRPC face of the Catalog: proto messages in and out, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np

from whisperlite.core.errors import InvalidArgument, ResourceExhausted
from whisperlite.core.topology import DEFAULT_MAX_MESSAGE_BYTES
from whisperlite.services.catalog.catalog import Catalog, SearchQuery
from whisperlite.services.catalog.filters import filter_from_proto
from whisperlite.services.catalog.items import ItemRecord, SearchHit, least_proto_bytes, record_to_proto
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

T = TypeVar("T")


# A SearchBatch asking for more hits than this (the sum of its top_k) is served one at a time, its response built in
# a worker thread. Three calls of 100 searches x top_k 1,000, within every limit, took seconds of Python each on the
# event loop: the health checks went unanswered, and the ranker and the gateway saw the catalog as down. Every hit
# is built as a proto, detailed or not: counting only detailed hits let 3 calls of 1,000 searches x top_k 100 with
# detailed_hits 1 (1,000 "detailed", 100,000 built) hold the loop for 3.1 s. A batch under it costs ~20-40 ms of
# Python on the loop; the ranker's batches of more than 40 searches (x its 50 candidates) take the worker thread.
LARGE_RESPONSE_HITS = 2_000

# A request larger than this is read (its filters, vectors and items checked and converted) in a worker thread: the
# work grows with the request, and the message limit lets one carry 16 MiB of categories to check character by
# character, 1,000 searches' vectors or 1,000 items.
LARGE_REQUEST_BYTES = 256 << 10


async def _read(request, read: Callable[[], T]) -> T:
    """read(), in a worker thread when `request` is large (ByteSize is computed in C, without decoding its strings)."""
    if request.ByteSize() <= LARGE_REQUEST_BYTES:
        return read()
    return await asyncio.to_thread(read)


class ResponseBudget:
    """Refuses a response as soon as its items certainly exceed the message limit. The interceptor's exact
    check runs on the finished response, and finishing, say, 1,000 searches x top_k 1,000 of large items
    would take gigabytes first."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._left = max_bytes

    def items(self, records: Iterable[ItemRecord], include_vectors: bool) -> list[common_pb2.Item]:
        records = list(records)
        self._left -= sum(least_proto_bytes(record, include_vectors) for record in records)
        if self._left < 0:
            raise ResourceExhausted(
                f"the response would be over this server's {self._max_bytes}-byte message limit: ask for fewer or smaller "
                "results (a lower top_k or detailed_hits, fewer searches or ids, a smaller page, no vectors)"
            )
        return [record_to_proto(record, include_vectors) for record in records]


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog, max_response_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self._catalog = catalog
        self._max_response_bytes = max_response_bytes
        self._large_responses = asyncio.Semaphore(1)

    async def UpsertItems(self, request, context):
        result = await self._catalog.upsert(request.items)
        return catalog_pb2.UpsertItemsResponse(upserted_count=result.upserted, embedded_count=result.embedded)

    async def GetItems(self, request, context):
        found, missing = await self._catalog.get(request.item_ids, request.include_vectors)
        items = ResponseBudget(self._max_response_bytes).items(found, request.include_vectors)
        return catalog_pb2.GetItemsResponse(items=items, missing_item_ids=missing)

    async def DeleteItems(self, request, context):
        result = await self._catalog.delete(request.item_ids)
        return catalog_pb2.DeleteItemsResponse(deleted_count=result.deleted, missing_item_ids=result.missing)

    async def Search(self, request, context):
        query = await _read(request, lambda: _search_query(request))
        hits = await self._catalog.search(
            query.vector, query.top_k, query.search_filter, query.include_vectors, query.detailed_hits, query.explain
        )
        return _search_response(request, hits, ResponseBudget(self._max_response_bytes))

    async def SearchBatch(self, request, context):
        queries = await _read(request, lambda: _search_queries(request))
        budget = ResponseBudget(self._max_response_bytes)  # one for the whole batch: it is one message

        def respond(results: list[list[SearchHit]]) -> catalog_pb2.SearchBatchResponse:
            return catalog_pb2.SearchBatchResponse(
                responses=[_search_response(search, hits, budget) for search, hits in zip(request.searches, results, strict=True)]
            )

        if sum(query.top_k for query in queries) <= LARGE_RESPONSE_HITS:  # each hit is built, detailed or not
            return respond(await self._catalog.search_batch(queries))
        async with self._large_responses:
            return await asyncio.to_thread(respond, await self._catalog.search_batch(queries))

    async def GetStats(self, request, context):
        stats = await self._catalog.stats()
        return catalog_pb2.GetStatsResponse(
            item_count=stats.item_count, dimension=stats.dimension, encoder_model=stats.encoder_model, collection=stats.collection,
            max_batch=stats.max_batch,
        )

    async def ListItems(self, request, context):
        records, next_token = await self._catalog.page(request.page_size, request.page_token, request.include_vectors)
        items = ResponseBudget(self._max_response_bytes).items(records, request.include_vectors)
        return catalog_pb2.ListItemsResponse(items=items, next_page_token=next_token)


def _search_queries(request: catalog_pb2.SearchBatchRequest) -> list[SearchQuery]:
    queries = []
    for index, search in enumerate(request.searches):
        try:
            queries.append(_search_query(search))
        except InvalidArgument as error:
            raise InvalidArgument(f"searches[{index}].{error}") from None
    return queries


def _search_query(request: catalog_pb2.SearchRequest) -> SearchQuery:
    """The search as the catalog takes it, its vectors as numpy arrays (read here, not element by element later)."""
    search_filter = filter_from_proto(request.filter if request.HasField("filter") else None)
    explain = [np.asarray(vector.values, dtype=np.float32) for vector in request.explain]
    return SearchQuery(
        np.asarray(request.vector, dtype=np.float32), request.top_k, search_filter, request.include_vectors, request.detailed_hits, explain
    )


def _search_response(request: catalog_pb2.SearchRequest, hits: list[SearchHit], budget: ResponseBudget) -> catalog_pb2.SearchResponse:
    items = budget.items((hit.record for hit in hits), request.include_vectors)
    return catalog_pb2.SearchResponse(
        hits=[
            catalog_pb2.SearchHit(
                item=item, score=hit.score, explain_scores=hit.explain_scores.tolist() if hit.explain_scores is not None else ()
            )
            for item, hit in zip(items, hits, strict=True)
        ]
    )
