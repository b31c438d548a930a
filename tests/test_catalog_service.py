"""The catalog service over real gRPC on loopback, on a real milvus-lite store (and a real encoder)."""

import math
import re
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.servers import REPO, start_service
from whisperlite.core.item_text import item_text
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, query_encoder_pb2, query_encoder_pb2_grpc

DIM = 8
INJECTION = 'x" or category != "'


def catalog_args(data_dir, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--collection", "items", *extra]


@pytest.fixture(scope="module")
def vector_catalog(tmp_path_factory):
    """A catalog without an encoder: callers send vectors."""
    service = start_service(
        "catalog",
        tmp_path_factory.mktemp("logs"),
        *catalog_args(tmp_path_factory.mktemp("store"), "--dimension", str(DIM), "--encoder-model", "test/vectors",
                      "--query-encoder-addr", "", "--max-top-k", "50", "--max-batch", "100", "--max-batch-hits", "1000"),
    )
    yield service
    assert service.stop() == 0


def test_a_fresh_store_starts_without_an_error_in_its_log(vector_catalog):
    """Building the search index queried a never-filled collection for vectors, which milvus-lite fails and pymilvus
    logged as an ERROR at every first start, though nothing was wrong."""
    log = vector_catalog.log()  # this module's first test: the log holds the start-up alone
    assert '"message": "serving"' in log and "ERROR" not in log, log


@pytest.fixture(scope="module")
def stub(vector_catalog):
    with grpc.insecure_channel(vector_catalog.address) as channel:
        yield catalog_pb2_grpc.CatalogServiceStub(channel)


def vec(*head: float) -> list[float]:
    return [*head, *([0.01] * (DIM - len(head)))]


ITEMS = [
    common_pb2.Item(item_id="boots", title="Black leather boots", category="Shoes", price=120.0, attributes={"colour": "black"}, vector=vec(1, 0)),
    common_pb2.Item(item_id="sneakers", title="White sneakers", category="Shoes", price=60.0, vector=vec(0.9, 0.1)),
    common_pb2.Item(item_id="dress", title="Red summer dress", category="Dresses", price=40.0, vector=vec(0, 1)),
    common_pb2.Item(item_id="gown", title="Evening gown", category="Dresses", vector=vec(0.1, 0.9)),  # no price
    common_pb2.Item(item_id="odd", title="Odd category", category=INJECTION, price=5.0, vector=vec(0.5, 0.5)),
]


@pytest.fixture(scope="module")
def stocked(stub):
    response = stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=ITEMS), timeout=30)
    assert (response.upserted_count, response.embedded_count) == (len(ITEMS), 0)
    return ITEMS


def status_of(call, request) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=30)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def search_ids(stub, vector, top_k=10, **filter_fields) -> list[str]:
    request = catalog_pb2.SearchRequest(vector=vector, top_k=top_k, filter=common_pb2.ItemFilter(**filter_fields))
    return [hit.item.item_id for hit in stub.Search(request, timeout=30).hits]


def test_upsert_get_search_delete_round_trip(stub, stocked):
    stats = stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=10)
    assert (stats.item_count, stats.dimension, stats.encoder_model, stats.collection) == (5, DIM, "test/vectors", "items")
    assert stats.max_batch == 100  # its --max-batch: what a client sizes its upserts by

    got = stub.GetItems(catalog_pb2.GetItemsRequest(item_ids=["gown", "nope", "boots"], include_vectors=True), timeout=10)
    assert [i.item_id for i in got.items] == ["gown", "boots"] and list(got.missing_item_ids) == ["nope"]
    gown, boots = got.items
    assert not gown.HasField("price") and boots.price == 120.0 and dict(boots.attributes) == {"colour": "black"}
    np.testing.assert_allclose(boots.vector, np.asarray(vec(1, 0)) / np.linalg.norm(vec(1, 0)), rtol=1e-5)

    hits = stub.Search(catalog_pb2.SearchRequest(vector=vec(1, 0), top_k=3), timeout=10).hits
    assert [h.item.item_id for h in hits] == ["boots", "sneakers", "odd"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and not hits[0].item.vector
    assert hits[0].item.title == "Black leather boots"

    # Upserting the same items again changes nothing.
    stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=ITEMS), timeout=30)
    assert stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=10).item_count == 5

    extra = common_pb2.Item(item_id="temp", title="to delete", vector=vec(1, 1))
    stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[extra]), timeout=30)
    deleted = stub.DeleteItems(catalog_pb2.DeleteItemsRequest(item_ids=["never-there", "temp", "temp", "never-there"]), timeout=10)
    assert deleted.deleted_count == 1 and list(deleted.missing_item_ids) == ["never-there"]  # each id once
    assert stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=10).item_count == 5


