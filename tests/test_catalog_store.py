"""The catalog's domain and store against a real milvus-lite file in tmp_path (no gRPC)."""

import math

import numpy as np
import pytest

from whisperlite.services.catalog import metrics
from whisperlite.services.catalog.catalog import Catalog, CatalogLimits
from whisperlite.services.catalog.filters import SearchFilter, build_expression, quote
from whisperlite.services.catalog.store import EXACT_VECTOR_FIELD, CollectionSpec, MilvusStore
from whisperlite.core.errors import FailedPrecondition, InvalidArgument
from whisperlite.v1 import common_pb2

DIM = 16
INJECTION = 'x" or category != "'


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def item(item_id: str, vector, **fields) -> common_pb2.Item:
    return common_pb2.Item(item_id=item_id, vector=list(vector), **fields)


@pytest.fixture(params=["memory", "milvus"])
async def catalog(tmp_path, request):
    """Every use case, with searches in the in-process index and in Milvus."""
    store = MilvusStore(str(tmp_path / "catalog.db"), "items")
    catalog = Catalog(
        store, None, CatalogLimits(max_top_k=50, max_batch=3000), CollectionSpec(dimension=DIM, encoder_model="test/encoder"),
        search_index=request.param,
    )
    await catalog.open()
    await catalog.index_built()
    assert catalog.search_index == request.param
    yield catalog
    await catalog.close()


@pytest.fixture
async def stocked(catalog):
    """12 items: categories A, B and the injection string; every third without a price."""
    rng = np.random.default_rng(7)
    categories = ["A", "B", INJECTION]
    items = []
    for i in range(12):
        fields = {"title": f"item {i}", "text": f"text {i}", "category": categories[i % 3], "attributes": {"n": str(i)}}
        if i % 4 != 3:
            fields["price"] = float(10 * i)
        items.append(item(f"id-{i}", unit(rng), **fields))
    await catalog.upsert(items)
    return {it.item_id: it for it in items}


async def snapshot(catalog: Catalog) -> dict:
    records, _ = await catalog.get([f"id-{i}" for i in range(12)] + ["new-1", "new-2"], include_vectors=True)
    return {r.item_id: (r.title, r.category, r.price, tuple(np.round(r.vector, 6))) for r in records}


async def test_round_trip_keeps_every_field(catalog):
    vector = np.arange(1, DIM + 1, dtype=np.float32)
    await catalog.upsert(
        [
            item("a", vector, title="Boots", text="leather", category="Shoes", price=99.5, image_uri="s3://i/a.jpg", attributes={"brand": "X"}),
            item("b", -vector, title="No price"),
        ]
    )
    found, missing = await catalog.get(["b", "a", "zz"], include_vectors=True)
    assert [r.item_id for r in found] == ["b", "a"] and missing == ["zz"]
    b, a = found
    assert (a.title, a.text, a.category, a.price, a.image_uri, a.attributes) == ("Boots", "leather", "Shoes", 99.5, "s3://i/a.jpg", {"brand": "X"})
    assert b.price is None  # absent stays absent, not 0
    np.testing.assert_allclose(a.vector, vector / np.linalg.norm(vector), rtol=1e-6)  # stored L2-normalized
    without, _ = await catalog.get(["a"], include_vectors=False)
    assert without[0].vector is None
    stats = await catalog.stats()
    assert (stats.item_count, stats.dimension, stats.encoder_model) == (2, DIM, "test/encoder")
    assert metrics.ITEMS._value.get() == 2


async def test_upsert_is_idempotent_and_replaces_by_id(catalog, stocked):
    again = list(stocked.values())
    await catalog.upsert(again)
    await catalog.upsert(again)
    assert (await catalog.stats()).item_count == 12
    changed = common_pb2.Item()
    changed.CopyFrom(stocked["id-0"])
    changed.title = "renamed"
    changed.ClearField("price")
    await catalog.upsert([changed])
    (record,), _ = await catalog.get(["id-0"], include_vectors=False)
    assert (record.title, record.price) == ("renamed", None)
    assert (await catalog.stats()).item_count == 12


async def test_writes_in_chunks_past_the_milvus_lite_insert_cliff(catalog):
    rng = np.random.default_rng(1)
    await catalog.upsert([item(f"bulk-{i}", unit(rng)) for i in range(2500)])
    assert (await catalog.stats()).item_count == 2500
    found, missing = await catalog.get(["bulk-0", "bulk-1999", "bulk-2499"], include_vectors=False)
    assert len(found) == 3 and not missing


def _ids(hits) -> list[str]:
    return [hit.record.item_id for hit in hits]


