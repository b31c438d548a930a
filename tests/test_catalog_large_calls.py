"""A caller's large SearchBatch, within every limit, must not keep the catalog from answering its health checks:
the ranker and the gateway read missed checks as an outage and refuse every call that needs the catalog."""

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


def test_health_checks_are_answered_while_large_search_batches_run(catalog):
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(catalog.address, options=options) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        search = catalog_pb2.SearchRequest(vector=[0.3] * DIM, top_k=1_000)
        request = catalog_pb2.SearchBatchRequest(searches=[search] * 100)  # 100,000 hits in full: within --max-batch-hits
        answered = []

        def large_call():
            response = stub.SearchBatch(request, timeout=300)
            answered.append(sum(len(r.hits) for r in response.responses))

        callers = [threading.Thread(target=large_call) for _ in range(3)]
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
    assert answered == [100_000] * 3
    # Before, each response was built on the event loop in one piece: checks waited seconds (2-10 s here).
    assert slowest < 1.0, f"a health check took {slowest:.2f} s while large searches ran"