def test_a_price_of_minus_zero_is_stored_and_read_back_as_zero(stub, stocked):
    """-0.0 passed the price check (it is not < 0) and was stored, and read back, as -0.0."""
    free = common_pb2.Item(item_id="free", title="Free sample", price=-0.0, vector=vec(1, 1))
    stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[free]), timeout=30)
    try:
        got = stub.GetItems(catalog_pb2.GetItemsRequest(item_ids=["free"]), timeout=10).items[0]
        assert got.HasField("price") and math.copysign(1.0, got.price) == 1.0, got.price
    finally:
        stub.DeleteItems(catalog_pb2.DeleteItemsRequest(item_ids=["free"]), timeout=10)


def test_filters_over_grpc(stub, stocked):
    assert search_ids(stub, vec(1, 0), categories=["Dresses"]) == ["gown", "dress"]
    assert search_ids(stub, vec(1, 0), min_price=50) == ["boots", "sneakers"]
    assert search_ids(stub, vec(0, 1), max_price=1000) == ["dress", "odd", "sneakers", "boots"]  # gown has no price
    assert search_ids(stub, vec(1, 0), categories=["Shoes"], exclude_item_ids=["boots"]) == ["sneakers"]
    assert search_ids(stub, vec(1, 0), categories=["Unknown"]) == []  # unknown category: empty, not an error
    assert search_ids(stub, vec(1, 0), categories=[INJECTION]) == ["odd"]  # a value, never expression syntax
    assert search_ids(stub, vec(1, 0), exclude_item_ids=['x" or item_id != "']) == ["boots", "sneakers", "odd", "gown", "dress"]


def test_search_batch_answers_each_search_as_search_does(stub, stocked):
    searches = [
        catalog_pb2.SearchRequest(vector=vec(1, 0), top_k=3),
        catalog_pb2.SearchRequest(vector=vec(0, 1), top_k=3),  # same filter and sizes: one store search with the first
        catalog_pb2.SearchRequest(vector=vec(1, 0), top_k=5, filter=common_pb2.ItemFilter(categories=["Dresses"])),
        catalog_pb2.SearchRequest(vector=vec(0, 1), top_k=2, include_vectors=True),
        # two with bare hits in one store search: their detailed records come from one read by id
        catalog_pb2.SearchRequest(vector=vec(1, 0), top_k=4, include_vectors=True, detailed_hits=2),
        catalog_pb2.SearchRequest(vector=vec(0, 1), top_k=4, include_vectors=True, detailed_hits=2),
    ]
    batch = stub.SearchBatch(catalog_pb2.SearchBatchRequest(searches=searches), timeout=30)
    assert [response for response in batch.responses] == [stub.Search(search, timeout=30) for search in searches]
    assert [h.item.item_id for h in batch.responses[2].hits] == ["gown", "dress"]
    assert all(len(h.item.vector) == DIM for h in batch.responses[3].hits)


def test_detailed_hits_bound_the_hits_that_carry_their_item(stub, stocked):
    full = stub.Search(catalog_pb2.SearchRequest(vector=vec(1, 0), top_k=4, include_vectors=True), timeout=30).hits
    slim = stub.Search(catalog_pb2.SearchRequest(vector=vec(1, 0), top_k=4, include_vectors=True, detailed_hits=2), timeout=30).hits
    assert [h.item.item_id for h in slim] == [h.item.item_id for h in full]
    assert [h.score for h in slim] == [h.score for h in full]
    assert list(slim[:2]) == list(full[:2])
    assert all(h.item == common_pb2.Item(item_id=h.item.item_id) for h in slim[2:])  # the id alone


def explain(*vectors) -> list[catalog_pb2.ExplainVector]:
    return [catalog_pb2.ExplainVector(values=v) for v in vectors]


