"""A small Python client for WhisperLite's entry point (the ranker).

    from whisperlite.core.clients.ranker import RankerClient
    with RankerClient("localhost:50050") as ranker:
        response = ranker.recommend(user_id="A1", query="black leather boots", top_k=5)

Over TLS with a token: `RankerClient(address, security=ClientSecurity(ca_file="ca.pem", token="..."))`.
"""

from whisperlite.core.channels import create_sync_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.topology import DEFAULT_MAX_MESSAGE_BYTES, RANKER
from whisperlite.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc


class RankerClient:
    def __init__(
        self,
        address: str = RANKER.local_address,
        timeout_seconds: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        security: ClientSecurity = PLAINTEXT,
    ):
        # grpc's default 4 MB would refuse large responses the ranker may send (up to its own limit).
        self._channel = create_sync_channel(address, security, options=[("grpc.max_receive_message_length", max_message_bytes)])
        self._security = security
        self._stub = ranker_pb2_grpc.RankerServiceStub(self._channel)
        self._timeout = timeout_seconds

    def recommend(
        self,
        *,
        user_id: str,
        query: str,
        top_k: int = 10,
        categories: list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        exclude_item_ids: list[str] | None = None,
        recent_item_ids: list[str] | None = None,
    ) -> ranker_pb2.RecommendResponse:
        item_filter = common_pb2.ItemFilter(categories=categories or [], exclude_item_ids=exclude_item_ids or [])
        if min_price is not None:
            item_filter.min_price = min_price
        if max_price is not None:
            item_filter.max_price = max_price
        request = ranker_pb2.RecommendRequest(
            user_id=user_id, query=query, top_k=top_k, filter=item_filter, recent_item_ids=recent_item_ids or []
        )
        return self._stub.Recommend(request, timeout=self._timeout, metadata=self._security.metadata())

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RankerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
