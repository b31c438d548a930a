"""The catalog use cases: validate, embed what has no vector, write or search the store.

Plain async code with no gRPC in it: the servicer maps protos to these calls, tests call them directly.
Milvus calls block, so each runs in a worker thread; writes are serialized so the item-count gauge and
the "validate everything, then write" rule hold under concurrent upserts. While the store is down
(store_watch found it dead or wedged) every use case answers Unavailable at once instead of waiting on it.

Searches go to the in-process `VectorIndex` where it is on (the embedded milvus-lite store by default:
only this process writes it), else to Milvus. The index is built in the background from a scan of the
store whenever the store opens or reopens; Milvus answers searches until it is ready (milvus-lite
returns vectors at ~4k rows/s: a 100k-item scan takes ~25 s, which start-up and a reopen no longer
wait for). Every write reaches the index after the store acknowledged it, in the same worker thread
and under one lock; writes made during a scan are logged and replayed on the scanned index before
it serves, so it misses none whether the scan saw them or not. A store write that fails may have
landed in part: searches go to Milvus until a new scan.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from whisperlite.services.catalog import metrics
from whisperlite.services.catalog.embedding import ItemEmbedder
from whisperlite.services.catalog.filters import SearchFilter
from whisperlite.services.catalog.items import (
    ItemRecord, SearchHit, can_be_stored_id, records_from_request, validate_explain, validate_ids, validate_vector,
)
from whisperlite.services.catalog.store import CollectionInfo, CollectionSpec, MilvusStore, is_local_uri
from whisperlite.services.catalog.graph_index import GraphSettings
from whisperlite.services.catalog.vector_index import VectorIndex
from whisperlite.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, ServiceError, Unavailable
from whisperlite.v1 import common_pb2

log = logging.getLogger("whisperlite.catalog")
T = TypeVar("T")

# After a scan of the store failed on a store that is up (a reopen starts its own scan).
INDEX_BUILD_RETRY_SECONDS = 5.0

# Where searches run: "memory" (the in-process exact index), "milvus", or "auto": memory on an embedded
# milvus-lite store, which only this process can write, and Milvus on a server, which other catalog
# replicas may write behind this index's back.
SEARCH_INDEXES = ("auto", "memory", "milvus")


def uses_memory_index(search_index: str, uri: str) -> bool:
    if search_index not in SEARCH_INDEXES:
        raise ValueError(f"search_index: must be one of {', '.join(SEARCH_INDEXES)}, got {search_index!r}")
    return search_index == "memory" or (search_index == "auto" and is_local_uri(uri))


@dataclass(frozen=True)
class CatalogLimits:
    max_top_k: int = 1000
    max_batch: int = 1000  # items per upsert, ids per get or delete
    # The hits one SearchBatch may ask for, all searches together: 1,000 searches x top_k 1,000 took ~9 s of CPU
    # before the response was refused as too large. The ranker's batches ask for at most 64 x 800.
    max_batch_hits: int = 100_000


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    embedded: int


@dataclass(frozen=True)
class DeleteResult:
    deleted: int
    missing: list[str]  # the requested ids that were not in the catalog, each once, in request order


@dataclass(frozen=True)
class SearchQuery:
    vector: Sequence[float]
    top_k: int
    search_filter: SearchFilter
    include_vectors: bool = False
    detailed_hits: int = 0  # hits, from the best, that carry their record (0: all)
    explain: Sequence[Sequence[float]] = ()  # vectors whose dot products with each detailed hit come back


@dataclass(frozen=True)
class Stats:
    item_count: int
    dimension: int
    encoder_model: str
    collection: str
    max_batch: int  # items per upsert, ids per get or delete (--max-batch)


def _explained(hits: list[SearchHit], explain: np.ndarray, keep_vectors: bool) -> list[SearchHit]:
    """The hits with each detailed one's dot products with the explain vectors; vectors kept only when asked for."""
    detailed = [i for i, hit in enumerate(hits) if hit.record.vector is not None]
    if not detailed:
        return hits
    products = np.stack([hits[i].record.vector for i in detailed]) @ explain.T
    out = list(hits)
    for row, i in enumerate(detailed):
        # A copy: the store hands one record of an item to every search of a batch that found it.
        record = hits[i].record if keep_vectors else dataclasses.replace(hits[i].record, vector=None)
        out[i] = SearchHit(record=record, score=hits[i].score, explain_scores=products[row])
    return out


