"""The ranker's health follows its dependencies': NOT_SERVING while the query encoder or the catalog
fails its own health check, or refuses the ranker's own token, so a load balancer, `whisperlite health` and the gateway see an outage the
ranker cannot answer through instead of a SERVING ranker that fails every call.

Each dependency's state is also the ranker's health name `dependency/<service>` (`dependency/query-encoder`,
`dependency/catalog`), so whoever sees the ranker NOT_SERVING (the gateway's /health) can name the dependency.

The ranker keeps answering meanwhile: texts in its query cache need no encoder, and a call that needs
the dependency gets UNAVAILABLE at once, naming it and why (services/common/outages.py). The process's liveness (the
`liveness` health name) stays SERVING, so an orchestrator does not restart a ranker for its dependency's
outage.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from whisperlite.core.clients.errors import CredentialsRefused
from whisperlite.core.errors import ServiceError
from whisperlite.core.topology import Service, dependency_health_name
from whisperlite.services.common.outages import Outages
from whisperlite.services.common.probing import ProbeCount, ProbeSettings, keep_probing
from whisperlite.services.common.server import HealthReport
from whisperlite.services.ranker import metrics

log = logging.getLogger("whisperlite.ranker.dependency_watch")

REFUSES_TOKEN = "refuses this ranker's token"
# The names the watch and the Recommend path use for the ranker's two dependencies.
QUERY_ENCODER = "query encoder"
CATALOG = "catalog"


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
        self, dependencies: Sequence[Dependency], settings: ProbeSettings = ProbeSettings(), outages: Outages | None = None
    ):
        self._dependencies = list(dependencies)
        self._settings = settings
        self.outages = outages or Outages("ranker")

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
        counts = {dependency.name: ProbeCount(self._settings.failures_to_trip) for dependency in self._dependencies}
        serving = True

        async def record(dependency: Dependency, reason: str | None) -> bool:
            nonlocal serving
            count = counts[dependency.name]
            was_down = count.down
            count.add(failed=reason is not None)
            down_reason = f"{dependency.name} at {dependency.address}: {reason}" if count.down and reason else None
            if down_reason and not reason.startswith(REFUSES_TOKEN):  # a refusal is an answer, at once and naming the flag to fix
                self.outages.begin(dependency.name, down_reason)
            elif not count.failures:
                self.outages.end(dependency.name)
            if count.down != was_down:
                metrics.DEPENDENCY_UP.labels(dependency.name).set(int(not count.down))
                await health.set_part(dependency_health_name(dependency.service), not count.down)
            if serving and down_reason:
                serving = False
                log.error("dependency down: health NOT_SERVING until it serves again", extra={"down": [down_reason]})
                await health.set_serving(False)
            elif not serving and not any(other.failures for other in counts.values()):
                serving = True
                log.warning("dependencies serving again: health SERVING")
                await health.set_serving(True)
            return count.down

        for dependency in self._dependencies:
            metrics.DEPENDENCY_UP.labels(dependency.name).set(1)
            await health.set_part(dependency_health_name(dependency.service), True)
        await asyncio.gather(
            *(
                keep_probing(functools.partial(self.probe, dependency), self._settings, functools.partial(record, dependency))
                for dependency in self._dependencies
            )
        )
