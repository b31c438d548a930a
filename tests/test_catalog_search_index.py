"""The catalog's in-process search index against a real milvus-lite store (no gRPC): it answers as
Milvus' exact search and numpy brute force do, follows every write, is rebuilt from the store on
restart and reopen, and steps aside for Milvus when a store write fails."""

import asyncio
import os
import signal
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from whisperlite.core.errors import Unavailable
from whisperlite.services.catalog import catalog as catalog_module
from whisperlite.services.catalog.catalog import Catalog, CatalogLimits, SearchQuery, uses_memory_index
from whisperlite.services.catalog.filters import SearchFilter
from whisperlite.services.catalog.store import CollectionSpec, MilvusStore
from whisperlite.v1 import common_pb2

DIM = 32
N = 3000


def unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def proto(item_id: str, vector, **fields) -> common_pb2.Item:
    return common_pb2.Item(item_id=item_id, vector=list(vector), **fields)


def ids(hits) -> list[str]:
    return [hit.record.item_id for hit in hits]


def open_catalog(path: Path, search_index: str = "memory") -> tuple[Catalog, MilvusStore]:
    store = MilvusStore(str(path / "catalog.db"), "items")
    catalog = Catalog(
        store, None, CatalogLimits(max_top_k=N, max_batch=N), CollectionSpec(dimension=DIM, encoder_model="m"), search_index=search_index
    )
    return catalog, store


@pytest.fixture
def data():
    rng = np.random.default_rng(21)
    vectors = unit_rows(rng, N)
    categories = rng.integers(0, 8, N)
    has_price = rng.random(N) < 0.8
    prices = np.where(has_price, rng.uniform(0, 100, N).round(2), 0.0)
    items = []
    for j in range(N):
        fields = {"title": f"title {j}", "text": f"text {j}", "category": f"c{categories[j]}", "attributes": {"j": str(j)}}
        if has_price[j]:
            fields["price"] = float(prices[j])
        items.append(proto(f"i{j}", vectors[j], **fields))
    return {"vectors": vectors, "categories": categories, "has_price": has_price, "prices": prices, "items": items, "rng": rng}


@pytest.fixture
async def stocked(tmp_path, data):
    catalog, store = open_catalog(tmp_path)
    await catalog.open()
    await catalog.upsert(data["items"])
    await catalog.index_built()
    yield catalog, store
    await catalog.close()


def brute_force(data, query: np.ndarray, top_k: int, search_filter: SearchFilter) -> list[str]:
    keep = np.ones(N, dtype=bool)
    if search_filter.categories:
        keep &= np.isin([f"c{c}" for c in data["categories"]], search_filter.categories)
    if search_filter.min_price is not None or search_filter.max_price is not None:
        keep &= data["has_price"]
        keep &= data["prices"] >= (search_filter.min_price if search_filter.min_price is not None else -np.inf)
        keep &= data["prices"] <= (search_filter.max_price if search_filter.max_price is not None else np.inf)
    keep &= ~np.isin([f"i{j}" for j in range(N)], search_filter.exclude_item_ids)
    scores = np.where(keep, data["vectors"] @ query, -np.inf)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [f"i{j}" for j in order if scores[j] > -np.inf]


FILTERS = [
    SearchFilter(),
    SearchFilter(categories=("c3",)),
    SearchFilter(categories=("c1", "c6"), min_price=10.0, max_price=60.0),
    SearchFilter(max_price=5.0),
    SearchFilter(categories=("c2",), exclude_item_ids=("i0", "i1", "i2", "no-such-item")),
    SearchFilter(categories=("no-such-category",)),
]