def test_explain_vectors_give_each_detailed_hit_its_dot_products_instead_of_its_vector(stub, stocked):
    query, taste = vec(1, 0), [0.5, -2.0, *([1.0] * (DIM - 2))]  # not normalized: products, not cosines
    full = stub.Search(catalog_pb2.SearchRequest(vector=query, top_k=4, include_vectors=True), timeout=30).hits
    explained = stub.Search(
        catalog_pb2.SearchRequest(vector=query, top_k=4, detailed_hits=3, explain=explain(query, taste)), timeout=30,
    ).hits
    assert [(h.item.item_id, h.score) for h in explained] == [(h.item.item_id, h.score) for h in full]
    for hit, reference in zip(explained[:3], full[:3], strict=True):
        stored = np.asarray(reference.item.vector, dtype=np.float32)
        np.testing.assert_allclose(hit.explain_scores, [stored @ np.float32(query), stored @ np.float32(taste)], rtol=1e-5, atol=1e-6)
        assert not hit.item.vector and hit.item.title == reference.item.title  # the item, without its vector
    assert not explained[3].explain_scores and explained[3].item == common_pb2.Item(item_id=explained[3].item.item_id)
    both = stub.SearchBatch(catalog_pb2.SearchBatchRequest(searches=[
        catalog_pb2.SearchRequest(vector=query, top_k=2, include_vectors=True, explain=explain(taste)),
        catalog_pb2.SearchRequest(vector=query, top_k=2),
    ]), timeout=30).responses
    assert [list(h.item.vector) for h in both[0].hits] == [list(h.item.vector) for h in full[:2]]  # asked for both: both
    np.testing.assert_allclose([h.explain_scores[0] for h in both[0].hits], [explained[0].explain_scores[1], explained[1].explain_scores[1]], rtol=1e-6)
    assert not any(h.explain_scores or h.item.vector for h in both[1].hits)  # a search of the same batch without them


