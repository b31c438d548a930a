"""One way to run a WhisperLite gRPC service: health, reflection, /metrics, interceptors, graceful shutdown."""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import prometheus_client
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from whisperlite.core.topology import DEFAULT_MAX_MESSAGE_BYTES, LIVENESS_SERVICE, MAX_METADATA_BYTES
from whisperlite.services.common.admission import Admission, AdmissionLimits
from whisperlite.services.common.interceptors import ObservabilityInterceptor
from whisperlite.services.common.security import ServerSecurity
from whisperlite.services.common.tracing import stop_tracing

log = logging.getLogger("whisperlite.server")

MAX_CONNECTION_AGE_MS = 5 * 60 * 1000
# How long a drained server goes on refusing new calls with UNAVAILABLE before gRPC's stop(), which ends the calls it
# has received but not started with a bare CANCELLED: a caller that sent one as the last call in flight was answered
# (a health check, the next call of a client that does not watch health) met stop() instead.
DRAINED_SETTLE_SECONDS = 0.3

# (add_XServicer_to_server, servicer, full service name)
ServicerBinding = tuple[Callable[[Any, grpc.aio.Server], None], Any, str]


class HealthReport:
    """What a health watch sets: the service's own health ("" and its service names), and the health names of parts
    it watches (a dependency's), which say which part a NOT_SERVING service is waiting for."""

    def __init__(self, servicer: health.aio.HealthServicer, service_names: Sequence[str]):
        self._servicer, self._service_names = servicer, list(service_names)

    async def set_serving(self, serving: bool) -> None:
        for service in ["", *self._service_names]:
            await self._servicer.set(service, _status(serving))

    async def set_part(self, health_name: str, serving: bool) -> None:
        await self._servicer.set(health_name, _status(serving))


def _status(serving: bool) -> int:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


# Given the service's HealthReport, watches a dependency for as long as the service serves.
HealthWatch = Callable[[HealthReport], Awaitable[None]]


async def serve(
    *,
    name: str,
    port: int,
    metrics_port: int,
    servicers: Sequence[ServicerBinding],
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    grace_seconds: float = 10.0,
    host: str = "127.0.0.1",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    security: ServerSecurity = ServerSecurity(),
    metrics_host: str = "",
    admission: AdmissionLimits | None = None,
    health_watch: HealthWatch | None = None,
) -> None:
    """Runs until SIGTERM/SIGINT (or `stop` is set), then drains in-flight calls for `grace_seconds`.

    Health reports NOT_SERVING until `startup` has returned, so load balancers and `whisperlite up`
    wait for the model or collection to be loaded; it goes NOT_SERVING again as soon as shutdown starts.
    `ready` is set once serving (lets in-process callers such as tests wait without polling).
    `security` adds token checks and TLS; SIGHUP re-reads its tokens and certificates. /metrics binds
    `metrics_host`, by default the gRPC `host`.
    `admission` bounds in-flight work (whisperlite.services.common.admission); `health_watch` runs
    while serving and may turn health NOT_SERVING and back (the catalog watches its store with it, the
    ranker its dependencies); LIVENESS_SERVICE stays SERVING through that.
    """
    admitted = Admission(admission or AdmissionLimits(), name)
    server = grpc.aio.server(
        interceptors=[ObservabilityInterceptor(max_response_bytes=max_message_bytes, admission=admitted), *security.interceptors()],
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            # gRPC refuses request metadata past its soft limit (8 KiB) at random, more often the nearer the hard one:
            # the same call flipped between OK and RESOURCE_EXHAUSTED. One limit, set twice, refuses past it every time,
            # and holds what the gateway forwards at most (a 7,168-character Authorization, tracestate, request id).
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            # Clients reconnect (and re-resolve DNS) when a connection reaches this age, so a scaled-up
            # service gets traffic without restarting its callers; the grace lets in-flight calls finish.
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ],
    )
    for add_to_server, servicer, _ in servicers:
        add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = [full_name for _, _, full_name in servicers]
    if security.reflection:
        reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    report = HealthReport(health_servicer, service_names)
    await report.set_serving(False)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    try:  # grpc.aio raises where grpc returned 0: a port in use, or TLS material gRPC itself refuses
        if security.certificates is not None:
            server.add_secure_port(f"{host}:{port}", security.certificates.credentials())
        else:
            server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:
        raise SystemExit(f"{name}: cannot bind gRPC port {host}:{port} ({error}): is another process on it?") from None
    await server.start()
    metrics_server = None
    if metrics_port:
        # The HTTP server wants a bare address: [::] is "::".
        metrics_server, _ = prometheus_client.start_http_server(metrics_port, addr=(metrics_host or host).strip("[]"))
    log.info("listening", extra={"service": name, "grpc_port": port, "metrics_port": metrics_port})
    security.warn_if_exposed(name, host)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (e.g. tests): rely on `stop`
            pass
    try:
        loop.add_signal_handler(signal.SIGHUP, security.reload)
    except (NotImplementedError, RuntimeError):
        pass

    try:
        if startup is not None:
            startup_task = asyncio.ensure_future(startup())
            stop_task = asyncio.ensure_future(stop.wait())
            await asyncio.wait({startup_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            if not startup_task.done():
                startup_task.cancel()
            else:
                startup_task.result()
        if not stop.is_set():
            await report.set_serving(True)
            log.info("serving", extra={"service": name})
            if ready is not None:
                ready.set()
            if health_watch is not None:
                watch_task = asyncio.ensure_future(health_watch(report))
                stop_task = asyncio.ensure_future(stop.wait())
                await asyncio.wait({watch_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                stop_task.cancel()
                watch_task.cancel()
                if watch_task.done() and not watch_task.cancelled():
                    watch_task.result()  # a watch that gave up stops the service with its reason
            else:
                await stop.wait()
    finally:
        log.info("shutting down", extra={"service": name, "grace_seconds": grace_seconds})
        await health_servicer.enter_graceful_shutdown()
        draining_since = loop.time()
        await admitted.drain(grace_seconds)
        await asyncio.sleep(max(0.0, min(DRAINED_SETTLE_SECONDS, grace_seconds - (loop.time() - draining_since))))
        # stop() refuses new RPCs at once and cancels those still running after what is left of the grace period.
        await server.stop(max(0.0, grace_seconds - (loop.time() - draining_since)))
        if shutdown is not None:
            await shutdown()
        if metrics_server is not None:
            metrics_server.shutdown()
        stop_tracing()
        log.info("stopped", extra={"service": name})
