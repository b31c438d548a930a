"""End to end over real gRPC: encoder -> catalog (milvus-lite) -> ranker, with bad input at every door."""

import asyncio
import json
import re
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, query_encoder_pb2, query_encoder_pb2_grpc, ranker_pb2, ranker_pb2_grpc

CATEGORY_WORDS = {"Shoes": ("boot", "shoe", "sandal", "sneaker"), "Watches": ("watch",), "Dresses": ("dress",)}


def _category(title: str) -> str:
    lowered = title.lower()
    return next((category for category, words in CATEGORY_WORDS.items() if any(w in lowered for w in words)), "Other")


@pytest.fixture(scope="module")
def catalog_items(datasets_dir) -> list[common_pb2.Item]:
    """400 real Amazon clothing titles; categories from title words, deterministic prices."""
    titles = json.loads((datasets_dir / "amazon_clothing_2014_msl" / "raw" / "id2name4Rec.json").read_text())
    chosen = sorted(titles.items(), key=lambda kv: int(kv[0]))[:400]
    return [
        common_pb2.Item(item_id=f"amz-{item_id}", title=title, category=_category(title), price=float(10 + int(item_id) % 90))
        for item_id, title in chosen
    ]


@pytest.fixture(scope="module")
def catalog(catalog_service):
    with grpc.insecure_channel(catalog_service.address) as channel:
        yield catalog_pb2_grpc.CatalogServiceStub(channel)


@pytest.fixture(scope="module")
def ranker(text_only_ranker):
    with grpc.insecure_channel(text_only_ranker.address) as channel:
        yield ranker_pb2_grpc.RankerServiceStub(channel)


@pytest.fixture(scope="module")
def ingested(catalog, catalog_items):
    response = catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=catalog_items), timeout=300)
    assert response.upserted_count == len(catalog_items)
    assert response.embedded_count == len(catalog_items)  # no vectors given: the catalog asked the encoder
    return catalog_items