async def test_answers_as_milvus_exact_search_and_numpy_brute_force(stocked, data):
    catalog, store = stocked
    assert catalog.search_index == "memory"
    queries = unit_rows(data["rng"], 8)
    for search_filter in FILTERS:
        for query in queries:
            hits = await catalog.search(query, 20, search_filter)
            assert ids(hits) == brute_force(data, query, 20, search_filter), search_filter
            if search_filter.narrows:  # Milvus' exact path (the FLAT copy) for category and price filters
                (milvus_hits,) = store.search_many(query[np.newaxis], 20, search_filter)
                assert ids(hits) == ids(milvus_hits)
                np.testing.assert_allclose([h.score for h in hits], [h.score for h in milvus_hits], atol=1e-5)
    # Detailed hits carry the records the store holds, field for field.
    hits = await catalog.search(queries[0], 10, SearchFilter(categories=("c3",)), include_vectors=True, detailed_hits=4)
    stored = store.get(ids(hits), include_vectors=True)
    for hit in hits[:4]:
        record = stored[hit.record.item_id]
        assert (hit.record.title, hit.record.text, hit.record.category, hit.record.price, hit.record.attributes) == (
            record.title, record.text, record.category, record.price, record.attributes,
        )
        np.testing.assert_allclose(hit.record.vector, record.vector, atol=1e-7)
    assert all(hit.record.title == "" and hit.record.vector is None for hit in hits[4:])


async def test_search_batch_answers_each_query_as_search_does(stocked, data):
    catalog, _ = stocked
    queries = unit_rows(data["rng"], 12)
    batch = [SearchQuery(query, 15, FILTERS[i % len(FILTERS)], detailed_hits=5) for i, query in enumerate(queries)]
    results = await catalog.search_batch(batch)
    for query, hits in zip(batch, results, strict=True):
        alone = await catalog.search(query.vector, query.top_k, query.search_filter, detailed_hits=query.detailed_hits)
        assert [(h.record.item_id, h.score) for h in hits] == [(h.record.item_id, h.score) for h in alone]


@pytest.mark.parametrize("search_index", ["memory", "milvus"])
async def test_searches_of_a_batch_that_find_the_same_items_each_get_their_explain_scores(tmp_path, data, search_index):
    """Milvus' path hands one record of an item to every search of a batch that found it; dropping the
    vector after one search's explain products must not leave the next search without its own."""
    catalog, store = open_catalog(tmp_path, search_index)
    await catalog.open()
    await catalog.upsert(data["items"][:200])
    await catalog.index_built()
    try:
        query, taste = unit_rows(data["rng"], 2)
        batch = [SearchQuery(query, 5, SearchFilter(), explain=(query, taste)) for _ in range(2)]
        batch.append(SearchQuery(query, 5, SearchFilter(), detailed_hits=2, explain=(taste,)))
        results = await catalog.search_batch(batch)
        stored = store.get(ids(results[0]), include_vectors=True)
        for search, hits in zip(batch, results, strict=True):
            assert ids(hits) == ids(results[0])
            for rank, hit in enumerate(hits):
                if rank >= (search.detailed_hits or len(hits)):
                    assert hit.explain_scores is None
                    continue
                expected = [stored[hit.record.item_id].vector @ vector for vector in search.explain]
                np.testing.assert_allclose(hit.explain_scores, expected, rtol=1e-5, atol=1e-6)
                assert hit.record.vector is None and hit.record.title  # the item without its vector
    finally:
        await catalog.close()


async def test_writes_reach_the_index_and_a_restart_rebuilds_it_from_the_store(tmp_path, data):
    catalog, _ = open_catalog(tmp_path)
    await catalog.open()
    await catalog.index_built()
    try:
        await catalog.upsert(data["items"][:500])
        target = unit_rows(data["rng"], 1)[0]
        await catalog.upsert([proto("new", target, category="fresh", price=1.0)])
        assert ids(await catalog.search(target, 1, SearchFilter()))[0] == "new"
        assert ids(await catalog.search(target, 5, SearchFilter(categories=("fresh",)))) == ["new"]
        # Replaced: the old vector and category are gone, the new ones found.
        await catalog.upsert([proto("new", -target, category="moved", price=2.0)])
        assert "new" not in ids(await catalog.search(target, 10, SearchFilter()))
        assert await catalog.search(target, 5, SearchFilter(categories=("fresh",))) == []
        assert ids(await catalog.search(-target, 1, SearchFilter(categories=("moved",), min_price=2.0))) == ["new"]
        assert (await catalog.delete(["new", "i7", "absent"])).deleted == 2
        remaining = await catalog.search(-target, 600, SearchFilter())
        assert len(remaining) == 499 and not {"new", "i7"} & set(ids(remaining))
        before = [ids(await catalog.search(q, 10, f)) for q in unit_rows(np.random.default_rng(1), 3) for f in FILTERS]
    finally:
        await catalog.close()

    restarted, _ = open_catalog(tmp_path)
    await restarted.open()
    await restarted.index_built()
    try:
        assert restarted.search_index == "memory"
        after = [ids(await restarted.search(q, 10, f)) for q in unit_rows(np.random.default_rng(1), 3) for f in FILTERS]
        assert after == before
        assert len(await restarted.search(-target, 600, SearchFilter())) == 499
    finally:
        await restarted.close()


