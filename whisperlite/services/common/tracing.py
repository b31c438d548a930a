"""OpenTelemetry tracing of every gRPC call a service serves or makes, off unless asked for.

Configured by the standard OpenTelemetry variables, nothing of our own:
- OTEL_TRACES_EXPORTER: `otlp` (or `console`) turns tracing on; unset or `none` leaves it off.
- OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, _HEADERS, _INSECURE, ...:
  where the OTLP/gRPC exporter sends spans (a collector; default localhost:4317).
- OTEL_SERVICE_NAME (default: the service's name), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER
  and OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_* (batching), OTEL_SDK_DISABLED.

The gRPC instrumentation wraps the asyncio server and channels, so the trace context travels in
the `traceparent` metadata of each downstream call: one Recommend is one trace across the ranker,
the query encoder and the catalog.
"""

from __future__ import annotations

import logging
import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger("whisperlite.tracing")

_provider: TracerProvider | None = None


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # reads the OTEL_EXPORTER_OTLP_* variables itself
    if name == "console":
        return ConsoleSpanExporter()
    raise SystemExit(f"OTEL_TRACES_EXPORTER: supported values are otlp, console and none, got {name!r}")


def start_tracing(service_name: str) -> bool:
    """Installs a tracer provider and instruments gRPC when OTEL_TRACES_EXPORTER asks for it
    (returns whether it did). Call it before any server or channel is created: the instrumentation
    wraps grpc.aio.server() and the grpc.aio channel constructors."""
    global _provider
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none") or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or _provider is not None:
        return _provider is not None
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer, filters

    exporter = _exporter(exporter_name)
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})
    _provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(_provider)
    # Probes (health checks every few seconds) and reflection would bury the requests' traces.
    requests_only = filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection")))
    GrpcAioInstrumentorServer(filter_=requests_only).instrument()
    GrpcAioInstrumentorClient(filter_=requests_only).instrument()
    log.info("tracing on", extra={"exporter": exporter_name, "service_name": resource.attributes[SERVICE_NAME]})
    return True


# What the spans still batched at shutdown get to reach the collector. One that accepts connections and never answers
# held each service's exit for a 10 s export timeout per queued batch: `up` killed the ranker after its 15 s wait,
# past compose's and Kubernetes' 30 s grace with a backlog.
FLUSH_AT_SHUTDOWN_SECONDS = 2.0


def stop_tracing(timeout_seconds: float = FLUSH_AT_SHUTDOWN_SECONDS) -> None:
    """Exports the spans still batched (at shutdown), for `timeout_seconds` at most; what is left is dropped."""
    if _provider is None:
        return
    # The SDK's shutdown waits up to 30 s for its worker and then for the exporter: it runs in a daemon thread, left
    # behind when the time is up (the process is exiting).
    flushing = threading.Thread(target=_provider.shutdown, name="tracing-shutdown", daemon=True)
    flushing.start()
    flushing.join(timeout_seconds)
    if flushing.is_alive():
        log.warning(
            "spans not exported at shutdown were dropped: the exporter did not finish in time",
            extra={"timeout_seconds": timeout_seconds},
        )
