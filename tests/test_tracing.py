"""Tracing and request ids across the three services as real processes.

Each service exports its spans with the real OTLP/gRPC exporter, configured only by the standard
OTEL_* variables, to an OTLP trace receiver this test runs; one Recommend must come back as ONE
trace holding spans of the ranker, the query encoder and the catalog. Every service's log lines of
that call carry the request id the caller sent, which also comes back in the response.
"""

import json
import signal
import socket
import threading
import time
from concurrent import futures

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.servers import free_port, start_catalog, start_gateway, start_service
from whisperlite.core.clients.catalog_admin import CatalogAdminClient, Item
from whisperlite.core.clients.ranker import RankerClient
from whisperlite.core.topology import CATALOG, QUERY_ENCODER, RANKER
from whisperlite.services.common import tracing
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The receiving end of OTLP/gRPC, as a collector runs it: keeps (service.name, span) pairs."""

    def __init__(self):
        self.spans: list[tuple[str, object]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((attributes.get("service.name", ""), span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[tuple[str, object]]:
        with self._lock:
            return list(self.spans)


@pytest.fixture(scope="module")
def receiver():
    servicer = TraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield servicer, port
    server.stop(None)


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory, receiver):
    _, port = receiver
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: export soon after each call
    }
    logs = tmp_path_factory.mktemp("logs")
    encoder = start_service(QUERY_ENCODER.name, logs, env=env)
    catalog = start_service(
        CATALOG.name, logs, "--data-dir", str(tmp_path_factory.mktemp("store")), "--query-encoder-addr", encoder.address, env=env
    )
    ranker = start_service(
        RANKER.name, logs, "--model-dir", str(tmp_path_factory.mktemp("no-model")),
        "--query-encoder-addr", encoder.address, "--catalog-addr", catalog.address, env=env,
    )  # fmt: skip
    with CatalogAdminClient(catalog.address, timeout_seconds=120) as admin:
        admin.upsert([Item("trace-boots", "Black leather boots"), Item("trace-dress", "Red summer dress")])
    yield {"encoder": encoder, "catalog": catalog, "ranker": ranker}
    for service in (ranker, catalog, encoder):
        service.stop()


def wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def test_one_recommend_is_one_trace_across_the_three_services(traced_stack, receiver):
    spans, _ = receiver
    with RankerClient(traced_stack["ranker"].address, timeout_seconds=60) as ranker:
        result = ranker.recommend(user_id="nobody", query="black leather boots", top_k=2, request_id="trace-req-1")
    assert result.request_id == "trace-req-1" and result.items[0].item.item_id == "trace-boots"

    def recommend_server_span():
        return next(
            (span for service, span in spans.snapshot() if service == "ranker" and span.name == "/whisperlite.v1.RankerService/Recommend"), None
        )

    root = wait_for(recommend_server_span)
    assert not root.parent_span_id  # the caller sent no trace context: the ranker starts the trace
    expected_servers = {("query-encoder", "/whisperlite.v1.QueryEncoderService/Embed"), ("catalog", "/whisperlite.v1.CatalogService/SearchBatch")}

    def trace_spans():
        in_trace = [(service, span) for service, span in spans.snapshot() if span.trace_id == root.trace_id]
        return in_trace if expected_servers <= {(service, span.name) for service, span in in_trace if span.kind == span.SPAN_KIND_SERVER} else None

    in_trace = wait_for(trace_spans)
    assert {service for service, _ in in_trace} == {"ranker", "query-encoder", "catalog"}
    # Each downstream server span is the child of the ranker's client span for that call.
    by_id = {span.span_id: (service, span) for service, span in in_trace}
    for service, span in in_trace:
        if (service, span.name) in expected_servers:
            parent_service, parent = by_id[span.parent_span_id]
            assert parent_service == "ranker" and parent.kind == parent.SPAN_KIND_CLIENT and parent.name == span.name
    # Health checks are not traced.
    assert not [span for _, span in spans.snapshot() if "grpc.health" in span.name]


def test_the_gateway_passes_on_the_callers_trace_context(traced_stack, receiver, tmp_path):
    """An HTTP request's trace used to stop at the gateway: the ranker started a new one. A malformed traceparent is dropped."""
    spans, _ = receiver
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    gateway = start_gateway(tmp_path / "logs", traced_stack["ranker"].address, traced_stack["catalog"].address, tmp_path / "state")
    try:
        url = f"http://127.0.0.1:{gateway.port}/v1/recommend"
        body = {"query": "red summer dress", "top_k": 1}
        assert httpx.post(url, json=body, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}, timeout=60).status_code == 200
        assert httpx.post(url, json=body, headers={"traceparent": "00-not-a-trace-01"}, timeout=60).status_code == 200
    finally:
        gateway.stop()

    def continued():
        return next(
            (span for service, span in spans.snapshot()
             if service == "ranker" and span.name == "/whisperlite.v1.RankerService/Recommend" and span.trace_id.hex() == trace_id),
            None,
        )  # fmt: skip

    assert wait_for(continued).parent_span_id.hex() == parent_id