async def test_get_items_reads_the_index_as_the_store_holds_them(stocked, data):
    catalog, store = stocked
    await catalog.upsert([proto("i5", -data["vectors"][5], title="replaced", category="moved", attributes={"k": "v"})])
    await catalog.delete(["i6"])
    asked = ["i5", "i6", "absent", "i1", "i2", "i0"]
    for include_vectors in (True, False):
        found, missing = await catalog.get(asked, include_vectors)
        assert catalog._index is not None and missing == ["i6", "absent"]
        stored = store.get(asked, include_vectors=include_vectors)
        assert [r.item_id for r in found] == ["i5", "i1", "i2", "i0"] and set(stored) == {"i5", "i1", "i2", "i0"}
        for record in found:
            expected = stored[record.item_id]
            assert (record.title, record.text, record.category, record.price, record.image_uri, record.attributes) == (
                expected.title, expected.text, expected.category, expected.price, expected.image_uri, expected.attributes,
            )
            if include_vectors:
                np.testing.assert_allclose(record.vector, expected.vector, atol=1e-7)
            else:
                assert record.vector is None
    (replaced,), _ = await catalog.get(["i5"], True)
    assert replaced.title == "replaced" and np.allclose(replaced.vector, -data["vectors"][5], atol=1e-6)


def milvus_lite_child(db_path: Path) -> int:
    """The pid of the milvus-lite process serving `db_path` (a child of this test process)."""
    for child in psutil.Process().children():
        if str(db_path) in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError(f"no milvus-lite process serves {db_path}")


async def test_a_failed_store_write_sends_searches_to_milvus_until_a_reopen_rebuilds_the_index(tmp_path, data):
    catalog, _ = open_catalog(tmp_path)
    await catalog.open()
    await catalog.index_built()
    try:
        await catalog.upsert(data["items"][:100])
        os.kill(milvus_lite_child(tmp_path / "catalog.db"), signal.SIGKILL)
        with pytest.raises(Unavailable):
            await catalog.upsert(data["items"][100:200])
        # The store may hold part of a failed write: the index no longer answers for it.
        assert catalog.search_index == "milvus"
        await catalog.reopen_store()  # what store_watch does once it finds the store dead
        await catalog.index_built()
        assert catalog.search_index == "memory"
        query = data["vectors"][150]
        stored = (await catalog.stats()).item_count
        hits = await catalog.search(query, N, SearchFilter())
        assert len(hits) == stored and stored >= 100  # the index holds what the store holds, no more, no less
    finally:
        await catalog.close()


async def in_index_and_in_store(catalog: Catalog, store: MilvusStore) -> tuple[dict, dict]:
    """Every item as the index finds it and as the store holds it: id -> (category, price, rounded vector)."""

    def key(record) -> tuple:
        return record.category, record.price, tuple(np.round(record.vector, 5))

    hits = await catalog.search(np.ones(DIM, dtype=np.float32), N, SearchFilter(), include_vectors=True)
    return {h.record.item_id: key(h.record) for h in hits}, {r.item_id: key(r) for page in store.scan() for r in page}


async def test_a_cancelled_write_still_reaches_the_index(tmp_path, data):
    catalog, store = open_catalog(tmp_path)
    await catalog.open()
    await catalog.index_built()
    try:
        write = asyncio.ensure_future(catalog.upsert(data["items"]))
        while not catalog._index_sync.locked():  # held while a worker thread writes to the store
            await asyncio.sleep(0.001)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        # A write waits for the worker thread, which goes on to finish the cancelled one in the store and the index.
        assert (await catalog.delete(["never-stored"])).deleted == 0
        indexed, stored = await in_index_and_in_store(catalog, store)
        assert catalog.search_index == "memory" and indexed == stored and len(stored) == N
    finally:
        await catalog.close()


