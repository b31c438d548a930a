"""The gateway's one way to reach the ranker and the catalog: grpc.aio stubs over shared channels.

Callers' credentials and request ids travel as gRPC metadata; an upstream failure surfaces as
UpstreamFailed, with the upstream's code and message, and the app turns its code into an HTTP status
(status.py).

While it serves, the gateway checks each upstream's health (`watch`, services/common/probing.py). An upstream that
does not answer its checks at all (a frozen or dead process) is down: calls to it fail at once with UNAVAILABLE
(HTTP 503 and Retry-After) naming it, and calls already waiting on it are let go, where they used to wait out the
deadline (10 s) and end in a 504. A NOT_SERVING answer is an answer: a ranker whose encoder is down still answers
texts in its cache, and the gateway's /health names what it waits for.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from whisperlite.core.channels import create_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.clients.errors import retry_after_seconds
from whisperlite.core.clients.health import RANKER_DEPENDENCY_HEALTH_NAMES, dependencies_waited_for
from whisperlite.core.topology import CATALOG, RANKER
from whisperlite.services.common.outages import Outages
from whisperlite.core.errors import Unavailable
from whisperlite.services.common.probing import ProbeSettings, answers_health_checks, keep_probing, outage_recorder
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, ranker_pb2, ranker_pb2_grpc

Metadata = Sequence[tuple[str, str]]
T = TypeVar("T")
log = logging.getLogger("whisperlite.gateway.upstream")
# How long an HTTP caller is told to wait after an upstream was unavailable or ran past the deadline: the channel
# reconnects within it (core/channels.py), and a down upstream is checked again every 0.1 s.
RETRY_AFTER_SECONDS = 1.0


class UpstreamFailed(Exception):
    """A failed upstream call: its gRPC code, its message, which names the upstream where the failure was the
    connection's or the deadline's (gRPC's own "Deadline Exceeded" or "failed to connect" name neither), and when
    to retry (the upstream's hint; a second for an unavailable upstream or a deadline; None: not worth retrying)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after

    @classmethod
    def of_call(cls, upstream: str, error: grpc.aio.AioRpcError, deadline_seconds: float) -> "UpstreamFailed":
        code = error.code()
        details = error.details() or code.name
        # gRPC's own words: "Deadline Exceeded", or "Stream removed (Deadline Exceeded)" when it passed mid-stream.
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and details.removeprefix("Stream removed (").rstrip(")") == "Deadline Exceeded":
            message = f"{upstream}: no answer within {deadline_seconds:g} s (--deadline-seconds)"
        elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            message = f"{upstream}: {details}"
        elif code == grpc.StatusCode.CANCELLED:
            # The upstream's doing (the gateway's own cancellations raise CancelledError): a server stopping ends so
            # the calls it has not started. The upstream is unavailable (503), not the HTTP client gone (499).
            code, message = grpc.StatusCode.UNAVAILABLE, f"{upstream}: the call was cancelled by the server (stopping?)"
        else:
            message = details  # the service's own answer (a refused field, a missing token...), unchanged
        retry_after = retry_after_seconds(error)
        if retry_after is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            retry_after = RETRY_AFTER_SECONDS
        return cls(code, message, retry_after)


class Upstream:
    def __init__(
        self, ranker_address: str, catalog_address: str, *, deadline_seconds: float, max_message_bytes: int,
        security: ClientSecurity = PLAINTEXT, probes: ProbeSettings = ProbeSettings(),
    ):  # fmt: skip
        self.addresses = {RANKER.name: ranker_address, CATALOG.name: catalog_address}
        self.deadline_seconds = deadline_seconds
        self._probes = probes
        self._ranker_channel = create_channel(ranker_address, max_message_bytes=max_message_bytes, security=security)
        self._catalog_channel = create_channel(catalog_address, max_message_bytes=max_message_bytes, security=security)
        self._ranker = ranker_pb2_grpc.RankerServiceStub(self._ranker_channel)
        self._catalog = catalog_pb2_grpc.CatalogServiceStub(self._catalog_channel)
        self._health = {
            RANKER.name: (health_pb2_grpc.HealthStub(self._ranker_channel), RANKER.grpc_service),
            CATALOG.name: (health_pb2_grpc.HealthStub(self._catalog_channel), CATALOG.grpc_service),
        }
        self.outages = Outages("gateway")

    async def recommend(self, request: ranker_pb2.RecommendRequest, metadata: Metadata) -> ranker_pb2.RecommendResponse:
        return await self._call(RANKER.name, lambda: self._ranker.Recommend(request, timeout=self.deadline_seconds, metadata=metadata))

    async def get_item(self, item_id: str, include_vectors: bool, metadata: Metadata) -> common_pb2.Item | None:
        """The item, or None when the catalog does not hold it."""
        request = catalog_pb2.GetItemsRequest(item_ids=[item_id], include_vectors=include_vectors)
        response = await self._call(CATALOG.name, lambda: self._catalog.GetItems(request, timeout=self.deadline_seconds, metadata=metadata))
        return response.items[0] if response.items else None

    async def upsert_items(self, request: catalog_pb2.UpsertItemsRequest, metadata: Metadata) -> catalog_pb2.UpsertItemsResponse:
        return await self._call(CATALOG.name, lambda: self._catalog.UpsertItems(request, timeout=self.deadline_seconds, metadata=metadata))

    async def _call(self, upstream: str, start: Callable[[], Awaitable[T]]) -> T:
        try:
            answer = await self.outages.during(upstream, start)
        except Unavailable as refusal:  # down by the gateway's checks, before the call or while it waited
            raise UpstreamFailed(grpc.StatusCode.UNAVAILABLE, str(refusal), RETRY_AFTER_SECONDS) from None
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.outages.answered(upstream)  # an answer about the request: the upstream is alive
            raise UpstreamFailed.of_call(f"{upstream} at {self.addresses[upstream]}", error, self.deadline_seconds) from None
        self.outages.answered(upstream)
        return answer

    async def watch(self) -> None:
        """Checks each upstream's health until cancelled (the app runs it while it serves)."""

        def recorder(name: str):
            return outage_recorder(
                self.outages, name, self.addresses[name], self._probes,
                on_down=lambda reason: log.error("upstream down: its calls fail at once until it answers", extra={"upstream": name, "reason": reason}),
                on_up=lambda: log.warning("upstream answers again", extra={"upstream": name}),
            )  # fmt: skip

        await asyncio.gather(
            *(
                keep_probing(functools.partial(answers_health_checks, stub, service, self._probes), self._probes, recorder(name))
                for name, (stub, service) in self._health.items()
            )
        )

    async def health(self) -> tuple[dict[str, str], dict[str, str]]:
        """Each upstream's gRPC health status name (SERVING, NOT_SERVING, or the error code that stood in for one), and
        why, for those the gateway's own checks have found down: those are UNAVAILABLE at once, not checked again (a
        frozen upstream held every /health for the 2 s check timeout, past a readiness probe's default 1 s)."""
        known_down = {name: str(refusal) for name in self._health if (refusal := self.outages.refusal(name)) is not None}
        names = [name for name in self._health if name not in known_down]
        statuses = dict(zip(names, await asyncio.gather(*(self._check(*self._health[name]) for name in names))))
        statuses |= {name: grpc.StatusCode.UNAVAILABLE.name for name in known_down}
        return {name: statuses[name] for name in self._health}, known_down

    async def ranker_dependencies(self) -> dict[str, str]:
        """Each of the ranker's dependencies as the ranker's own checks find it (its `dependency/<service>` health names),
        by service name: which one a NOT_SERVING ranker waits for (`dependencies_waited_for`)."""
        stub = self._health[RANKER.name][0]
        return dependencies_waited_for(await asyncio.gather(*(self._check(stub, name) for name in RANKER_DEPENDENCY_HEALTH_NAMES)))

    async def _check(self, stub: health_pb2_grpc.HealthStub, service: str) -> str:
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=min(self.deadline_seconds, 2.0))
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def close(self) -> None:
        await self._ranker_channel.close()
        await self._catalog_channel.close()
