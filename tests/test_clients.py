"""The typed public clients (whisperlite.core.clients.ranker / catalog_admin), sync and asyncio.

Against the real stack for results; against real gRPC servers started here for what the stack does
not do yet (TLS with a private CA, a bearer token) and for what must be provoked (UNAVAILABLE
answers that gRPC's retry policy absorbs, a deadline, several replicas behind one target).
"""

import asyncio
import dataclasses
import datetime
import json
import re
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers import REPO, free_port
from whisperlite.core.clients.catalog_admin import AsyncCatalogAdminClient, CatalogAdminClient, Item
from whisperlite.core.clients.ranker import AsyncRankerClient, RankerClient
from whisperlite.core.clients.types import Recommendation
from whisperlite.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc


def test_sync_and_async_ranker_clients_return_typed_results_with_the_request_id(text_only_ranker, catalog_service, shared_catalog_items):
    shared_catalog_items.extend(["client-boots", "client-boots-dear", "client-sneakers"])
    with CatalogAdminClient(catalog_service.address, timeout_seconds=120) as catalog:
        written = catalog.upsert([
            Item("client-boots", "Black leather boots", category="Shoes", price=79.0, attributes={"brand": "Acme"}),
            Item("client-boots-dear", "Black leather boots, handmade", category="Shoes", price=240.0),
            Item("client-sneakers", "White canvas sneakers", category="Shoes", price=55.0),
        ])  # fmt: skip
    assert written.upserted == 3 and written.embedded == 3
    with RankerClient(text_only_ranker.address, timeout_seconds=60) as ranker:
        result = ranker.recommend(user_id="nobody", query="black leather boots", top_k=5, max_price=80.0, request_id="req-sync-1")
    assert isinstance(result, Recommendation) and result.request_id == "req-sync-1" and result.path == "text_only"
    assert result.items and all(scored.item.price is not None and scored.item.price <= 80.0 for scored in result.items)
    returned = [scored.item.item_id for scored in result.items]
    assert "client-boots" in returned and "client-boots-dear" not in returned
    assert dataclasses.asdict(result)["items"][0]["item"]["item_id"]  # plain data all the way down

    async def call_async():
        async with AsyncRankerClient(text_only_ranker.address, timeout_seconds=60) as ranker:
            minted = await ranker.recommend(user_id="nobody", query="black leather boots", top_k=3)
        async with AsyncCatalogAdminClient(catalog_service.address, timeout_seconds=60) as catalog:
            found = await catalog.get(["client-boots", "missing-id"])
            stats = await catalog.stats()
        return minted, found, stats

    minted, found, stats = asyncio.run(call_async())
    assert len(minted.items) == 3 and len(minted.request_id) == 32  # minted by the client when not given
    assert found.items[0].attributes == {"brand": "Acme"} and found.missing_item_ids == ["missing-id"]
    assert stats.item_count >= 1


# ---- a real RankerService that records what it received -------------------------------------------


class RecordingRanker(ranker_pb2_grpc.RankerServiceServicer):
    def __init__(self, name: str, fail_first: int = 0, delay_seconds: float = 0.0):
        self.name, self.fail_first, self.delay_seconds = name, fail_first, delay_seconds
        self.metadata: list[dict] = []
        self._lock = threading.Lock()

    def Recommend(self, request, context):
        with self._lock:
            self.metadata.append(dict(context.invocation_metadata()))
            attempt = len(self.metadata)
        if attempt <= self.fail_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")
        if self.delay_seconds:
            threading.Event().wait(self.delay_seconds)
        metadata = self.metadata[-1]
        item = common_pb2.Item(item_id=self.name, title=request.query)
        return ranker_pb2.RecommendResponse(
            items=[ranker_pb2.RecommendedItem(item=item, score=1.0)], request_id=metadata.get("x-request-id", ""),
            path=ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY,
        )  # fmt: skip