async def test_filters_categories_price_and_exclusions(catalog, stocked):
    query = np.asarray(stocked["id-0"].vector)
    everything = await catalog.search(query, 50, SearchFilter())
    assert len(everything) == 12 and _ids(everything)[0] == "id-0"
    assert [h.score for h in everything] == sorted((h.score for h in everything), reverse=True)

    a_only = await catalog.search(query, 50, SearchFilter(categories=("A",)), include_vectors=True)
    assert sorted(_ids(a_only)) == ["id-0", "id-3", "id-6", "id-9"]
    np.testing.assert_allclose(a_only[0].record.vector, query, atol=1e-6)  # vectors come back on the exact path too

    priced = await catalog.search(query, 50, SearchFilter(min_price=20, max_price=60))
    # id-3 (30) and id-7 have no price: an item without a price never matches a price bound.
    assert sorted(_ids(priced)) == ["id-2", "id-4", "id-5", "id-6"]
    assert all(20 <= h.record.price <= 60 for h in priced)
    assert "id-3" not in _ids(await catalog.search(query, 50, SearchFilter(max_price=1e9)))

    combined = await catalog.search(query, 50, SearchFilter(categories=("A", "B"), min_price=0, exclude_item_ids=("id-0", "id-4")))
    assert sorted(_ids(combined)) == ["id-1", "id-10", "id-6", "id-9"]

    assert await catalog.search(query, 50, SearchFilter(categories=("NoSuchCategory",))) == []
    assert len(await catalog.search(query, 3, SearchFilter(exclude_item_ids=("id-0",)))) == 3


async def test_injection_attempts_match_only_their_literal_value(catalog, stocked):
    query = np.asarray(stocked["id-1"].vector)
    # If the value were pasted into the expression, `category == "x" or category != ""` would match all 12.
    hits = await catalog.search(query, 50, SearchFilter(categories=(INJECTION,)))
    assert sorted(_ids(hits)) == ["id-11", "id-2", "id-5", "id-8"]
    assert {h.record.category for h in hits} == {INJECTION}
    assert await catalog.search(query, 50, SearchFilter(categories=('A" or category != "A',))) == []
    assert await catalog.search(query, 50, SearchFilter(categories=("A' or category != 'A",))) == []
    assert await catalog.search(query, 50, SearchFilter(categories=("A\n",))) == []
    excluded = await catalog.search(query, 50, SearchFilter(exclude_item_ids=('id-1" or item_id != "',)))
    assert len(excluded) == 12
    found, missing = await catalog.get(['id-1" or item_id != "', "id-1' or '1'='1"], include_vectors=False)
    assert found == [] and len(missing) == 2
    assert (await catalog.delete(["id-1' or '1'='1", 'x" or item_id != "'])).deleted == 0
    assert (await catalog.stats()).item_count == 12


async def test_quoting_round_trips_awkward_values(catalog):
    rng = np.random.default_rng(3)
    awkward = ["back\\slash", "ends with \\", 'say "hi"', '\\"', "it's", "naïve 中文 😀", "%_*"]
    await catalog.upsert([item(f"w-{i}", unit(rng), category=c) for i, c in enumerate(awkward)])
    for i, category in enumerate(awkward):
        hits = await catalog.search(unit(rng), 50, SearchFilter(categories=(category,)))
        assert _ids(hits) == [f"w-{i}"], category
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    expression = build_expression(SearchFilter(categories=(INJECTION,), min_price=1.5, exclude_item_ids=("k",)), templates=True)
    assert INJECTION not in expression.text and expression.params["categories"] == [INJECTION]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (item("", np.ones(DIM)), "items[1].item_id"),
        (item("id-0", np.ones(DIM)), "items[1].item_id: duplicate"),  # same id as the good item
        (item("x", np.ones(DIM - 1)), "items[1].vector"),
        (item("x", [math.nan] + [0.1] * (DIM - 1)), "items[1].vector"),
        (item("x", [math.inf] + [0.1] * (DIM - 1)), "items[1].vector"),
        (item("x", np.zeros(DIM)), "items[1].vector"),
        (item("it's", np.ones(DIM)), "items[1].item_id"),
        (item("x" * 257, np.ones(DIM)), "items[1].item_id"),
        (item("x", np.ones(DIM), category="a\nb"), "items[1].category"),
        (item("x", np.ones(DIM), price=-1), "items[1].price"),
        (item("x", np.ones(DIM), price=math.nan), "items[1].price"),
        (item("x", np.ones(DIM), title="t" * 1025), "items[1].title"),
        (common_pb2.Item(item_id="x", title="   "), "items[1]"),  # nothing to embed
    ],
)
async def test_bad_upserts_name_the_field_and_write_nothing(catalog, stocked, bad, field):
    before = await snapshot(catalog)
    good = item("id-0", -np.ones(DIM), title="would overwrite id-0")
    with pytest.raises(InvalidArgument) as error:
        await catalog.upsert([good, bad])
    assert field in str(error.value)
    assert await snapshot(catalog) == before


async def test_upsert_without_vector_needs_an_encoder(catalog, stocked):
    before = await snapshot(catalog)
    with pytest.raises(FailedPrecondition, match="no vector"):
        await catalog.upsert([common_pb2.Item(item_id="new-1", title="needs embedding")])
    assert await snapshot(catalog) == before


