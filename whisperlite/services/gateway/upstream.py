"""The gateway's one way to reach the ranker and the catalog: grpc.aio stubs over shared channels.

Callers' credentials and request ids travel as gRPC metadata; an upstream failure surfaces as
UpstreamFailed, with the upstream's code and message, and the app turns its code into an HTTP status
(status.py).
"""

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from whisperlite.core.channels import create_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.clients.health import RANKER_DEPENDENCY_HEALTH_NAMES, dependencies_waited_for
from whisperlite.core.topology import CATALOG, RANKER
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, ranker_pb2, ranker_pb2_grpc

Metadata = Sequence[tuple[str, str]]
T = TypeVar("T")


class UpstreamFailed(Exception):
    """A failed upstream call: its gRPC code, and its message, which names the upstream where the failure was the
    connection's or the deadline's (gRPC's own "Deadline Exceeded" or "failed to connect" name neither)."""

    def __init__(self, upstream: str, error: grpc.aio.AioRpcError, deadline_seconds: float):
        self.error, self.code = error, error.code()
        details = error.details() or self.code.name
        # gRPC's own words: "Deadline Exceeded", or "Stream removed (Deadline Exceeded)" when it passed mid-stream.
        if self.code == grpc.StatusCode.DEADLINE_EXCEEDED and details.removeprefix("Stream removed (").rstrip(")") == "Deadline Exceeded":
            message = f"{upstream}: no answer within {deadline_seconds:g} s (--deadline-seconds)"
        elif self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            message = f"{upstream}: {details}"
        else:
            message = details  # the service's own answer (a refused field, a missing token...), unchanged
        super().__init__(message)
        self.message = message


class Upstream:
    def __init__(
        self, ranker_address: str, catalog_address: str, *, deadline_seconds: float, max_message_bytes: int,
        security: ClientSecurity = PLAINTEXT,
    ):  # fmt: skip
        self.addresses = {RANKER.name: ranker_address, CATALOG.name: catalog_address}
        self.deadline_seconds = deadline_seconds
        self._ranker_channel = create_channel(ranker_address, max_message_bytes=max_message_bytes, security=security)
        self._catalog_channel = create_channel(catalog_address, max_message_bytes=max_message_bytes, security=security)
        self._ranker = ranker_pb2_grpc.RankerServiceStub(self._ranker_channel)
        self._catalog = catalog_pb2_grpc.CatalogServiceStub(self._catalog_channel)
        self._health = {
            RANKER.name: (health_pb2_grpc.HealthStub(self._ranker_channel), RANKER.grpc_service),
            CATALOG.name: (health_pb2_grpc.HealthStub(self._catalog_channel), CATALOG.grpc_service),
        }

    async def recommend(self, request: ranker_pb2.RecommendRequest, metadata: Metadata) -> ranker_pb2.RecommendResponse:
        return await self._call(RANKER.name, self._ranker.Recommend(request, timeout=self.deadline_seconds, metadata=metadata))

    async def get_item(self, item_id: str, include_vectors: bool, metadata: Metadata) -> common_pb2.Item | None:
        """The item, or None when the catalog does not hold it."""
        request = catalog_pb2.GetItemsRequest(item_ids=[item_id], include_vectors=include_vectors)
        response = await self._call(CATALOG.name, self._catalog.GetItems(request, timeout=self.deadline_seconds, metadata=metadata))
        return response.items[0] if response.items else None

    async def upsert_items(self, request: catalog_pb2.UpsertItemsRequest, metadata: Metadata) -> catalog_pb2.UpsertItemsResponse:
        return await self._call(CATALOG.name, self._catalog.UpsertItems(request, timeout=self.deadline_seconds, metadata=metadata))

    async def _call(self, upstream: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise UpstreamFailed(f"{upstream} at {self.addresses[upstream]}", error, self.deadline_seconds) from None

    async def health(self) -> dict[str, str]:
        """Each upstream's gRPC health status name (SERVING, NOT_SERVING, or the error code that stood in for one)."""
        names = list(self._health)
        statuses = await asyncio.gather(*(self._check(*self._health[name]) for name in names))
        return dict(zip(names, statuses))

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
