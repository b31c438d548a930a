"""A caller's large call, within every limit, must not keep the catalog from answering its health checks: the ranker
and the gateway read missed checks as an outage and refuse every call that needs the catalog. Each test times the
health checks while hostile calls run against a real catalog over a real milvus-lite store."""

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.servers import start_service
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

DIM = 8
ITEMS = 3_000
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    service = start_service(
        "catalog", tmp_path_factory.mktemp("logs"), "--data-dir", str(tmp_path_factory.mktemp("store")),
        "--dimension", str(DIM), "--encoder-model", "test/vectors", "--query-encoder-addr", "",
    )
    vectors = np.random.default_rng(0).normal(size=(ITEMS, DIM)).astype(np.float32)
    with grpc.insecure_channel(service.address) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        for start in range(0, ITEMS, 1_000):
            items = [
                common_pb2.Item(item_id=f"item-{i:05d}", title=f"Item {i} with a title of some length", category=f"c{i % 7}",
                                vector=vectors[i].tolist())
                for i in range(start, start + 1_000)
            ]
            stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=120)
    yield service
    assert service.stop() == 0


def _slowest_health_check_while(channel, calls) -> float:
    """Runs each call in its own thread and checks health every 50 ms until all have ended: the slowest check's seconds."""
    health = health_pb2_grpc.HealthStub(channel)
    failures = []

    def run(call):
        try:
            call()
        except Exception as error:  # reported below, so that a refused call cannot pass for a fast one
            failures.append(error)

    callers = [threading.Thread(target=run, args=(call,)) for call in calls]
    for caller in callers:
        caller.start()
    slowest = 0.0
    while any(caller.is_alive() for caller in callers):
        started = time.perf_counter()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == health_pb2.HealthCheckResponse.SERVING
        slowest = max(slowest, time.perf_counter() - started)
        time.sleep(0.05)
    for caller in callers:
        caller.join()
    assert not failures, failures
    return slowest


@pytest.mark.parametrize(
    ("searches", "top_k", "detailed_hits", "before"),
    [
        (100, 1_000, 0, "each response was built on the event loop in one piece: checks waited 2-10 s"),
        # Every hit is built as a proto, detailed or not: the choice of the worker thread counted only detailed hits.
        (1_000, 100, 1, "100,000 hits, 1,000 of them detailed, were built on the event loop: checks waited 3.1 s"),
    ],
)
def test_health_checks_are_answered_while_large_search_batches_run(catalog, searches, top_k, detailed_hits, before):
    with grpc.insecure_channel(catalog.address, options=OPTIONS) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        search = catalog_pb2.SearchRequest(vector=[0.3] * DIM, top_k=top_k, detailed_hits=detailed_hits)
        request = catalog_pb2.SearchBatchRequest(searches=[search] * searches)  # 100,000 hits: within --max-batch-hits
        answered = []
        slowest = _slowest_health_check_while(
            channel, [lambda: answered.append(sum(len(r.hits) for r in stub.SearchBatch(request, timeout=300).responses))] * 3
        )
    assert answered == [100_000] * 3
    assert slowest < 1.0, f"a health check took {slowest:.2f} s while large searches ran (before, {before})"


def test_health_checks_are_answered_while_explained_searches_run(catalog):
    with grpc.insecure_channel(catalog.address, options=OPTIONS) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        search = catalog_pb2.SearchRequest(
            vector=[0.3] * DIM, top_k=100, detailed_hits=100, explain=[catalog_pb2.ExplainVector(values=[0.1] * DIM)]
        )
        request = catalog_pb2.SearchBatchRequest(searches=[search] * 1_000)
        answered = []
        slowest = _slowest_health_check_while(
            channel,
            [lambda: answered.append(sum(len(h.explain_scores) for r in stub.SearchBatch(request, timeout=300).responses for h in r.hits))],
        )
    assert answered == [100_000]
    # Before, the explain scores (a record copied per hit) were computed on the event loop: checks waited 1.2-1.9 s.
    assert slowest < 1.0, f"a health check took {slowest:.2f} s while an explained batch ran"


def test_health_checks_are_answered_while_searches_with_huge_filter_categories_run(catalog):
    """A category longer than any item's is dropped unread: 1,000 of 5,000 zero-width spaces and a letter (15 MB)
    were each scanned character by character on the event loop before being dropped."""
    categories = ["\u200b" * 5_000 + f"a{i}" for i in range(1_000)]
    with grpc.insecure_channel(catalog.address, options=OPTIONS) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        request = catalog_pb2.SearchRequest(vector=[0.3] * DIM, top_k=10, filter=common_pb2.ItemFilter(categories=categories))
        answered = []
        slowest = _slowest_health_check_while(channel, [lambda: answered.append(len(stub.Search(request, timeout=300).hits))] * 2)
        # Only categories no item can have: nothing matches (dropping them must not drop the filter).
        assert answered == [0, 0]
        mixed = common_pb2.ItemFilter(categories=["\u200b" * 5_000 + "c1", "c1"])
        hits = stub.Search(catalog_pb2.SearchRequest(vector=[0.3] * DIM, top_k=5, filter=mixed), timeout=60).hits
        assert len(hits) == 5 and {hit.item.category for hit in hits} == {"c1"}
    # Before, each call held the event loop for 1.3-1.6 s.
    assert slowest < 1.0, f"a health check took {slowest:.2f} s while searches with huge filters ran"