@pytest.mark.parametrize(
    ("explain_vectors", "message"),
    [
        ([[1.0, 2.0]], "explain[0]: must have 8 values (the catalog's dimension), got 2"),
        ([vec(1), [math.nan] * DIM], "explain[1]: values must be finite, got nan at position 0"),
        ([vec(1)] * 5, "explain: at most 4 vectors, got 5"),
        # Finite values whose scores overflowed float32: inf came back.
        ([vec(1), [2e38] * DIM], "explain[1]: its norm 5.66e+38 is past float32's 3.4e+38, so its scores would overflow"),
    ],
)
def test_bad_explain_vectors_are_invalid_argument(stub, stocked, explain_vectors, message):
    code, details = status_of(stub.Search, catalog_pb2.SearchRequest(vector=vec(1), top_k=3, explain=explain(*explain_vectors)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == message, details
    code, details = status_of(stub.SearchBatch, catalog_pb2.SearchBatchRequest(
        searches=[catalog_pb2.SearchRequest(vector=vec(1), top_k=3, explain=explain(*explain_vectors))]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == f"searches[0].{message}", details


@pytest.mark.parametrize(
    ("searches", "field"),
    [
        ([catalog_pb2.SearchRequest(vector=vec(1), top_k=5), catalog_pb2.SearchRequest(vector=vec(1), top_k=0)], "searches[1].top_k"),
        ([catalog_pb2.SearchRequest(vector=[1.0, 2.0], top_k=5)], "searches[0].vector"),
        ([catalog_pb2.SearchRequest(vector=vec(1), top_k=5, detailed_hits=-1)], "searches[0].detailed_hits"),
        ([catalog_pb2.SearchRequest(vector=vec(1), top_k=5, filter=common_pb2.ItemFilter(min_price=5, max_price=1))],
         "searches[0].filter.min_price"),
        ([catalog_pb2.SearchRequest(vector=vec(1), top_k=5)] * 101, "searches: at most 100"),
    ],
)
def test_bad_search_batches_are_invalid_argument_naming_the_search(stub, stocked, searches, field):
    code, details = status_of(stub.SearchBatch, catalog_pb2.SearchBatchRequest(searches=searches))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details


def test_a_search_batch_asking_for_more_hits_than_the_limit_is_refused_before_any_search(stub, stocked):
    """The hits a batch asks for, all searches together, are bounded (--max-batch-hits, 1,000 here): 1,000 searches x
    top_k 1,000 used to run every search (~9 s of CPU) before the response was refused as too large."""
    fits = stub.SearchBatch(catalog_pb2.SearchBatchRequest(searches=[catalog_pb2.SearchRequest(vector=vec(1), top_k=50)] * 20), timeout=30)
    assert len(fits.responses) == 20
    code, details = status_of(stub.SearchBatch, catalog_pb2.SearchBatchRequest(searches=[catalog_pb2.SearchRequest(vector=vec(1), top_k=50)] * 21))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert details == (
        "searches: 1050 hits asked for in all (the sum of their top_k), over this catalog's limit of 1000 (--max-batch-hits): "
        "send fewer searches per call or a lower top_k"
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (catalog_pb2.SearchRequest(vector=vec(1), top_k=0), "top_k"),
        (catalog_pb2.SearchRequest(vector=vec(1), top_k=51), "top_k"),
        (catalog_pb2.SearchRequest(vector=[1.0, 2.0], top_k=5), "vector"),
        (catalog_pb2.SearchRequest(vector=[math.nan] * DIM, top_k=5), "vector"),
        (catalog_pb2.SearchRequest(vector=[math.inf] * DIM, top_k=5), "vector"),
        (catalog_pb2.SearchRequest(vector=vec(1), top_k=5, filter=common_pb2.ItemFilter(min_price=50, max_price=10)), "min_price"),
    ],
)
def test_bad_searches_are_invalid_argument(stub, stocked, request_, field):
    code, details = status_of(stub.Search, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (common_pb2.Item(item_id="", vector=vec(1)), "items[1].item_id"),
        (common_pb2.Item(item_id="new", vector=vec(1)), "items[1].item_id: duplicate"),
        (common_pb2.Item(item_id="x", vector=[1.0, 2.0]), "items[1].vector"),
        (common_pb2.Item(item_id="x", vector=[math.nan, *vec(1)[1:]]), "items[1].vector"),
        (common_pb2.Item(item_id="x", vector=[-math.inf, *vec(1)[1:]]), "items[1].vector"),
        (common_pb2.Item(item_id="x", title="no vector and no encoder"), "vector"),
        (common_pb2.Item(item_id="   ", vector=vec(1)), "items[1].item_id: must contain a visible character"),
        (common_pb2.Item(item_id="\u200b", vector=vec(1)), "items[1].item_id: must contain a visible character"),
        (common_pb2.Item(item_id="x", title="a\x00b", vector=vec(1)), "items[1].title: must not contain a NUL character"),
        (common_pb2.Item(item_id="x", text="a\x00b", vector=vec(1)), "items[1].text: must not contain a NUL character"),
        # An attribute without a name was stored: none could ask for it back.
        (common_pb2.Item(item_id="x", title="t", attributes={"": "x"}, vector=vec(1)), "items[1].attributes: '': a name must not be empty, nor only spaces or invisible (format) characters"),
        (common_pb2.Item(item_id="x", title="t", attributes={"\u200b ": "x"}, vector=vec(1)), "items[1].attributes: '\\u200b ': a name must not be empty"),
    ],
)
def test_bad_upserts_change_nothing(stub, stocked, bad, field):
    good = common_pb2.Item(item_id="new", title="valid but in a bad request", vector=vec(1))
    replace_boots = common_pb2.Item(item_id="boots", title="overwritten", vector=vec(0, 0, 1))
    code, details = status_of(stub.UpsertItems, catalog_pb2.UpsertItemsRequest(items=[good, bad, replace_boots]))
    expected = grpc.StatusCode.FAILED_PRECONDITION if "no encoder" in bad.title else grpc.StatusCode.INVALID_ARGUMENT
    assert code == expected and field in details, details
    got = stub.GetItems(catalog_pb2.GetItemsRequest(item_ids=["new", "boots"]), timeout=10)
    assert list(got.missing_item_ids) == ["new"] and got.items[0].title == "Black leather boots"
    assert stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=10).item_count == 5


def test_get_and_delete_limits(stub, stocked):
    for call, request in (
        (stub.GetItems, catalog_pb2.GetItemsRequest(item_ids=["boots", ""])),
        (stub.GetItems, catalog_pb2.GetItemsRequest(item_ids=[f"i{i}" for i in range(101)])),
        (stub.GetItems, catalog_pb2.GetItemsRequest(item_ids=["boots", "x" * 257])),
        (stub.DeleteItems, catalog_pb2.DeleteItemsRequest(item_ids=[""])),
        (stub.DeleteItems, catalog_pb2.DeleteItemsRequest(item_ids=["x" * 300_000])),
        (stub.DeleteItems, catalog_pb2.DeleteItemsRequest(item_ids=[f"i{i}" for i in range(101)])),
        (stub.UpsertItems, catalog_pb2.UpsertItemsRequest(items=[common_pb2.Item(item_id=f"i{i}", vector=vec(1)) for i in range(101)])),
    ):
        code, details = status_of(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and ("item_ids" in details or "items" in details), details
        assert len(details) < 200, details  # a refused id is measured, not echoed
    assert stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=10).item_count == 5


def test_health_and_metrics(vector_catalog, stub, stocked):
    with grpc.insecure_channel(vector_catalog.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "whisperlite.v1.CatalogService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    search_ids(stub, vec(1, 0))
    search_ids(stub, vec(1, 0), categories=["Shoes"])
    status_of(stub.Search, catalog_pb2.SearchRequest(vector=vec(1), top_k=0))
    text = urllib.request.urlopen(vector_catalog.metrics_url, timeout=10).read().decode()
    assert "whisperlite_catalog_items 5.0" in text
    # On the embedded store searches run in the catalog's in-process index (docs/catalog-store.md).
    assert 'whisperlite_catalog_search_seconds_count{strategy="memory"}' in text
    assert 'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="Search",grpc_service="whisperlite.v1.CatalogService"}' in text


def test_a_new_collection_must_name_the_model_behind_its_vectors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "whisperlite", "serve", "catalog", "--port", "0", "--metrics-port", "0",
         *catalog_args(tmp_path / "store", "--dimension", str(DIM), "--query-encoder-addr", "")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "catalog: creating a collection with --dimension needs --encoder-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_items_survive_a_restart(tmp_path):
    data_dir = tmp_path / "store"
    args = catalog_args(data_dir, "--dimension", str(DIM), "--encoder-model", "test/vectors", "--query-encoder-addr", "")
    first = start_service("catalog", tmp_path / "logs", *args)
    with grpc.insecure_channel(first.address) as channel:
        catalog_pb2_grpc.CatalogServiceStub(channel).UpsertItems(catalog_pb2.UpsertItemsRequest(items=ITEMS[:2]), timeout=30)
    assert first.stop() == 0  # SIGTERM: drains, closes the store and unlocks the file
    second = start_service("catalog", tmp_path / "logs", *args)
    try:
        with grpc.insecure_channel(second.address) as channel:
            restarted = catalog_pb2_grpc.CatalogServiceStub(channel)
            assert restarted.GetStats(catalog_pb2.GetStatsRequest(), timeout=10).item_count == 2
            assert search_ids(restarted, vec(1, 0), top_k=1) == ["boots"]
    finally:
        assert second.stop() == 0


def test_a_response_over_the_message_limit_is_refused_and_counted(tmp_path):
    """Allowed requests can ask for more bytes than a message may carry: the caller gets a status saying
    so, and the failure shows in the metrics (gRPC alone would fail it after the handler, counted as OK)."""
    limit = 100_000
    args = catalog_args(tmp_path / "store", "--dimension", str(DIM), "--encoder-model", "test/vectors",
                        "--query-encoder-addr", "", "--max-message-bytes", str(limit))
    catalog = start_service("catalog", tmp_path / "logs", *args)
    long_text = "é" * 15_000  # 30,000 bytes, within the per-item text limit
    ids = [f"long-{i}" for i in range(6)]
    try:
        with grpc.insecure_channel(catalog.address) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            for i, item_id in enumerate(ids):
                item = common_pb2.Item(item_id=item_id, title="Long", text=long_text, vector=vec(1, i / 10))
                stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[item]), timeout=30)
            assert [item.item_id for item in stub.GetItems(catalog_pb2.GetItemsRequest(item_ids=ids[:2]), timeout=10).items] == ids[:2]
            for call, request in (
                (stub.GetItems, catalog_pb2.GetItemsRequest(item_ids=ids)),
                (stub.Search, catalog_pb2.SearchRequest(vector=vec(1, 0), top_k=6)),
            ):
                code, details = status_of(call, request)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert re.search(rf"the response would be \d+ bytes, over this server's {limit}-byte message limit", details), details
            # A batch whose items' characters alone pass the limit is refused before its response is built
            # (the message has no exact size): 1,000 searches x top_k 1,000 would otherwise take gigabytes first.
            code, details = status_of(stub.SearchBatch, catalog_pb2.SearchBatchRequest(
                searches=[catalog_pb2.SearchRequest(vector=vec(1, 0), top_k=6)] * 4))  # fmt: skip
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith(f"the response would be over this server's {limit}-byte message limit: ask for fewer"), details
            assert stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=10).item_count == 6
        metrics = urllib.request.urlopen(catalog.metrics_url, timeout=10).read().decode()
        for method in ("GetItems", "Search", "SearchBatch"):
            assert f'grpc_server_handled_total{{grpc_code="RESOURCE_EXHAUSTED",grpc_method="{method}",grpc_service="whisperlite.v1.CatalogService"}} 1.0' in metrics
    finally:
        assert catalog.stop() == 0