def test_the_request_id_is_on_every_log_line_of_the_call_in_every_service(traced_stack):
    with RankerClient(traced_stack["ranker"].address, timeout_seconds=60) as ranker:
        ranker.recommend(user_id="nobody", query="a red dress for the summer", top_k=2, request_id="trace-req-2")
    # A call straight to the encoder gets its own request id back in the response headers.
    with grpc.insecure_channel(traced_stack["encoder"].address) as channel:
        _, call = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel).Embed.with_call(
            query_encoder_pb2.EmbedRequest(texts=["boots"]), metadata=(("x-request-id", "trace-req-3"),), timeout=60
        )
    assert dict(call.initial_metadata())["x-request-id"] == "trace-req-3"

    def lines_of(service, request_id):
        lines = [json.loads(line) for line in traced_stack[service].log().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == request_id]

    expected = {
        "ranker": {"/whisperlite.v1.RankerService/Recommend"},
        "encoder": {"/whisperlite.v1.QueryEncoderService/Embed"},
        "catalog": {"/whisperlite.v1.CatalogService/SearchBatch"},
    }
    for service, methods in expected.items():
        lines = wait_for(lambda: lines_of(service, "trace-req-2") or None, timeout=30)
        assert methods <= {line.get("grpc_method") for line in lines}, (service, lines)
        assert all(line["trace_id"] for line in lines)  # tracing on: the log line names its trace too
    assert any(line.get("message") == "recommend" for line in lines_of("ranker", "trace-req-2"))


def test_tracing_is_off_unless_an_exporter_is_named(monkeypatch):
    for value in (None, "none", ""):
        if value is None:
            monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
        else:
            monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
        assert tracing.start_tracing("test") is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin-please")
    with pytest.raises(SystemExit, match="otlp, console and none"):
        tracing.start_tracing("test")


def test_a_collector_that_never_answers_holds_shutdown_for_seconds_only(tmp_path):
    """A collector that accepts connections and never replies (a black hole) held each service's exit for the
    exporter's 10 s timeout per queued batch: `up` killed the ranker after its 15 s wait. Now the spans left at
    shutdown get FLUSH_AT_SHUTDOWN_SECONDS and are dropped, saying so."""
    black_hole = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody reads or answers
    try:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{black_hole.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: the first export is stuck before the shutdown
        }
        catalog = start_service(
            CATALOG.name, tmp_path / "logs", "--data-dir", str(tmp_path / "store"), "--query-encoder-addr", "",
            "--dimension", "4", "--encoder-model", "test-vectors", env=env,
        )  # fmt: skip
        with CatalogAdminClient(catalog.address, timeout_seconds=60) as admin:
            for _ in range(20):
                admin.stats()
        time.sleep(0.5)
        started = time.monotonic()
        catalog.process.send_signal(signal.SIGTERM)
        code = catalog.process.wait(30)
        took = time.monotonic() - started
        assert code == 0, catalog.log()[-3000:]
        assert took < tracing.FLUSH_AT_SHUTDOWN_SECONDS + 4, f"exit took {took:.1f} s"
        assert "spans not exported at shutdown were dropped" in catalog.log() and '"stopped"' in catalog.log()
    finally:
        black_hole.close()
