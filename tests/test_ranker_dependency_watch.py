"""The ranker's dependency watch (services/ranker/dependency_watch.py) against a real gRPC health service on loopback
that can be frozen (its Check holds every call, as a SIGSTOPped process's does) or stopped and started again."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.servers import free_port
from whisperlite.core.channels import create_channel
from whisperlite.core.topology import CATALOG, dependency_health_name
from whisperlite.services.common.probing import ProbeSettings
from whisperlite.services.ranker.dependency_watch import CATALOG as CATALOG_NAME
from whisperlite.services.ranker.dependency_watch import Dependency, DependencyWatch



class FreezableHealth(health_pb2_grpc.HealthServicer):
    def __init__(self):
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.checks = 0
        self.held = 0
        self.most_held = 0

    async def Check(self, request, context):
        self.checks += 1
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self.thawed.wait()
        finally:
            self.held -= 1
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def start_health_server(port: int, servicer: FreezableHealth) -> grpc.aio.Server:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


class RecordedHealth:
    """What the watch tells the ranker's health service, in order (HealthReport's two calls)."""

    def __init__(self):
        self.serving: list[bool] = []
        self.parts: list[tuple[str, bool]] = []

    async def set_serving(self, serving: bool) -> None:
        self.serving.append(serving)

    async def set_part(self, health_name: str, serving: bool) -> None:
        self.parts.append((health_name, serving))


async def until(predicate, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def watched():
    port = free_port()
    servicer = FreezableHealth()
    server = await start_health_server(port, servicer)
    channel = create_channel(f"127.0.0.1:{port}")
    yield port, servicer, server, channel
    servicer.thawed.set()
    await channel.close()
    await server.stop(0)


def watch_of(port: int, channel, settings: ProbeSettings) -> DependencyWatch:
    return DependencyWatch([Dependency(CATALOG_NAME, f"127.0.0.1:{port}", CATALOG, channel)], settings)


async def test_a_frozen_dependency_is_probed_again_before_its_last_probe_answers_and_found_back_by_the_probe_it_held(watched):
    port, servicer, _, channel = watched
    watch = watch_of(port, channel, ProbeSettings(probe_interval_seconds=0.2, probe_timeout_seconds=2.0))
    recorded = RecordedHealth()
    task = asyncio.ensure_future(watch.watch(recorded))
    try:
        await until(lambda: servicer.checks >= 2, timeout=10)
        servicer.thawed.clear()
        tripped_after = await until(lambda: recorded.serving == [False], timeout=10)
        # Probes kept starting while the first was held: the trip took one timeout and an interval, not two of each.
        assert servicer.most_held >= 3, servicer.most_held
        assert watch.outages.refusal(CATALOG_NAME) is not None
        assert (dependency_health_name(CATALOG), False) in recorded.parts
        # Down, one probe is held at a time (the newest, started under an interval before the trip, with most of its
        # 2 s timeout left): no pile of probes waits on the frozen service.
        await until(lambda: servicer.held == 1, timeout=1)
        checks_before_thaw = servicer.checks
        servicer.thawed.set()
        await until(lambda: recorded.serving == [False, True], timeout=10)
        assert watch.outages.refusal(CATALOG_NAME) is None
        assert servicer.checks == checks_before_thaw  # the probe it held answered: found back before a new probe started
        print(f"NOT_SERVING {tripped_after:.2f} s after the freeze (2 s probe timeout, 0.2 s interval)")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_restarted_dependency_is_found_back_well_within_the_probe_interval(watched):
    port, servicer, server, channel = watched
    watch = watch_of(port, channel, ProbeSettings(probe_interval_seconds=4.0, probe_timeout_seconds=1.0, failures_to_trip=1))
    recorded = RecordedHealth()
    task = asyncio.ensure_future(watch.watch(recorded))
    restarted = None
    try:
        await until(lambda: servicer.checks >= 1, timeout=20)
        await server.stop(0)
        await until(lambda: recorded.serving == [False], timeout=20)
        restarted = await start_health_server(port, servicer)
        back_after = await until(lambda: recorded.serving == [False, True], timeout=20)
        # Up, the next probe would be 4 s away; down, the watch probes every DOWN_PROBE_INTERVAL_SECONDS.
        assert back_after < 2.0, back_after
        assert watch.outages.refusal(CATALOG_NAME) is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if restarted is not None:
            await restarted.stop(0)