def test_catalog_embeds_within_its_encoders_input_limit(tmp_path):
    """An encoder that takes 10 inputs per call still embeds an upsert of 25 items without vectors."""
    logs = tmp_path / "logs"
    encoder = start_service("query-encoder", logs, "--max-inputs", "10")
    catalog = start_service("catalog", logs, *catalog_args(tmp_path / "store", "--query-encoder-addr", encoder.address))
    items = [common_pb2.Item(item_id=f"shirt-{i}", title=f"Shirt number {i}") for i in range(25)]
    try:
        with grpc.insecure_channel(catalog.address) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            response = stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=120)
            assert (response.upserted_count, response.embedded_count) == (25, 25)
        embed_calls = [line for line in encoder.log().splitlines() if '"grpc_method": "/whisperlite.v1.QueryEncoderService/Embed"' in line]
        assert len(embed_calls) == 3 and all('"grpc_code": "OK"' in line for line in embed_calls)
    finally:
        assert catalog.stop() == 0
        assert encoder.stop() == 0


def test_catalog_embeds_items_with_the_query_encoder(tmp_path, encoder_service):
    """No vectors sent: the catalog asks the real encoder, records its model and dimension."""
    catalog = start_service(
        "catalog", tmp_path / "logs", *catalog_args(tmp_path / "store", "--query-encoder-addr", encoder_service.address)
    )
    items = [
        common_pb2.Item(item_id="boots", title="Black leather boots", text="Ankle boots with a side zip", category="Shoes"),
        common_pb2.Item(item_id="dress", title="Red summer dress", text="Light cotton, knee length", category="Dresses"),
        common_pb2.Item(item_id="mug", title="Ceramic coffee mug", category="Kitchen"),
        common_pb2.Item(item_id="given", title="Brings its own vector", vector=[0.5] * 384),
    ]
    try:
        with grpc.insecure_channel(catalog.address) as channel, grpc.insecure_channel(encoder_service.address) as encoder_channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            encoder = query_encoder_pb2_grpc.QueryEncoderServiceStub(encoder_channel)
            info = encoder.GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=10)
            response = stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=120)
            assert (response.upserted_count, response.embedded_count) == (4, 3)
            stats = stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=10)
            assert (stats.dimension, stats.encoder_model) == (info.dimension, info.model_name)

            texts = [item_text(i.title, i.text) for i in items[:3]]
            expected = encoder.Embed(query_encoder_pb2.EmbedRequest(texts=texts), timeout=60).text_vectors
            stored = stub.GetItems(catalog_pb2.GetItemsRequest(item_ids=["boots", "dress", "mug"], include_vectors=True), timeout=10)
            for want, got in zip(expected, stored.items, strict=True):
                np.testing.assert_allclose(got.vector, want.values, atol=1e-5)

            query = encoder.Embed(query_encoder_pb2.EmbedRequest(texts=["black leather boots"]), timeout=60).text_vectors[0].values
            assert search_ids(stub, query, top_k=3)[0] == "boots"
            assert search_ids(stub, query, top_k=3, categories=["Dresses", "Kitchen"])[0] in {"dress", "mug"}

            # Nothing the encoder could read: refused naming the request's item, never the encoder's texts[k], and
            # nothing written. The encoder reads the first max_text_chars (2,000) of title and text only.
            max_chars = info.max_text_chars
            for bad, message in (
                (common_pb2.Item(item_id="blank", title="\u200b\u200b"),
                 "items[1]: without a vector it needs a title or text with a visible character to embed"),
                (common_pb2.Item(item_id="hidden", text="\u200b" * max_chars + " dress"),
                 f"items[1]: without a vector it needs a visible character to embed, within the first {max_chars} characters"),
            ):
                good = common_pb2.Item(item_id="fine-scarf", title="Silk scarf")
                with pytest.raises(grpc.RpcError) as refused:
                    stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[good, bad]), timeout=60)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.value.details().startswith(message), refused.value.details()
            assert list(stub.GetItems(catalog_pb2.GetItemsRequest(item_ids=["fine-scarf", "blank", "hidden"]), timeout=10).missing_item_ids) == [
                "fine-scarf", "blank", "hidden"]
    finally:
        assert catalog.stop() == 0