def _metric(url: str, prefix: str) -> float:
    """The sum of a Prometheus text exposition's samples whose line starts with `prefix`."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(prefix))


def _status(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value.code(), caught.value.details()


def test_round_trip_upsert_search_recommend(catalog, ranker, ingested, encoder_service):
    stats = catalog.GetStats(catalog_pb2.GetStatsRequest(), timeout=10)
    assert stats.item_count == len(ingested)
    with grpc.insecure_channel(encoder_service.address) as channel:
        encoder = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        info = encoder.GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=10)
        assert stats.dimension == info.dimension == 384
        assert stats.encoder_model == info.model_name
        boots = encoder.Embed(query_encoder_pb2.EmbedRequest(texts=["black leather boots"]), timeout=10).text_vectors[0]

    hits = catalog.Search(catalog_pb2.SearchRequest(vector=boots.values, top_k=5), timeout=10).hits
    assert len(hits) == 5 and "boot" in hits[0].item.title.lower()
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    response = ranker.Recommend(ranker_pb2.RecommendRequest(user_id="nobody", query="black leather boots", top_k=5), timeout=30)
    assert response.request_id and response.model_version == ""
    assert response.path == ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY
    assert [r.item.item_id for r in response.items] == [h.item.item_id for h in hits]
    top = response.items[0]
    assert top.query_match == pytest.approx(hits[0].score, abs=1e-4)
    assert top.personal_affinity == 0.0 and not top.item.vector


def test_filters_through_the_ranker(ranker, ingested):
    request = ranker_pb2.RecommendRequest(
        user_id="u", query="comfortable shoes", top_k=10, filter=common_pb2.ItemFilter(categories=["Shoes"], max_price=50.0)
    )
    items = ranker.Recommend(request, timeout=30).items
    assert items and all(r.item.category == "Shoes" and r.item.price <= 50.0 for r in items)

    excluded = items[0].item.item_id
    request.filter.exclude_item_ids.append(excluded)
    assert excluded not in {r.item.item_id for r in ranker.Recommend(request, timeout=30).items}

    request.filter.categories[:] = ["No Such Category"]
    assert list(ranker.Recommend(request, timeout=30).items) == []


def test_concurrent_recommends_share_downstream_calls_and_answer_as_one_at_a_time(text_only_ranker, ranker, encoder_service, ingested):
    """The ranker merges concurrent Recommends into shared Embed and SearchBatch calls; each answer stays its own."""
    queries = ("black leather boots for a concert", "a summer dress in linen", "men's steel watch", "warm winter coat with a hood")
    requests = [
        ranker_pb2.RecommendRequest(user_id="u", query=query, top_k=top_k, filter=common_pb2.ItemFilter(categories=categories))
        for query in queries
        for top_k, categories in ((5, []), (12, []), (5, ["Shoes", "Dresses"]))
    ]

    def embed_calls() -> float:
        return _metric(encoder_service.metrics_url, 'grpc_server_handled_total{grpc_code="OK",grpc_method="Embed"')

    async def together() -> list[ranker_pb2.RecommendResponse]:
        async with grpc.aio.insecure_channel(text_only_ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            return await asyncio.gather(*(stub.Recommend(request, timeout=30) for request in requests * 2))

    # The texts are new to the ranker's query cache, so they go through shared Embeds.
    before = embed_calls()
    merged = asyncio.run(together())
    assert 1 <= embed_calls() - before < len(merged)  # some Recommends shared an Embed
    # A text embedded in a shared batch has the vector it has alone (the cache then keeps that vector).
    with grpc.insecure_channel(encoder_service.address) as channel:
        encoder = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        batched = encoder.Embed(query_encoder_pb2.EmbedRequest(texts=list(queries)), timeout=30).text_vectors
        for query, vector in zip(queries, batched, strict=True):
            single = encoder.Embed(query_encoder_pb2.EmbedRequest(texts=[query]), timeout=30).text_vectors[0]
            assert list(vector.values) == pytest.approx(list(single.values), abs=1e-5)
    alone = [ranker.Recommend(request, timeout=30) for request in requests]
    for response, expected in zip(merged, alone * 2, strict=True):
        assert [r.item.item_id for r in response.items] == [r.item.item_id for r in expected.items]
        assert [r.score for r in response.items] == pytest.approx([r.score for r in expected.items], abs=1e-6)
        assert [r.query_match for r in response.items] == pytest.approx([r.query_match for r in expected.items], abs=1e-6)
        assert all(r.item.title for r in response.items) and not any(r.item.vector for r in response.items)


def test_a_repeated_request_text_makes_no_embed_call(ranker, encoder_service, text_only_ranker, ingested):
    """The ranker keeps query vectors: the second Recommend of a text is answered without the encoder."""
    request = ranker_pb2.RecommendRequest(user_id="u", query="red canvas sneakers for the beach", top_k=8)

    def embed_calls() -> float:
        return _metric(encoder_service.metrics_url, 'grpc_server_handled_total{grpc_code="OK",grpc_method="Embed"')

    def cache(outcome: str) -> float:
        return _metric(text_only_ranker.metrics_url, f'whisperlite_ranker_query_cache_lookups_total{{outcome="{outcome}"}}')

    before, hits, misses = embed_calls(), cache("hit"), cache("miss")
    first = ranker.Recommend(request, timeout=30)
    assert embed_calls() - before == 1 and cache("miss") - misses == 1
    # Surrounding whitespace is not part of the query: the same text, the same cached vector.
    padded = ranker_pb2.RecommendRequest(user_id="u", query="  red canvas sneakers for the beach ", top_k=8)
    again = [ranker.Recommend(request, timeout=30), ranker.Recommend(padded, timeout=30)]
    assert embed_calls() - before == 1 and cache("hit") - hits == 2
    for response in again:
        assert [r.item.item_id for r in response.items] == [r.item.item_id for r in first.items]
        assert [r.score for r in response.items] == [r.score for r in first.items]


def test_unknown_user_with_recent_items_takes_the_recent_items_path(ranker, ingested):
    dresses = [item.item_id for item in ingested if item.category == "Dresses"][:3]
    response = ranker.Recommend(
        ranker_pb2.RecommendRequest(user_id="new-user", query="something for a party", top_k=5, recent_item_ids=dresses), timeout=30
    )
    assert response.path == ranker_pb2.PERSONALIZATION_PATH_RECENT_ITEMS
    assert all(r.personal_affinity != 0.0 for r in response.items)
    # Taste pulls towards the recent items: a dress-heavy history surfaces dresses for an open request.
    assert sum(r.item.category == "Dresses" for r in response.items) >= 2
    assert list(response.missing_recent_item_ids) == []


def test_recent_items_the_catalog_lacks_are_named_in_the_answer(ranker, ingested):
    """They were dropped without a word: a deleted item, or an id with a stray space, answered exactly as if the caller
    had not sent it, and a session of only such ids fell back to the text alone."""
    dresses = [item.item_id for item in ingested if item.category == "Dresses"][:2]
    asked = [dresses[0], "no-such-item", dresses[1] + " ", dresses[1], "no-such-item"]
    response = ranker.Recommend(ranker_pb2.RecommendRequest(user_id="new-user", query="something for a party", top_k=5, recent_item_ids=asked), timeout=30)
    assert list(response.missing_recent_item_ids) == ["no-such-item", dresses[1] + " "]
    known_only = ranker.Recommend(ranker_pb2.RecommendRequest(user_id="new-user", query="something for a party", top_k=5, recent_item_ids=dresses), timeout=30)
    assert [r.item.item_id for r in response.items] == [r.item.item_id for r in known_only.items]
    assert response.path == ranker_pb2.PERSONALIZATION_PATH_RECENT_ITEMS
    alone = ranker.Recommend(ranker_pb2.RecommendRequest(query="something for a party", top_k=5, recent_item_ids=["no-such-item"]), timeout=30)
    assert (alone.path, list(alone.missing_recent_item_ids)) == (ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY, ["no-such-item"])


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"query": "", "top_k": 5}, "query"),
        ({"query": "   \t ", "top_k": 5}, "query"),
        ({"query": "x" * 5000, "top_k": 5}, "query"),
        ({"query": "boots", "top_k": 0}, "top_k"),
        ({"query": "boots", "top_k": -3}, "top_k"),
        ({"query": "boots", "top_k": 100_000}, "top_k"),
        ({"query": "boots", "top_k": 5, "filter": common_pb2.ItemFilter(min_price=50, max_price=10)}, "price"),
        ({"query": "boots", "top_k": 5, "recent_item_ids": [""]}, "recent_item_ids"),
        ({"query": "boots", "top_k": 5, "user_id": "\u200b "}, "user_id: must contain a visible character"),
        # These were answered OK: a query that embeds as the empty text, and an id no catalog can hold, ignored.
        ({"query": "\x00", "top_k": 5}, "query: must contain a visible character"),
        ({"query": "\u200b\u200b", "top_k": 5}, "query: must contain a visible character"),
        ({"query": "boots", "top_k": 5, "recent_item_ids": ["x" * 300]}, "recent_item_ids[0]: must be at most 256 characters, got 300"),
        ({"query": "boots", "top_k": 5, "recent_item_ids": ["ok", "a\x01"]}, "recent_item_ids[1]: must not contain control characters"),
        ({"query": "boots", "top_k": 5, "recent_item_ids": ["\u200b"]}, "recent_item_ids[0]: must contain a visible character"),
        # The catalog's refusal, named as the caller sent it (it said "searches[0].filter.min_price").
        ({"query": "boots", "top_k": 5, "filter": common_pb2.ItemFilter(min_price=float("nan"))}, "filter.min_price"),
        # These selected the items stored without a category, or none.
        ({"query": "boots", "top_k": 5, "filter": common_pb2.ItemFilter(categories=["Shoes", ""])}, "filter.categories[1]: is empty"),
        ({"query": "boots", "top_k": 5, "filter": common_pb2.ItemFilter(categories=[" \t "])}, "filter.categories[0]: ' \\t ' has no visible"),
        # These excluded nothing and said nothing.
        ({"query": "boots", "top_k": 5, "filter": common_pb2.ItemFilter(exclude_item_ids=["b1", ""])}, "filter.exclude_item_ids[1]: must not be empty"),
        ({"query": "boots", "top_k": 5, "filter": common_pb2.ItemFilter(exclude_item_ids=["\u200b "])}, "filter.exclude_item_ids[0]: must contain a visible"),
    ],
)
def test_ranker_rejects_bad_requests(ranker, ingested, request_fields, field):
    code, details = _status(ranker.Recommend, ranker_pb2.RecommendRequest(**{"user_id": "u", **request_fields}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details and "searches[" not in details


def test_a_user_id_with_a_control_character_is_refused_not_served_as_a_stranger(ranker, ingested):
    code, details = _status(ranker.Recommend, ranker_pb2.RecommendRequest(user_id="a\n", query="boots", top_k=5))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "user_id: must not contain control characters (newline, tab, ...)")


def _vector(value: float, dimension: int = 384) -> list[float]:
    return [value] * dimension


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([common_pb2.Item(item_id="", title="no id")], "item_id"),
        ([common_pb2.Item(item_id="dup", title="a"), common_pb2.Item(item_id="dup", title="b")], "dup"),
        ([common_pb2.Item(item_id="short", title="a", vector=[0.1, 0.2])], "vector"),
        ([common_pb2.Item(item_id="nan", title="a", vector=[float("nan")] + _vector(0.1)[1:])], "vector"),
        ([common_pb2.Item(item_id="inf", title="a", vector=[float("inf")] + _vector(0.1)[1:])], "vector"),
        # Stored, it read as no category while being one, and no filter could ask for it.
        ([common_pb2.Item(item_id="blank", title="a", category="\u200b")], "items[1].category: '\\u200b' has no visible character"),
    ],
)
def test_catalog_rejects_bad_upserts_and_keeps_what_is_stored(catalog, ingested, items, field):
    good = common_pb2.Item(item_id="would-be-written", title="A valid item in the same request", vector=_vector(0.05))
    before = catalog.GetStats(catalog_pb2.GetStatsRequest(), timeout=10).item_count
    code, details = _status(catalog.UpsertItems, catalog_pb2.UpsertItemsRequest(items=[good, *items]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
    assert catalog.GetStats(catalog_pb2.GetStatsRequest(), timeout=10).item_count == before
    assert list(catalog.GetItems(catalog_pb2.GetItemsRequest(item_ids=["would-be-written"]), timeout=10).missing_item_ids) == [
        "would-be-written"
    ]


@pytest.mark.parametrize(
    ("vector", "field"),
    [([0.1, 0.2, 0.3], "vector"), ([float("nan")] * 384, "vector"), ([float("-inf")] * 384, "vector")],
)
def test_catalog_rejects_bad_search_vectors(catalog, ingested, vector, field):
    code, details = _status(catalog.Search, catalog_pb2.SearchRequest(vector=vector, top_k=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details


@pytest.mark.parametrize(
    ("category", "problem"),
    [
        ("", "is empty; a category must contain a visible character"),
        ("   ", "'   ' has no visible character; a category must contain one, not only spaces or invisible (format) characters"),
        ("\u200b\ufeff", "'\\u200b\\ufeff' has no visible character; a category must contain one, not only spaces or invisible (format) characters"),
    ],
)
def test_a_filter_category_that_names_none_is_refused_by_every_search(catalog, ingested, category, problem):
    """An empty category selected the items stored without one; a blank one selected nothing and said nothing."""
    message = f"filter.categories[1]: {problem} (send no categories to keep every category)"
    search = catalog_pb2.SearchRequest(vector=_vector(0.1), top_k=5, filter=common_pb2.ItemFilter(categories=["Shoes", category]))
    assert _status(catalog.Search, search) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    batch = catalog_pb2.SearchBatchRequest(searches=[catalog_pb2.SearchRequest(vector=_vector(0.1), top_k=5), search])
    assert _status(catalog.SearchBatch, batch) == (grpc.StatusCode.INVALID_ARGUMENT, f"searches[1].{message}")


def test_oversized_message_is_refused(ranker):
    code, _ = _status(ranker.Recommend, ranker_pb2.RecommendRequest(user_id="u", query="q" * (20 * 1024 * 1024), top_k=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_reflection_and_metrics(encoder_service, catalog_service, text_only_ranker, ranker, ingested):
    ranker.Recommend(ranker_pb2.RecommendRequest(user_id="u", query="red dress", top_k=3), timeout=30)
    expected = [
        (encoder_service, "whisperlite.v1.QueryEncoderService",
         ["whisperlite_encoder_batch_size", "whisperlite_encoder_cache_hits_total", "whisperlite_encoder_cache_misses_total"]),
        (catalog_service, "whisperlite.v1.CatalogService", ["whisperlite_catalog_items", "whisperlite_catalog_search_seconds"]),
        (text_only_ranker, "whisperlite.v1.RankerService", ["whisperlite_ranker_stage_seconds", "whisperlite_ranker_recommendations_total"]),
    ]
    for service, full_name, metric_names in expected:
        with grpc.insecure_channel(service.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", full_name):
                assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            assert full_name in set(ProtoReflectionDescriptorDatabase(channel).get_services())
        text = urllib.request.urlopen(service.metrics_url, timeout=5).read().decode()
        for metric in ["grpc_server_handled_total", "grpc_server_handling_seconds", *metric_names]:
            assert re.search(rf"^{metric}(_bucket|_count)?[{{ ]", text, re.MULTILINE), f"{service.name} lacks {metric}"
        assert re.search(rf'grpc_server_handled_total{{.*grpc_service="{re.escape(full_name)}"', text)
    ranker_metrics = urllib.request.urlopen(text_only_ranker.metrics_url, timeout=5).read().decode()
    for stage in ("encode", "personalize", "search", "score"):
        assert f'whisperlite_ranker_stage_seconds_count{{stage="{stage}"}}' in ranker_metrics


def test_ingest_keeps_the_first_row_of_a_repeated_id_as_training_does(tmp_path, catalog_service, catalog, ingested):
    """The catalog must hold the item the model learned: training keeps the first row of a repeated id, and ingest
    used to upsert every row, so the last one won."""
    from whisperlite.core.dataset import load_dataset
    from whisperlite.shell.ingest import ingest

    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text(
        "item_id,title\ningest-dup,Capezio ultra soft transition tight\ningest-other,Wool scarf\ningest-dup,Steel toe leather work boots\n"
    )
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,ingest-dup,1\nu1,ingest-other,2\n")
    trained_on = load_dataset(data).items.set_index("item_id")["title"]["ingest-dup"]
    try:
        assert ingest(data, catalog_service.address) == 2
        stored = catalog.GetItems(catalog_pb2.GetItemsRequest(item_ids=["ingest-dup"]), timeout=30).items[0]
        assert stored.title == trained_on == "Capezio ultra soft transition tight"
    finally:  # the catalog is shared with other modules' tests
        catalog.DeleteItems(catalog_pb2.DeleteItemsRequest(item_ids=["ingest-dup", "ingest-other"]), timeout=30)


def test_ingest_describes_items_by_their_reviews_as_training_does(tmp_path, catalog_service, catalog, ingested):
    """A dataset whose items.csv has no descriptions (item_text_source train_requests: yelp, womens_ecommerce_clothing)
    trains on items described by their reviews, but ingest loaded items.csv as written, so the catalog ranked titles
    alone ("Yelp business <id>") against a model trained on the reviews."""
    from whisperlite.core.dataset import load_dataset
    from whisperlite.core.item_text import item_text, items_with_request_text
    from whisperlite.shell.ingest import ingest
    from whisperlite.trainer.split import temporal_split

    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text('{"name": "reviews", "item_text_source": "train_requests"}')
    (data / "items.csv").write_text("item_id,title,text\nrev-1,Business one,\nrev-2,Business two,\n")
    (data / "interactions.csv").write_text(
        "user_id,item_id,timestamp,request\n"
        "u1,rev-1,1,Great tacos and friendly staff\nu1,rev-2,2,Slow service but good coffee\nu1,rev-1,3,Tacos again\n"
        "u2,rev-2,4,Lovely patio for coffee\n"
    )
    dataset = load_dataset(data)
    trained = items_with_request_text(dataset.items, temporal_split(dataset, 3).train).set_index("item_id")["text"]
    try:
        assert ingest(data, catalog_service.address) == 2
        stored = {item.item_id: item for item in catalog.GetItems(catalog_pb2.GetItemsRequest(item_ids=["rev-1", "rev-2"]), timeout=30).items}
        assert stored["rev-1"].text == "Great tacos and friendly staff Tacos again"
        assert stored["rev-2"].text == "Slow service but good coffee Lovely patio for coffee"
        # What training embedded, or that and the later reviews evaluation held out (u1's last one here).
        assert trained["rev-1"] == "Great tacos and friendly staff" and item_text("Business one", stored["rev-1"].text).startswith(
            item_text("Business one", trained["rev-1"]))
    finally:  # the catalog is shared with other modules' tests
        catalog.DeleteItems(catalog_pb2.DeleteItemsRequest(item_ids=["rev-1", "rev-2"]), timeout=30)
