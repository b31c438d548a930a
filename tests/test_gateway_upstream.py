"""The gateway's view of the ranker's dependencies, against a real gRPC health service on loopback."""

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from whisperlite.core.topology import CATALOG, LIVENESS_SERVICE, QUERY_ENCODER, RANKER, dependency_health_name
from whisperlite.services.gateway.upstream import Upstream

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def _ranker_dependencies_through_states() -> list[dict[str, str]]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    upstream = Upstream(f"127.0.0.1:{port}", f"127.0.0.1:{port}", deadline_seconds=5, max_message_bytes=1 << 20)
    seen = []
    try:
        await servicer.set(LIVENESS_SERVICE, SERVING)
        await servicer.set(RANKER.grpc_service, NOT_SERVING)
        seen.append(await upstream.ranker_dependencies())  # starting: no dependency checked yet
        await servicer.set(dependency_health_name(QUERY_ENCODER), NOT_SERVING)
        await servicer.set(dependency_health_name(CATALOG), SERVING)
        seen.append(await upstream.ranker_dependencies())  # the encoder is down
        await servicer.enter_graceful_shutdown()
        seen.append(await upstream.ranker_dependencies())  # draining: every name NOT_SERVING, the dependencies' too
    finally:
        await upstream.close()
        await server.stop(None)
    return seen


def test_the_ranker_names_its_down_dependency_and_a_draining_ranker_blames_none():
    starting, encoder_down, draining = asyncio.run(_ranker_dependencies_through_states())
    assert starting == {}
    assert encoder_down == {"query-encoder": "NOT_SERVING", "catalog": "SERVING"}
    assert draining == {}