async def test_the_ranker_client_falls_back_to_search_on_a_catalog_without_search_batch(vector_catalog, stocked):
    """A catalog from before SearchBatch, played by a gRPC server that serves only Search (forwarded to the real
    catalog): SearchBatch answers UNIMPLEMENTED there, and the client then sends one Search per query."""
    from whisperlite.core.clients.catalog import CandidateSearch, CatalogClient

    async with grpc.aio.insecure_channel(vector_catalog.address) as upstream:
        real = catalog_pb2_grpc.CatalogServiceStub(upstream)

        class SearchOnly(catalog_pb2_grpc.CatalogServiceServicer):
            async def Search(self, request, context):
                return await real.Search(request, timeout=30)

        server = grpc.aio.server()
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(SearchOnly(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        searches = [
            CandidateSearch(np.asarray(vec(1, 0), dtype=np.float32), 4, common_pb2.ItemFilter(), detailed_hits=2),
            CandidateSearch(np.asarray(vec(0, 1), dtype=np.float32), 3, common_pb2.ItemFilter(categories=["Dresses"])),
        ]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as old:
                via_old = await CatalogClient(old, 30).search_batch(searches)
            via_batch = await CatalogClient(upstream, 30).search_batch(searches)
        finally:
            await server.stop(None)
    assert [[(c.item, c.cosine) for c in hits] for hits in via_old] == [[(c.item, c.cosine) for c in hits] for hits in via_batch]
    assert [c.vector is not None for c in via_old[0]] == [True, True, False, False]
    assert [c.item.item_id for c in via_old[1]] == ["dress", "gown"]


async def test_the_ranker_client_asks_for_vectors_from_a_catalog_without_explain_scores(vector_catalog, stocked):
    """A catalog from before SearchRequest.explain, played by a server that drops the field before forwarding
    to the real catalog: the client finds no explain scores, asks again with vectors, and from then on asks for
    vectors at once."""
    from whisperlite.core.clients.catalog import CandidateSearch, CatalogClient

    calls = []
    async with grpc.aio.insecure_channel(vector_catalog.address) as upstream:
        real = catalog_pb2_grpc.CatalogServiceStub(upstream)

        class NoExplain(catalog_pb2_grpc.CatalogServiceServicer):
            async def SearchBatch(self, request, context):
                calls.append([search.include_vectors for search in request.searches])
                for search in request.searches:
                    search.ClearField("explain")
                return await real.SearchBatch(request, timeout=30)

        server = grpc.aio.server()
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(NoExplain(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        query = np.asarray(vec(1, 0), dtype=np.float32)
        search = CandidateSearch(query, 4, common_pb2.ItemFilter(), detailed_hits=2, explain=(query,))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as old:
                client = CatalogClient(old, 30)
                first, second = await client.search_batch([search]), await client.search_batch([search])
            current = await CatalogClient(upstream, 30).search_batch([search])
        finally:
            await server.stop(None)
    assert calls == [[False], [True], [True]]
    for found in (first, second):
        assert [c.vector is not None for c in found[0]] == [True, True, False, False]
        assert all(c.explain_scores is None for c in found[0])
    assert [(c.item, c.cosine) for c in first[0]] == [(c.item, c.cosine) for c in current[0]]
    assert [c.vector is None and c.explain_scores is not None for c in current[0][:2]] == [True, True]
    np.testing.assert_allclose([c.explain_scores[0] for c in current[0][:2]], [c.vector @ query for c in first[0][:2]], rtol=1e-6)