async def test_request_limits(catalog, stocked):
    query = np.asarray(stocked["id-0"].vector)
    for top_k in (0, -1, 51):
        with pytest.raises(InvalidArgument, match="top_k"):
            await catalog.search(query, top_k, SearchFilter())
    for vector, needle in ((query[:-1], "vector"), (np.full(DIM, np.nan), "vector"), (np.zeros(DIM), "vector")):
        with pytest.raises(InvalidArgument, match=needle):
            await catalog.search(vector, 5, SearchFilter())
    with pytest.raises(InvalidArgument, match="item_ids\\[1\\]"):
        await catalog.get(["id-0", ""], include_vectors=False)
    with pytest.raises(InvalidArgument, match="item_ids"):
        await catalog.delete(["x"] * 3001)
    with pytest.raises(InvalidArgument, match="items"):
        await catalog.upsert([])


async def test_delete_counts_existing_ids_only_and_names_the_others(catalog, stocked):
    result = await catalog.delete(["nope", "id-0", "id-1", "id-0", "gone", "nope"])
    assert (result.deleted, result.missing) == (2, ["nope", "gone"])  # each once, in request order
    assert (await catalog.stats()).item_count == 10
    _, missing = await catalog.get(["id-0", "id-2"], include_vectors=False)
    assert missing == ["id-0"]
    assert metrics.ITEMS._value.get() == 10


@pytest.mark.parametrize("search_index", ["milvus", "memory"])
async def test_filtered_search_is_exact(tmp_path, search_index):
    """Category and price filters go to the FLAT copy or the in-process index: results equal brute force, item for item."""
    rng = np.random.default_rng(11)
    n, dim = 6000, 32
    centres = rng.normal(size=(60, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 60, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories = rng.integers(0, 10, n)
    prices = rng.uniform(0, 100, n)
    store = MilvusStore(str(tmp_path / "catalog.db"), "items")
    catalog = Catalog(store, None, CatalogLimits(max_batch=n), CollectionSpec(dimension=dim, encoder_model="m"), search_index=search_index)
    await catalog.open()
    await catalog.index_built()
    try:
        await catalog.upsert(
            [item(f"i{j}", vectors[j], category=f"c{categories[j]}", price=float(prices[j])) for j in range(n)]
        )
        assert EXACT_VECTOR_FIELD in store._client.list_indexes("items")
        for q in range(20):
            query = vectors[rng.integers(0, n)] + 0.3 * rng.normal(size=dim).astype(np.float32)
            query /= np.linalg.norm(query)
            wanted = f"c{q % 10}"
            mask = (categories == q % 10) & (prices <= 50)
            scores = np.where(mask, vectors @ query, -np.inf)
            expected = [f"i{j}" for j in np.argsort(-scores)[:10]]
            hits = await catalog.search(query, 10, SearchFilter(categories=(wanted,), max_price=50))
            assert _ids(hits) == expected
            np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:10], atol=1e-5)
    finally:
        await catalog.close()


async def test_reopen_keeps_items_and_encoder_name(tmp_path):
    uri = str(tmp_path / "catalog.db")
    first = Catalog(MilvusStore(uri, "items"), None, creation=CollectionSpec(dimension=DIM, encoder_model="enc/v1", exact_filtered_search=False))
    await first.open()
    await first.upsert([item("a", np.ones(DIM), title="kept")])
    await first.close()
    # A different creation spec is ignored: the collection already exists and keeps its own.
    second = Catalog(MilvusStore(uri, "items"), None, creation=CollectionSpec(dimension=DIM + 1, encoder_model="other"))
    info = await second.open()
    try:
        assert (info.dimension, info.encoder_model, info.exact_filtered_search) == (DIM, "enc/v1", False)
        assert (await second.stats()).item_count == 1
        assert second._store.strategy(SearchFilter(categories=("x",))) == "ann"
    finally:
        await second.close()


async def test_refuses_a_collection_it_did_not_create(tmp_path):
    from pymilvus import DataType, MilvusClient

    uri = str(tmp_path / "catalog.db")
    client = MilvusClient(uri)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=16)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    index = client.prepare_index_params()
    index.add_index(field_name="v", index_type="FLAT", metric_type="COSINE")
    client.create_collection("foreign", schema=schema, index_params=index)
    client.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)
    store = MilvusStore(uri, "foreign")
    try:
        with pytest.raises(FailedPrecondition, match="not created by the WhisperLite catalog"):
            store.open()
    finally:
        store.close()


async def test_reading_vectors_of_a_catalog_that_never_held_an_item_finds_nothing(catalog):
    # milvus-lite fails a vector query on a collection that never held a row; the caller asked a fair
    # question about an empty catalog and gets the honest answer, not UNAVAILABLE.
    records, missing = await catalog.get(["id-0", "id-1"], include_vectors=True)
    assert records == [] and missing == ["id-0", "id-1"]
    page, token = await catalog.page(10, "", include_vectors=True)
    assert page == [] and token == ""