class PausedScanStore(MilvusStore):
    """The real store, whose scan waits after its first page until the test lets it go on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_page_read, self.go_on = threading.Event(), threading.Event()

    def scan(self, page_rows: int = 1000):
        for number, page in enumerate(super().scan(page_rows)):
            yield page
            if number == 0:
                self.first_page_read.set()
                self.go_on.wait(60)


async def test_writes_during_the_scan_are_replayed_on_the_new_index(tmp_path, data):
    first, _ = open_catalog(tmp_path, search_index="milvus")
    await first.open()
    await first.upsert(data["items"])
    await first.close()

    store = PausedScanStore(str(tmp_path / "catalog.db"), "items")
    catalog = Catalog(store, None, CatalogLimits(max_top_k=N, max_batch=N), search_index="memory")
    await catalog.open()  # serving at once; the index is scanned from the 3,000 stored items in the background
    try:
        assert await asyncio.to_thread(store.first_page_read.wait, 60)
        rng = np.random.default_rng(2)
        # Ids sort as strings: the first page (1,000 ids) holds i0 and i1, later pages i2998 and i2999.
        await catalog.upsert([proto("added", unit_rows(rng, 1)[0], category="new")])
        await catalog.upsert([proto("i0", unit_rows(rng, 1)[0], category="moved", price=1.0)])  # behind the scan
        await catalog.upsert([proto("i2999", unit_rows(rng, 1)[0], category="moved")])  # ahead of it
        await catalog.delete(["i1", "i2998"])
        assert catalog.search_index == "milvus"
        store.go_on.set()
        await catalog.index_built()
        indexed, stored = await in_index_and_in_store(catalog, store)
        assert catalog.search_index == "memory" and indexed == stored and len(stored) == N - 1
        assert stored["i0"][:2] == ("moved", 1.0) and stored["i2999"][0] == "moved" and "i1" not in stored
    finally:
        store.go_on.set()
        await catalog.close()


class ScanFailsOnceStore(MilvusStore):
    """The real store, whose first scan fails after a page as a timed-out Milvus call would."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scans = 0

    def scan(self, page_rows: int = 1000):
        self.scans += 1
        for page in super().scan(page_rows):
            yield page
            if self.scans == 1:
                raise Unavailable("Milvus store: DEADLINE_EXCEEDED (injected by the test)")


async def test_a_failed_scan_is_retried_while_milvus_serves(tmp_path, data, monkeypatch):
    monkeypatch.setattr(catalog_module, "INDEX_BUILD_RETRY_SECONDS", 0.2)
    first, _ = open_catalog(tmp_path, search_index="milvus")
    await first.open()
    await first.upsert(data["items"][:1500])
    await first.close()

    store = ScanFailsOnceStore(str(tmp_path / "catalog.db"), "items")
    catalog = Catalog(store, None, CatalogLimits(max_top_k=N, max_batch=N), search_index="memory")
    await catalog.open()
    try:
        await catalog.index_built()
        assert catalog.search_index == "milvus" and len(await catalog.search(data["vectors"][0], 5, SearchFilter())) == 5
        for _ in range(100):
            if catalog.search_index == "memory":
                break
            await asyncio.sleep(0.1)
        indexed, stored = await in_index_and_in_store(catalog, store)
        assert store.scans >= 3 and catalog.search_index == "memory" and indexed == stored and len(stored) == 1500
    finally:
        await catalog.close()


def test_the_memory_index_is_on_by_default_only_for_the_embedded_store():
    assert uses_memory_index("auto", "/var/catalog/catalog.db")
    assert not uses_memory_index("auto", "http://milvus:19530")
    assert uses_memory_index("memory", "http://milvus:19530")
    assert not uses_memory_index("milvus", "/var/catalog/catalog.db")
    with pytest.raises(ValueError, match="search_index: must be one of auto, memory, milvus"):
        uses_memory_index("faiss", "/var/catalog/catalog.db")
