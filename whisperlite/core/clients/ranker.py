"""Typed clients of WhisperLite's entry point, the ranker: blocking and asyncio.

    from whisperlite.core.clients.ranker import RankerClient
    with RankerClient("localhost:50050", timeout_seconds=5) as ranker:
        result = ranker.recommend(user_id="A1", query="black leather boots", top_k=5)
    for scored in result.items:
        print(scored.score, scored.item.title)

Needs only grpcio and protobuf (`pip install whisperlite[client]`). Arguments that cannot make a
request (a str where a list of ids goes, a NaN timeout, a request id with spaces) raise ValueError or
TypeError before any call; calls raise grpc.RpcError with the server's status code and message. An
overloaded ranker's RESOURCE_EXHAUSTED says when to retry:
`whisperlite.core.clients.errors.retry_after_seconds(error)`.
"""

from __future__ import annotations

from collections.abc import Sequence

from whisperlite.core.clients.connection import AsyncClient, ClientOptions, SyncClient
from whisperlite.core.clients.types import Recommendation, recommend_request, recommendation_from_proto
from whisperlite.core.topology import RANKER
from whisperlite.v1 import ranker_pb2_grpc

__all__ = ["AsyncRankerClient", "ClientOptions", "RankerClient"]


class RankerClient(SyncClient):
    GRPC_SERVICE = RANKER.grpc_service

    def __init__(self, address: str = RANKER.local_address, options: ClientOptions | None = None, **option_fields):
        super().__init__(address, options, **option_fields)
        self._stub = ranker_pb2_grpc.RankerServiceStub(self._channel)

    def recommend(
        self,
        *,
        user_id: str,
        query: str,
        top_k: int = 10,
        categories: Sequence[str] = (),
        min_price: float | None = None,
        max_price: float | None = None,
        exclude_item_ids: Sequence[str] = (),
        recent_item_ids: Sequence[str] = (),
        include_history_items: bool = False,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> Recommendation:
        """Items for this user and request, best first; a known user's history items are left out unless
        `include_history_items`. `request_id` (default: a new one) is sent
        as x-request-id and comes back in the result; it is on every server log line of the call."""
        request = recommend_request(
            user_id=user_id, query=query, top_k=top_k, categories=categories, min_price=min_price,
            max_price=max_price, exclude_item_ids=exclude_item_ids, recent_item_ids=recent_item_ids,
            include_history_items=include_history_items,
        )  # fmt: skip
        _, call = self._call_kwargs(request_id, timeout_seconds)
        return recommendation_from_proto(self._stub.Recommend(request, **call))


class AsyncRankerClient(AsyncClient):
    GRPC_SERVICE = RANKER.grpc_service

    def __init__(self, address: str = RANKER.local_address, options: ClientOptions | None = None, **option_fields):
        super().__init__(address, options, **option_fields)
        self._stub = ranker_pb2_grpc.RankerServiceStub(self._channel)

    async def recommend(
        self,
        *,
        user_id: str,
        query: str,
        top_k: int = 10,
        categories: Sequence[str] = (),
        min_price: float | None = None,
        max_price: float | None = None,
        exclude_item_ids: Sequence[str] = (),
        recent_item_ids: Sequence[str] = (),
        include_history_items: bool = False,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> Recommendation:
        """As RankerClient.recommend."""
        request = recommend_request(
            user_id=user_id, query=query, top_k=top_k, categories=categories, min_price=min_price,
            max_price=max_price, exclude_item_ids=exclude_item_ids, recent_item_ids=recent_item_ids,
            include_history_items=include_history_items,
        )  # fmt: skip
        _, call = self._call_kwargs(request_id, timeout_seconds)
        return recommendation_from_proto(await self._stub.Recommend(request, **call))
