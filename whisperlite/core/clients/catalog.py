"""The asyncio client of CatalogService: the ranker searches with it, `whisperlite ingest` writes with it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from whisperlite.core.clients.errors import DownstreamClient, call_when_ready, downstream_error
from whisperlite.core.request_context import outgoing_metadata
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2


@dataclass(frozen=True)
class Candidate:
    item: common_pb2.Item  # without its vector; past the detailed hits, only its item_id
    cosine: float  # cosine similarity of the item and the query vector (the catalog's score)
    vector: np.ndarray | None  # past the detailed hits, and for a search with explain vectors: None
    explain_scores: np.ndarray | None = None  # a detailed hit's dot products with the search's explain vectors


@dataclass(frozen=True)
class ItemVectors:
    vectors: np.ndarray  # one row per id the catalog holds, in the order asked (0 x 0 when it holds none)
    missing_item_ids: tuple[str, ...]  # the ids it does not hold, each once, in the order asked


@dataclass(frozen=True)
class CandidateSearch:
    vector: np.ndarray
    top_k: int
    item_filter: common_pb2.ItemFilter
    detailed_hits: int = 0  # hits, from the best, that come with their item and vector (0: all)
    # Vectors whose dot products with each detailed hit come back instead of the hits' vectors.
    explain: tuple[np.ndarray, ...] = ()

    def request(self, vectors: bool) -> catalog_pb2.SearchRequest:
        return catalog_pb2.SearchRequest(
            vector=self.vector.tolist(), top_k=self.top_k, filter=self.item_filter, include_vectors=vectors,
            detailed_hits=self.detailed_hits, explain=[catalog_pb2.ExplainVector(values=v.tolist()) for v in self.explain],
        )


class CatalogClient(DownstreamClient):
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float, address: str = ""):
        super().__init__("catalog", timeout_seconds, address)
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._batch_search = True  # until a catalog from before SearchBatch answers UNIMPLEMENTED
        self._explains = True  # until a catalog from before SearchRequest.explain answers without explain_scores

    async def stats(self) -> catalog_pb2.GetStatsResponse:
        """Waits for a catalog that is not reachable yet; a catalog still opening answers UNAVAILABLE,
        raised as such (the caller decides how long to wait)."""
        request = catalog_pb2.GetStatsRequest()
        return await call_when_ready(
            lambda wait: self._stub.GetStats(request, timeout=self._call_timeout(), metadata=outgoing_metadata(), wait_for_ready=wait),
            self._service, "GetStats",
        )  # fmt: skip

    async def upsert(self, items: list[common_pb2.Item]) -> int:
        """Upserts (idempotent: items are replaced by id); waits for a catalog not reachable yet. Returns the count written."""
        request = catalog_pb2.UpsertItemsRequest(items=items)
        response = await call_when_ready(
            lambda wait: self._stub.UpsertItems(request, timeout=self._call_timeout(), metadata=outgoing_metadata(), wait_for_ready=wait),
            self._service, "UpsertItems",
        )  # fmt: skip
        return response.upserted_count

    async def search(self, search: CandidateSearch) -> list[Candidate]:
        return (await self.search_batch([search]))[0]

    async def search_batch(self, searches: Sequence[CandidateSearch]) -> list[list[Candidate]]:
        """Several searches in one call (SearchBatch), or one Search each from a catalog that predates it.

        A search with explain vectors gets its detailed hits' dot products instead of their vectors; a
        catalog that predates them answers without (once: then this client asks for vectors instead)."""
        vectors = not self._explains or not any(search.explain for search in searches)
        found = await self._search_batch(searches, vectors)
        if not vectors and any(hits and hits[0].explain_scores is None for hits in found):
            self._explains = False
            found = await self._search_batch(searches, vectors=True)
        return found

    async def _search_batch(self, searches: Sequence[CandidateSearch], vectors: bool) -> list[list[Candidate]]:
        if self._batch_search:
            request = catalog_pb2.SearchBatchRequest(searches=[search.request(vectors) for search in searches])
            try:
                response = await self._stub.SearchBatch(request, timeout=self._call_timeout(), metadata=outgoing_metadata())
                return [_candidates(part) for part in response.responses]
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise downstream_error(self._service, "SearchBatch", error) from None
                self._batch_search = False
        return list(await asyncio.gather(*(self._search_one(search, vectors) for search in searches)))

    async def _search_one(self, search: CandidateSearch, vectors: bool) -> list[Candidate]:
        try:
            response = await self._stub.Search(search.request(vectors), timeout=self._call_timeout(), metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as error:
            raise downstream_error(self._service, "Search", error) from None
        return _candidates(response)

    async def items(self, item_ids: list[str]) -> list[common_pb2.Item]:
        """The items the catalog knows, with their vectors (unknown ids are skipped: an item may have been deleted)."""
        return list((await self._get_items(item_ids, include_vectors=True)).items)

    async def missing(self, item_ids: list[str]) -> list[str]:
        """The ids among `item_ids` the catalog does not hold (at most its --max-batch per call)."""
        return list((await self._get_items(item_ids, include_vectors=False)).missing_item_ids)

    async def _get_items(self, item_ids: list[str], include_vectors: bool) -> catalog_pb2.GetItemsResponse:
        request = catalog_pb2.GetItemsRequest(item_ids=item_ids, include_vectors=include_vectors)
        try:
            return await self._stub.GetItems(request, timeout=self._call_timeout(), metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as error:
            raise downstream_error(self._service, "GetItems", error) from None

    async def vectors(self, item_ids: list[str]) -> ItemVectors:
        """Vectors of the ids the catalog knows, one row per id asked for, in that order, and the ids it lacks.

        GetItems answers each id once: a session that came back to an item ("a", "b", "a") must keep "a" as its
        newest item and count it twice, so the rows are laid out from the ids asked for, not from the answer."""
        asked = list(dict.fromkeys(item_ids))
        by_id = {item.item_id: item for item in await self.items(asked)}
        known = [item_id for item_id in item_ids if item_id in by_id]
        missing = tuple(item_id for item_id in asked if item_id not in by_id)
        if not known:
            return ItemVectors(np.zeros((0, 0), dtype=np.float32), missing)
        return ItemVectors(np.stack([np.asarray(by_id[item_id].vector, dtype=np.float32) for item_id in known]), missing)


def _candidates(response: catalog_pb2.SearchResponse) -> list[Candidate]:
    candidates = []
    for hit in response.hits:
        item = hit.item  # the response is ours: its items lose their vectors instead of being copied
        vector = np.asarray(item.vector, dtype=np.float32) if item.vector else None
        item.ClearField("vector")
        explain = np.asarray(hit.explain_scores, dtype=np.float32) if hit.explain_scores else None
        candidates.append(Candidate(item=item, cosine=hit.score, vector=vector, explain_scores=explain))
    return candidates
