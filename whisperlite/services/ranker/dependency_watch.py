"""The ranker's health follows its dependencies': NOT_SERVING while the query encoder or the catalog
fails its own health check, or refuses the ranker's own token, so a load balancer, `whisperlite health` and the gateway see an outage the
ranker cannot answer through instead of a SERVING ranker that fails every call.

Each dependency's state is also the ranker's health name `dependency/<service>` (`dependency/query-encoder`,
`dependency/catalog`), so whoever sees the ranker NOT_SERVING (the gateway's /health) can name the dependency.

The ranker keeps answering meanwhile: texts in its query cache need no encoder, and a call that needs
the dependency gets UNAVAILABLE at once, naming it and why (outages.py). The process's liveness (the
`liveness` health name) stays SERVING, so an orchestrator does not restart a ranker for its dependency's
outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from whisperlite.core.clients.errors import CredentialsRefused
from whisperlite.core.errors import ServiceError
from whisperlite.core.topology import Service, dependency_health_name
from whisperlite.services.common.server import HealthReport
from whisperlite.services.ranker import metrics
from whisperlite.services.ranker.outages import Outages

log = logging.getLogger("whisperlite.ranker.dependency_watch")

REFUSES_TOKEN = "refuses this ranker's token"


@dataclass(frozen=True)
class DependencyWatchSettings:
    probe_interval_seconds: float = 1.0
    probe_timeout_seconds: float = 2.0
    # One slow probe of a busy dependency is not an outage; this many failed probes in a row are.
    failures_to_trip: int = 2

    def __post_init__(self) -> None:
        for name in ("probe_interval_seconds", "probe_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.failures_to_trip < 1:
            raise ValueError(f"failures_to_trip: must be >= 1, got {self.failures_to_trip}")


@dataclass(frozen=True)
class Dependency:
    name: str  # as error messages name it: "query encoder", "catalog"
    address: str
    service: Service  # its grpc_service is the health name whose status counts (a catalog whose store is down reports it there)
    channel: grpc.aio.Channel
    # An authenticated call made after a SERVING health check, where the ranker sends a token: a dependency that
    # refuses the token (revoked, or rotated in the wrong order) serves, but not this ranker, which its open health
    # check alone would hide.
    credential_check: Callable[[], Awaitable[object]] | None = None


class DependencyWatch:
    def __init__(
        self, dependencies: Sequence[Dependency], settings: DependencyWatchSettings = DependencyWatchSettings(), outages: Outages | None = None
    ):
        self._dependencies = list(dependencies)
        self._settings = settings
        self.outages = outages or Outages()

    async def probe(self, dependency: Dependency) -> str | None:
        """Why the dependency is not serving, or None when it is (a refused token: `REFUSES_TOKEN` starts the reason)."""
        try:
            response = await health_pb2_grpc.HealthStub(dependency.channel).Check(
                health_pb2.HealthCheckRequest(service=dependency.service.grpc_service), timeout=self._settings.probe_timeout_seconds
            )
        except grpc.aio.AioRpcError as error:
            return f"health check failed: {error.code().name}: {error.details()}"
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            return f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}"
        if dependency.credential_check is not None:
            try:
                await asyncio.wait_for(dependency.credential_check(), self._settings.probe_timeout_seconds)
            except CredentialsRefused as error:
                return f"{REFUSES_TOKEN}: {error.refusal}"
            except (ServiceError, asyncio.TimeoutError):
                pass  # only a refused token counts: a busy dependency may shed or delay this call, which is no outage
        return None

    async def watch(self, health: HealthReport) -> None:
        """Runs while the ranker serves (whisperlite.services.common.server's health_watch)."""
        failures = {dependency.name: 0 for dependency in self._dependencies}
        up = {dependency.name: True for dependency in self._dependencies}
        for dependency in self._dependencies:
            metrics.DEPENDENCY_UP.labels(dependency.name).set(1)
            await health.set_part(dependency_health_name(dependency.service), True)
        serving = True
        while True:
            await asyncio.sleep(self._settings.probe_interval_seconds)
            reasons = await asyncio.gather(*(self.probe(dependency) for dependency in self._dependencies))
            down = {}
            for dependency, reason in zip(self._dependencies, reasons):
                failures[dependency.name] = failures[dependency.name] + 1 if reason else 0
                if failures[dependency.name] >= self._settings.failures_to_trip:
                    down[dependency.name] = f"{dependency.name} at {dependency.address}: {reason}"
                    if not reason.startswith(REFUSES_TOKEN):  # a refusal is an answer, at once and naming the flag to fix
                        self.outages.begin(dependency.name, down[dependency.name])
                elif not failures[dependency.name]:
                    self.outages.end(dependency.name)
                # Down from the trip until a check passes: one failed check short of the trip changes nothing.
                now_up = up[dependency.name]
                if dependency.name in down:
                    now_up = False
                elif not failures[dependency.name]:
                    now_up = True
                if now_up != up[dependency.name]:
                    up[dependency.name] = now_up
                    metrics.DEPENDENCY_UP.labels(dependency.name).set(int(now_up))
                    await health.set_part(dependency_health_name(dependency.service), now_up)
            if serving and down:
                serving = False
                log.error("dependency down: health NOT_SERVING until it serves again", extra={"down": list(down.values())})
                await health.set_serving(False)
            elif not serving and not any(failures.values()):
                serving = True
                log.warning("dependencies serving again: health SERVING")
                await health.set_serving(True)