def serve(servicer, credentials=None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ranker_pb2_grpc.add_RankerServiceServicer_to_server(servicer, server)
    port = free_port()
    address = f"127.0.0.1:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    assert bound == port
    server.start()
    return server, port


def certificate_authority_and_server_pair(common_name: str = "localhost") -> tuple[bytes, bytes, bytes]:
    """A private CA and a certificate it signed for `common_name`: (ca PEM, key PEM, cert PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whisperlite test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key_pem = server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(serialization.Encoding.PEM), key_pem, server.public_bytes(serialization.Encoding.PEM)


def test_tls_with_a_private_ca_carries_the_bearer_token_and_request_id():
    ca_pem, key_pem, cert_pem = certificate_authority_and_server_pair()
    servicer = RecordingRanker("tls")
    server, port = serve(servicer, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    try:
        with RankerClient(f"localhost:{port}", root_certificates=ca_pem, token="s3cret", timeout_seconds=30) as ranker:
            result = ranker.recommend(user_id="u", query="boots", request_id="req-tls")
        assert result.request_id == "req-tls" and result.items[0].item.item_id == "tls"
        assert servicer.metadata[-1]["authorization"] == "Bearer s3cret"

        async def call_async():
            async with AsyncRankerClient(f"localhost:{port}", root_certificates=ca_pem, timeout_seconds=30) as ranker:
                return await ranker.recommend(user_id="u", query="boots")

        assert asyncio.run(call_async()).items[0].item.item_id == "tls"
        assert "authorization" not in servicer.metadata[-1]

        # The same server refuses a client that does not trust its CA, and one that speaks plaintext.
        _, _, other_cert = certificate_authority_and_server_pair()
        for kwargs in ({"root_certificates": other_cert}, {}):
            with RankerClient(f"localhost:{port}", timeout_seconds=5, max_attempts=1, **kwargs) as ranker:
                with pytest.raises(grpc.RpcError) as raised:
                    ranker.recommend(user_id="u", query="boots")
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_mutual_tls_presents_the_client_certificate():
    server_ca, server_key, server_cert = certificate_authority_and_server_pair()
    client_ca, client_key, client_cert = certificate_authority_and_server_pair("whisperlite-client")
    credentials = grpc.ssl_server_credentials([(server_key, server_cert)], root_certificates=client_ca, require_client_auth=True)
    server, port = serve(RecordingRanker("mtls"), credentials)
    try:
        mutual = {"root_certificates": server_ca, "certificate_chain": client_cert, "private_key": client_key}
        with RankerClient(f"localhost:{port}", timeout_seconds=30, **mutual) as ranker:
            assert ranker.recommend(user_id="u", query="boots").items[0].item.item_id == "mtls"
        with RankerClient(f"localhost:{port}", timeout_seconds=5, max_attempts=1, root_certificates=server_ca) as ranker:
            with pytest.raises(grpc.RpcError) as raised:  # no client certificate: the handshake fails
                ranker.recommend(user_id="u", query="boots")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
    with pytest.raises(ValueError, match="both certificate_chain and private_key"):
        RankerClient(f"localhost:{port}", certificate_chain=client_cert)


def test_unavailable_answers_are_retried_by_the_service_config_and_deadlines_hold():
    flaky = RecordingRanker("flaky", fail_first=2)
    slow = RecordingRanker("slow", delay_seconds=3)
    servers = [serve(flaky), serve(slow)]
    try:
        (_, flaky_port), (_, slow_port) = servers
        with RankerClient(f"127.0.0.1:{flaky_port}", max_attempts=3, timeout_seconds=30) as ranker:
            assert ranker.recommend(user_id="u", query="boots", request_id="req-retry").items[0].item.item_id == "flaky"
        assert [m["x-request-id"] for m in flaky.metadata] == ["req-retry"] * 3  # two refused, the third answered

        flaky.metadata.clear()
        with RankerClient(f"127.0.0.1:{flaky_port}", max_attempts=1, timeout_seconds=30) as ranker:
            with pytest.raises(grpc.RpcError) as raised:
                ranker.recommend(user_id="u", query="boots")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and len(flaky.metadata) == 1

        with RankerClient(f"127.0.0.1:{slow_port}", timeout_seconds=0.5) as ranker:
            with pytest.raises(grpc.RpcError) as raised:
                ranker.recommend(user_id="u", query="boots")
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        for server, _ in servers:
            server.stop(None)


def test_round_robin_spreads_calls_over_every_address_of_the_target():
    replicas = [RecordingRanker(f"replica-{n}") for n in range(3)]
    servers = [serve(replica) for replica in replicas]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)  # what DNS returns for a headless Service
        with RankerClient(target, timeout_seconds=30) as ranker:
            answered = {ranker.recommend(user_id="u", query=f"q{n}").items[0].item.item_id for n in range(12)}
        assert answered == {"replica-0", "replica-1", "replica-2"}
    finally:
        for server, _ in servers:
            server.stop(None)


def test_the_recommend_command_prints_the_typed_result_and_sends_the_request_id(text_only_ranker, catalog_service, shared_catalog_items):
    shared_catalog_items.append("cli-boots")
    with CatalogAdminClient(catalog_service.address, timeout_seconds=120) as catalog:
        catalog.upsert([Item("cli-boots", "Brown suede boots", price=90.0)])
    command = [sys.executable, "-m", "whisperlite", "recommend", "--ranker", text_only_ranker.address, "--query", "brown suede boots",
               "-k", "3", "--request-id", "cli-req-1", "--timeout", "60"]  # fmt: skip
    printed = json.loads(subprocess.run([*command, "--json"], cwd=REPO, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert printed["request_id"] == "cli-req-1" and printed["path"] == "text_only"
    assert printed["items"][0]["item"] == {
        "item_id": "cli-boots", "title": "Brown suede boots", "text": "", "category": "", "price": 90.0,
        "image_uri": "", "attributes": {}, "vector": [],
    }  # fmt: skip
    text = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True, timeout=120).stdout
    assert "request cli-req-1" in text and "[cli-boots] Brown suede boots" in text
    session = subprocess.run([*command, "--recent", "cli-boots", "--recent", "cli-gone"], cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
    assert "path recent_items" in session.stdout
    assert session.stderr.strip() == "not in the catalog, left out of the taste: --recent cli-gone"
    refused = subprocess.run([*command[:-2], "--timeout", "60", "--max-attempts", "9"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "max_attempts: must be between 1 and 5" in refused.stderr


class _CountingRanker(ranker_pb2_grpc.RankerServiceServicer):
    def __init__(self):
        self.calls = 0

    def Recommend(self, request, context):
        self.calls += 1
        return ranker_pb2.RecommendResponse()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"categories": "shoes"}, TypeError, "categories: must be a sequence of strings, got one str"),
        ({"exclude_item_ids": "sku-1"}, TypeError, "exclude_item_ids: must be a sequence of strings"),
        ({"recent_item_ids": "sku-1"}, TypeError, "recent_item_ids: must be a sequence of strings"),
        ({"request_id": "a b"}, ValueError, "request_id: must be 1 to 128 visible ASCII characters"),
        ({"request_id": "ü"}, ValueError, "request_id: must be 1 to 128 visible ASCII characters"),
        ({"timeout_seconds": 0}, ValueError, "timeout_seconds: must be a positive number of seconds, got 0"),
        ({"timeout_seconds": float("nan")}, ValueError, "timeout_seconds: must be a positive number of seconds, got nan"),
    ],
    ids=["categories-as-a-str", "excluded-as-a-str", "recent-as-a-str", "request-id-with-a-space", "request-id-not-ascii", "zero-timeout", "nan-timeout"],
)
def test_arguments_that_cannot_make_a_request_are_refused_before_any_call(arguments, error, message):
    """A str where ids go was iterated ("shoes" filtered on the categories s, h, o, e), a zero timeout meant the default,
    a NaN one failed every call at once, and a non-ASCII request id failed inside gRPC as INTERNAL."""
    servicer = _CountingRanker()
    server, port = serve(servicer)
    try:
        with RankerClient(f"127.0.0.1:{port}") as ranker:
            with pytest.raises(error, match=re.escape(message)):
                ranker.recommend(user_id="u1", query="boots", **arguments)
            ranker.recommend(user_id="u1", query="boots", categories=["shoes"], request_id="req-1", timeout_seconds=5)
        assert servicer.calls == 1
        for timeout in (float("nan"), float("inf"), -1):
            with pytest.raises(ValueError, match="timeout_seconds: must be a positive number of seconds"):
                RankerClient(f"127.0.0.1:{port}", timeout_seconds=timeout)
    finally:
        server.stop(0)