def _search_group(
    searcher: MilvusStore | VectorIndex, vectors: np.ndarray, top_k: int, search_filter: SearchFilter, include_vectors: bool,
    detailed_hits: int, explains: list[np.ndarray] | None,
) -> list[list[SearchHit]]:
    """One group's search and, with `explains` (one per vector), its hits' explain scores: both in the calling worker
    thread. The explain scores were computed on the event loop, a record copied per hit: one SearchBatch of 1,000
    searches x top_k 100 with one explain vector held the loop (and the health checks) for 1.9 s."""
    found = searcher.search_many(vectors, top_k, search_filter, include_vectors or explains is not None, detailed_hits)
    if explains is None:
        return found
    return [_explained(hits, explain, include_vectors) for hits, explain in zip(found, explains, strict=True)]


class Catalog:
    def __init__(
        self,
        store: MilvusStore,
        embedder: ItemEmbedder | None,
        limits: CatalogLimits = CatalogLimits(),
        creation: CollectionSpec = CollectionSpec(),
        search_index: str = "auto",
        graph: GraphSettings | None = GraphSettings(),
    ):
        """`creation` is used only when the collection does not exist; dimension 0 asks the query encoder.

        `search_index` is one of SEARCH_INDEXES; `graph` (None: every in-process search exact) is the
        in-process index's graph for unfiltered searches.
        """
        for name in ("max_top_k", "max_batch", "max_batch_hits"):
            if getattr(limits, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(limits, name)}")
        self._store = store
        self._embedder = embedder
        self._limits = limits
        self._creation = creation
        self._write_lock = asyncio.Lock()
        self._info: CollectionInfo | None = None
        self._store_down: str | None = None  # why, while the store is dead or wedged
        self._memory_index = uses_memory_index(search_index, store.uri)
        self._graph = graph
        # Where the index stands, changed only under _index_sync (worker threads): the index, or None while
        # searches go to Milvus; the writes to replay on the index being scanned; the newest scan's number.
        self._index_sync = threading.Lock()
        self._index: VectorIndex | None = None
        self._writes_during_scan: list[tuple[Callable[..., None], tuple]] | None = None
        self._index_generation = 0
        self._index_build: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def embedder(self) -> ItemEmbedder | None:
        """What embeds items upserted without a vector (its encoder watch runs while the catalog serves)."""
        return self._embedder

    async def open(self) -> CollectionInfo:
        spec = None
        if not await asyncio.to_thread(self._store.exists):
            spec = await self._creation_spec()
        self._info = await asyncio.to_thread(self._store.open, spec)
        self._loop = asyncio.get_running_loop()
        self._start_index_build()
        count = await asyncio.to_thread(self._store.count)
        metrics.ITEMS.set(count)
        log.info(
            "collection open",
            extra={
                "collection": self._info.name,
                "items": count,
                "dimension": self._info.dimension,
                "encoder_model": self._info.encoder_model,
                "index_type": self._info.index_type,
                "exact_filtered_search": self._info.exact_filtered_search,
                "filter_templates": self._store.uses_templates,
                "search_index": "memory (building)" if self._memory_index else "milvus",
            },
        )
        return self._info

    async def probe_store(self, timeout_seconds: float) -> str | None:
        """None when the store answers a cheap call within the timeout, else why it does not."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._store.probe, timeout_seconds), timeout_seconds + 1.0)
        except Unavailable as error:
            return str(error)
        except TimeoutError:
            return f"the Milvus store at {self._store.uri} did not answer a probe within {timeout_seconds:g} s"
        return None

    def mark_store_down(self, reason: str) -> None:
        self._store_down = reason

    async def reopen_store(self) -> None:
        """Closes the store (stopping a wedged milvus-lite child) and opens it again; raises Unavailable on failure."""
        await asyncio.to_thread(self._store.close)
        self._info = await asyncio.to_thread(self._store.open, None)
        self._start_index_build()
        metrics.ITEMS.set(await asyncio.to_thread(self._store.count))
        self._store_down = None

    async def index_built(self) -> None:
        """Returns once the newest index build has ended (at once when the index is off)."""
        if self._index_build is not None:
            await asyncio.wait([self._index_build])

    def _start_index_build(self) -> None:
        if self._memory_index and not self._closed:
            self._index_build = self._loop.create_task(self._build_index())

    async def _build_index(self) -> None:
        started = time.perf_counter()
        try:
            index = await asyncio.to_thread(self._scan_into_index)
        except ServiceError as error:
            log.warning(
                "search index build failed: searches use Milvus until a new scan succeeds",
                extra={"reason": str(error), "retry_in_seconds": INDEX_BUILD_RETRY_SECONDS},
            )
            self._loop.call_later(INDEX_BUILD_RETRY_SECONDS, self._retry_index_build)
            return
        if index is not None:
            log.info(
                "search index built: searches use it",
                extra={"items": len(index), "seconds": round(time.perf_counter() - started, 3), "array_megabytes": round(index.nbytes / 2**20, 1)},
            )

    def _retry_index_build(self) -> None:
        if self._index is None and self._store_down is None:  # while the store is down, its reopen scans
            self._start_index_build()

    # ---- the blocking halves of keeping the index in step, run in worker threads ------------------

    def _scan_into_index(self) -> VectorIndex | None:
        """A new index from a scan of the store, with the writes made meanwhile replayed.

        None when a newer scan, a failed write or close() superseded this one (its scan then stops at
        the next page, and a store closed under it is no error).
        """
        with self._index_sync:
            self._index_generation += 1
            generation = self._index_generation
            self._index, self._writes_during_scan = None, []
        index = VectorIndex(self.info.dimension, graph=self._graph)
        try:
            index.replace_all(itertools.takewhile(lambda _: generation == self._index_generation, self._store.scan()))
        except BaseException:
            with self._index_sync:
                if generation != self._index_generation:
                    return None
                self._writes_during_scan = None  # nothing will replay them
            raise
        with self._index_sync:
            if generation != self._index_generation:
                return None
            # Replayed in order after the scan: each id ends as its last write left it, seen by the scan or not.
            for apply_to_index, args in self._writes_during_scan:
                apply_to_index(index, *args)
            self._index, self._writes_during_scan = index, None
            return index

    def _write_through(self, call: Callable[..., T], apply_to_index: Callable[..., None], *args) -> T:
        """The store write, then the same write on the index (or in the scan's log), whole under the lock.

        Everything happens in this worker thread, which finishes even when the caller is cancelled.
        """
        with self._index_sync:
            try:
                result = call(*args)
            except BaseException:
                if self._memory_index:
                    # The store may hold part of the write: drop the index (and any scan) and scan again.
                    self._supersede_index()
                    if not self._loop.is_closed():
                        self._loop.call_soon_threadsafe(self._start_index_build)
                raise
            if self._index is not None:
                apply_to_index(self._index, *args)
            elif self._writes_during_scan is not None:
                self._writes_during_scan.append((apply_to_index, args))
            return result

    def _supersede_index(self) -> None:
        """Drops the index and outdates a scan in progress, which stops at its next page (the caller holds _index_sync)."""
        self._index_generation += 1
        self._index, self._writes_during_scan = None, None

    def _stop_index(self) -> None:
        with self._index_sync:
            self._supersede_index()

    async def _write(self, call: Callable[..., T], apply_to_index: Callable[..., None], *args) -> T:
        """One write: to the store of record, then to the index; serialized, and the item gauge updated."""
        async with self._write_lock:
            self._refuse_while_store_down()
            result = await asyncio.to_thread(self._write_through, call, apply_to_index, *args)
            metrics.ITEMS.set(await self._on_store(self._store.count))
        return result

    def _refuse_while_store_down(self) -> None:
        if self._store_down is not None:
            raise Unavailable(f"the catalog store is down and being reopened ({self._store_down}); retry shortly")

    async def _on_store(self, call: Callable[..., T], *args) -> T:
        """Runs a blocking store (or index) call in a worker thread, or refuses at once while the store is down."""
        self._refuse_while_store_down()
        return await asyncio.to_thread(call, *args)

    async def _creation_spec(self) -> CollectionSpec:
        if self._creation.dimension > 0:
            # The recorded model name is what lets the catalog and the ranker refuse vectors from another space.
            if not self._creation.encoder_model:
                raise FailedPrecondition("creating a collection with --dimension needs --encoder-model: the model behind its vectors")
            return self._creation
        if self._embedder is None:
            raise FailedPrecondition("the collection does not exist: give its dimension or a query encoder address to read it from")
        model = await self._embedder.model()
        return dataclasses.replace(self._creation, dimension=model.dimension, encoder_model=model.name)

    async def close(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._stop_index)
        await self.index_built()  # a scan ends at its next page, before the store it reads closes
        if self._embedder is not None:
            await self._embedder.close()
        await asyncio.to_thread(self._store.close)

    @property
    def info(self) -> CollectionInfo:
        if self._info is None:
            raise Unavailable("the catalog is still opening its collection; retry when health reports SERVING")
        return self._info

    @property
    def search_index(self) -> str:
        """Where searches run now: "memory" (the in-process index) or "milvus" (off, or being built from the store)."""
        return "memory" if self._index is not None else "milvus"

    # ---- use cases -------------------------------------------------------------------------------

    async def upsert(self, items: Sequence[common_pb2.Item]) -> UpsertResult:
        records = records_from_request(items, self.info.dimension, self._limits.max_batch)
        missing = {f"items[{index}]": record for index, record in enumerate(records) if record.vector is None}
        if missing:
            await self._embed(missing)
        await self._write(self._store.upsert, VectorIndex.upsert, records)
        return UpsertResult(upserted=len(records), embedded=len(missing))

    async def _embed(self, named: dict[str, ItemRecord]) -> None:
        """Embeds the records without a vector, each named by its field in the request (a refusal names it)."""
        records = list(named.values())
        if self._embedder is None:
            raise FailedPrecondition(
                f"{len(records)} item(s) have no vector and this catalog has no query encoder to embed them; send vectors"
            )
        vectors = await self._embedder.embed_items([(r.title, r.text) for r in records], self.info.encoder_model, list(named))
        if vectors.shape != (len(records), self.info.dimension):
            raise FailedPrecondition(
                f"the query encoder returned {vectors.shape[1]}-d vectors but the collection holds {self.info.dimension}-d ones"
            )
        for record, vector in zip(records, vectors, strict=True):
            record.vector = validate_vector(vector, self.info.dimension, f"embedding of item {record.item_id!r}")

    async def get(self, item_ids: Sequence[str], include_vectors: bool) -> tuple[list[ItemRecord], list[str]]:
        """Found records in request order, and the requested ids that are not in the catalog."""
        ids = validate_ids(item_ids, self._limits.max_batch)
        # The index holds what the store holds (every write lands in both): reading it saves a Milvus query
        # (GetItems of 5 ids: 3.2 ms p50 over gRPC from milvus-lite), which the ranker makes for recent items.
        reader = self._index if self._index is not None else self._store
        found = await self._on_store(reader.get, ids, include_vectors) if ids else {}
        return [found[i] for i in ids if i in found], [i for i in ids if i not in found]

    async def delete(self, item_ids: Sequence[str]) -> DeleteResult:
        """How many of the ids existed and were deleted, and which were not in the catalog: the store finds the
        existing ids to delete them anyway, so naming the others costs the caller no GetItems beforehand."""
        ids = validate_ids(item_ids, self._limits.max_batch)
        deleted = set(await self._write(self._store.delete, VectorIndex.delete, ids)) if ids else set()
        return DeleteResult(deleted=len(deleted), missing=[item_id for item_id in ids if item_id not in deleted])

    async def search(
        self, vector: Sequence[float], top_k: int, search_filter: SearchFilter, include_vectors: bool = False, detailed_hits: int = 0,
        explain: Sequence[Sequence[float]] = (),
    ) -> list[SearchHit]:
        return (await self._search([SearchQuery(vector, top_k, search_filter, include_vectors, detailed_hits, explain)], numbered=False))[0]

    async def search_batch(self, queries: Sequence[SearchQuery]) -> list[list[SearchHit]]:
        """The hits of each query, in order; queries that share a filter and sizes go to the store as one search."""
        if (asked := sum(query.top_k for query in queries)) > self._limits.max_batch_hits:
            # RESOURCE_EXHAUSTED with no retry hint, as a response over the message limit: the caller must ask for less.
            raise ResourceExhausted(
                f"searches: {asked} hits asked for in all (the sum of their top_k), over this catalog's limit of "
                f"{self._limits.max_batch_hits} (--max-batch-hits): send fewer searches per call or a lower top_k"
            )
        return await self._search(queries, numbered=True)

    async def _search(self, queries: Sequence[SearchQuery], numbered: bool) -> list[list[SearchHit]]:
        if len(queries) > self._limits.max_batch:
            raise InvalidArgument(f"searches: at most {self._limits.max_batch} per call, got {len(queries)}")
        groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        explains: dict[int, np.ndarray] = {}
        for index, query in enumerate(queries):
            where = f"searches[{index}]." if numbered else ""
            if not 1 <= query.top_k <= self._limits.max_top_k:
                raise InvalidArgument(f"{where}top_k: must be between 1 and {self._limits.max_top_k}, got {query.top_k}")
            if query.detailed_hits < 0:
                raise InvalidArgument(f"{where}detailed_hits: must be 0 (all hits) or positive, got {query.detailed_hits}")
            vector = validate_vector(query.vector, self.info.dimension, f"{where}vector")
            explain = validate_explain(query.explain, self.info.dimension, f"{where}explain")
            if explain is not None:
                explains[index] = explain
            key = (query.search_filter, query.top_k, query.include_vectors, query.detailed_hits, explain is not None)
            groups.setdefault(key, []).append((index, vector))
        results: list[list[SearchHit]] = [[] for _ in queries]
        memory_index = self._index  # one searcher for the whole batch, even if a failed write drops the index meanwhile
        for (search_filter, top_k, include_vectors, detailed_hits, explained), members in groups.items():
            searcher = memory_index if memory_index is not None else self._store
            strategy = searcher.strategy(search_filter)
            started = time.perf_counter()
            found = await self._on_store(
                _search_group, searcher, np.stack([vector for _, vector in members]), top_k, search_filter, include_vectors,
                detailed_hits, [explains[index] for index, _ in members] if explained else None,
            )
            metrics.SEARCH_SECONDS.labels(strategy).observe(time.perf_counter() - started)
            for (index, _), hits in zip(members, found, strict=True):
                results[index] = hits
        return results

    async def page(self, page_size: int, page_token: str, include_vectors: bool) -> tuple[list[ItemRecord], str]:
        """A page of records in id order and the token of the next one ("" after the last page).

        The token is the last id of the page: a page stays consistent with concurrent writes (an
        item upserted behind the cursor shows up in no page, one ahead of it in a later page).
        """
        if not 0 <= page_size <= self._limits.max_batch:
            raise InvalidArgument(f"page_size: must be between 1 and {self._limits.max_batch} (0 for {self._limits.max_batch}), got {page_size}")
        if page_token and not can_be_stored_id(page_token):
            raise InvalidArgument("page_token: not a token this catalog returned; pass next_page_token of the previous page")
        size = page_size or self._limits.max_batch
        records = await asyncio.to_thread(self._store.page, page_token, size, include_vectors)
        return records, records[-1].item_id if len(records) == size else ""

    async def stats(self) -> Stats:
        info = self.info
        count = await self._on_store(self._store.count)
        metrics.ITEMS.set(count)
        return Stats(
            item_count=count, dimension=info.dimension, encoder_model=info.encoder_model, collection=info.name, max_batch=self._limits.max_batch
        )

