"""Authentication, scopes, TLS and mTLS on real servers, with certificates generated here.

A catalog runs over TLS with a tokens file (vectors sent by the caller, so no encoder is needed);
a second one requires client certificates and binds every address without authentication. Every
refusal is checked for its status, its message, and that nothing was written.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.servers import launch_service, start_catalog
from whisperlite.core.channels import create_sync_channel
from whisperlite.core.client_security import ClientSecurity
from whisperlite.services.common.auth import TokenFileError, parse_tokens, required_scope
from whisperlite.shell.dev_certs import KeyPair, issue, new_ca, new_token
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

DIMENSION = 4
LOCAL = ["localhost", "127.0.0.1", "::1"]


@dataclass
class Pki:
    directory: Path
    ca: KeyPair
    tokens: dict[str, str]  # name -> token

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def write_pair(self, pair: KeyPair, stem: str) -> None:
        pair.write(self.directory / f"{stem}.pem", self.directory / f"{stem}-key.pem")

    def write_tokens(self, **grants: str) -> None:
        lines = ["# name scope: written by the test"] + [f"{self.tokens[name]} {scopes}" for name, scopes in grants.items()]
        (self.directory / "tokens.txt").write_text("\n".join(lines) + "\n")

    def client(self, token: str = "", ca: str = "ca.pem", **kwargs) -> ClientSecurity:
        return ClientSecurity(ca_file=self.path(ca), token=token, **kwargs)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = new_ca("test CA")
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    rogue = new_ca("rogue CA")
    (directory / "rogue-ca.pem").write_bytes(rogue.cert_pem)
    pki = Pki(directory, ca, {name: new_token() for name in ("reader", "writer", "revoked", "added")})
    pki.write_pair(issue(ca, "catalog", LOCAL), "server")
    pki.write_pair(issue(ca, "client", []), "client")
    pki.write_pair(issue(rogue, "client", []), "rogue-client")
    pki.write_tokens(reader="recommend", writer="recommend,write", revoked="recommend,write")
    return pki


@pytest.fixture(scope="module")
def secure_catalog(tmp_path_factory, pki):
    service = start_catalog(
        tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("catalog"), "",
        "--dimension", str(DIMENSION), "--encoder-model", "test-vectors",
        "--auth-tokens-file", pki.path("tokens.txt"),
        "--tls-cert-file", pki.path("server.pem"), "--tls-key-file", pki.path("server-key.pem"),
        security=pki.client(),
    )  # fmt: skip
    with create_sync_channel(service.address, pki.client()) as channel:
        catalog_pb2_grpc.CatalogServiceStub(channel).UpsertItems(
            catalog_pb2.UpsertItemsRequest(items=[_item(f"item-{i}", f"original title {i}") for i in range(5)]),
            metadata=pki.client(pki.tokens["writer"]).metadata(),
            timeout=60,
        )
    yield service
    service.stop()


def _item(item_id: str, title: str) -> common_pb2.Item:
    return common_pb2.Item(item_id=item_id, title=title, vector=[1.0, 0.5, 0.25, 0.125])


def _call(address: str, security: ClientSecurity, method: str, request, metadata=None, timeout: float = 20.0):
    """One catalog call on a fresh channel (so every call does its own TLS handshake)."""
    with create_sync_channel(address, security) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        return getattr(stub, method)(request, metadata=security.metadata() if metadata is None else metadata, timeout=timeout)


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def _stats(service, pki) -> catalog_pb2.GetStatsResponse:
    return _call(service.address, pki.client(pki.tokens["reader"]), "GetStats", catalog_pb2.GetStatsRequest())


# ---- the policy and the tokens file, without a server --------------------------------------------


def test_scopes_by_full_method_name_deny_by_default():
    assert required_scope("/whisperlite.v1.RankerService/Recommend") == "recommend"
    assert required_scope("/whisperlite.v1.CatalogService/GetItems") == "recommend"
    assert required_scope("/whisperlite.v1.CatalogService/UpsertItems") == "write"
    assert required_scope("/whisperlite.v1.CatalogService/DeleteItems") == "write"
    assert required_scope("/whisperlite.v1.CatalogService/ListItems") == "write"  # the export: for those who load the catalog
    assert required_scope("/whisperlite.v1.ModelAdminService/GetModel") == "admin"
    assert required_scope("/whisperlite.v1.CatalogService/SomethingNew") == "admin"
    assert required_scope("/grpc.health.v1.Health/Check") is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("only-a-token-here-0123456789", "expected 'token scope[,scope]'"),
        ("short recommend", "shorter than 16"),
        ("a-long-enough-token-0123 recommend,delete", "unknown scope"),
        ("a-long-enough-token-0123 recommend\na-long-enough-token-0123 write", ":2: the same token is listed twice"),
        ("", "holds no token; every call would be refused"),
        ("# only a comment: a truncated write\n", "holds no token; every call would be refused"),
        ("a-long-enough-token-0123-\u00e9 recommend", ":1: the token must be printable ASCII"),
    ],
)
def test_a_bad_tokens_file_names_the_line_never_the_token(text, message):
    with pytest.raises(TokenFileError) as raised:
        parse_tokens(text, "tokens.txt")
    assert message in str(raised.value)
    assert "a-long-enough-token-0123" not in str(raised.value) and "only-a-token-here" not in str(raised.value)


def test_a_downstream_token_file_that_cannot_be_read_keeps_its_last_token(tmp_path, caplog):
    """A secret mid-rotation (deleted, emptied) failed every downstream call INTERNAL; now the last token is kept, logged once."""
    token_file = tmp_path / "service.token"
    token_file.write_text("first-token-0123456789\n")
    security = ClientSecurity(token_file=str(token_file))
    assert security.metadata() == (("authorization", "Bearer first-token-0123456789"),)
    token_file.unlink()
    with caplog.at_level("ERROR", logger="whisperlite.security"):
        assert [security.bearer_token() for _ in range(3)] == ["first-token-0123456789"] * 3
    assert [record.getMessage() for record in caplog.records] == ["token file unreadable: calls keep its last token"]
    token_file.write_text("")
    assert security.bearer_token() == "first-token-0123456789"
    token_file.write_text("second-token-0123456789")
    assert security.bearer_token() == "second-token-0123456789"
    blank = tmp_path / "blank.token"  # never read well: nothing to fall back on
    blank.write_text(" ")
    with pytest.raises(ValueError, match="must hold one token of printable ASCII"):
        ClientSecurity(token_file=str(blank)).bearer_token()


def _dated_pair(pki: Pki, starts_in_days: float, ends_in_days: float) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "catalog-dated")]))
        .issuer_name(pki.ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=starts_in_days))
        .not_valid_after(now + datetime.timedelta(days=ends_in_days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(pki.ca.key, hashes.SHA256())
    )
    return KeyPair(certificate, key)


@pytest.mark.parametrize(("starts", "ends", "message"), [(-30, -1, "expired on"), (2, 30, "is not valid before")], ids=["expired", "not-yet-valid"])
def test_a_certificate_outside_its_dates_stops_start_up_and_is_not_reloaded(secure_catalog, pki, tmp_path, starts, ends, message):
    """Peers refuse such a certificate at every handshake: the service used to serve it (SERVING, every client failing),
    and a stale pair copied in at rotation was logged as "certificates reloaded"."""
    stale = _dated_pair(pki, starts, ends)
    stale.write(tmp_path / "stale.pem", tmp_path / "stale-key.pem")
    service = launch_service(
        "catalog", tmp_path, "--query-encoder-addr", "", "--data-dir", str(tmp_path / "c"),
        "--tls-cert-file", str(tmp_path / "stale.pem"), "--tls-key-file", str(tmp_path / "stale-key.pem"),
    )  # fmt: skip
    assert service.process.wait(60) != 0
    assert message in service.log() and "Traceback" not in service.log()

    _assert_reload_refused(secure_catalog, pki, stale, message)


def _assert_reload_refused(secure_catalog, pki, pair: KeyPair, reason: str) -> None:
    """Writes `pair` over the catalog's certificate files and sends SIGHUP: the reload must be refused for `reason`
    while the pair in force keeps serving new connections. The files are put back after."""
    served = _served_certificate(secure_catalog.port, pki.path("ca.pem"))
    originals = {name: (pki.directory / name).read_bytes() for name in ("server.pem", "server-key.pem")}
    try:
        refusals = secure_catalog.log().count("certificates not reloaded")
        pair.write(pki.directory / "server.pem", pki.directory / "server-key.pem")
        secure_catalog.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while secure_catalog.log().count("certificates not reloaded") == refusals:
            assert _served_certificate(secure_catalog.port, pki.path("ca.pem")) == served  # the old pair keeps serving
            assert time.monotonic() < deadline, "the pair was neither refused nor logged within 30 s"
            time.sleep(0.2)
        assert reason in secure_catalog.log().split("certificates not reloaded")[-1]
        assert _served_certificate(secure_catalog.port, pki.path("ca.pem")) == served
        assert _stats(secure_catalog, pki).item_count >= 5  # a new connection, with the pair in force
    finally:
        for name, content in originals.items():
            (pki.directory / name).write_bytes(content)


@pytest.mark.parametrize(
    ("successor", "reason"),
    [
        (lambda pki: issue(pki.ca, "another host", ["evil.example"]), "does not name 127.0.0.1, ::1, localhost"),
        (lambda pki: issue(new_ca("another CA"), "catalog", LOCAL), "is issued by CN=another CA,O=WhisperLite development"),
    ],
    ids=["another-hosts-certificate", "another-cas-certificate"],
)
def test_a_certificate_its_clients_would_refuse_is_not_reloaded(secure_catalog, pki, successor, reason):
    """A valid pair that names other hosts, or comes from a CA the clients do not trust, was logged "certificates
    reloaded" and served: every new connection then failed its handshake (300 failed Recommends in 9 s in a probe)."""
    _assert_reload_refused(secure_catalog, pki, successor(pki), reason)


# ---- TLS -----------------------------------------------------------------------------------------


def test_plaintext_client_cannot_talk_to_a_tls_server(secure_catalog, pki):
    code, _ = _code(lambda: _call(secure_catalog.address, ClientSecurity(token=pki.tokens["reader"]), "GetStats", catalog_pb2.GetStatsRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_trusts_another_ca_refuses_the_server(secure_catalog, pki):
    rogue = ClientSecurity(ca_file=pki.path("rogue-ca.pem"), token=pki.tokens["reader"])
    code, _ = _code(lambda: _call(secure_catalog.address, rogue, "GetStats", catalog_pb2.GetStatsRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_health_stays_open_without_a_token(secure_catalog, pki):
    with create_sync_channel(secure_catalog.address, pki.client()) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# ---- authentication and scopes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ((), "missing 'authorization' metadata"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "malformed 'authorization' metadata"),
        ((("authorization", "Bearer"),), "malformed 'authorization' metadata"),
        ((("authorization", "Bearer two words"),), "malformed 'authorization' metadata"),
        ((("authorization", "Bearer not-a-token-anyone-was-given"),), "unknown or revoked bearer token"),
    ],
)
def test_calls_without_a_valid_token_are_unauthenticated(secure_catalog, pki, metadata, expected):
    code, details = _code(lambda: _call(secure_catalog.address, pki.client(), "GetStats", catalog_pb2.GetStatsRequest(), metadata=metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert expected in details


def test_a_recommend_token_cannot_write_and_nothing_is_written(secure_catalog, pki):
    reader = pki.client(pki.tokens["reader"])
    before = _stats(secure_catalog, pki).item_count
    code, details = _code(
        lambda: _call(secure_catalog.address, reader, "UpsertItems", catalog_pb2.UpsertItemsRequest(items=[_item("item-1", "DEFACED")]))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "UpsertItems needs the 'write' scope; this token has recommend" in details
    code, _ = _code(lambda: _call(secure_catalog.address, reader, "DeleteItems", catalog_pb2.DeleteItemsRequest(item_ids=["item-2"])))
    assert code == grpc.StatusCode.PERMISSION_DENIED

    assert _stats(secure_catalog, pki).item_count == before
    sample = _call(secure_catalog.address, reader, "GetItems", catalog_pb2.GetItemsRequest(item_ids=["item-1", "item-2"]))
    assert {item.item_id: item.title for item in sample.items} == {"item-1": "original title 1", "item-2": "original title 2"}


def test_a_write_token_writes(secure_catalog, pki):
    writer = pki.client(pki.tokens["writer"])
    response = _call(secure_catalog.address, writer, "UpsertItems", catalog_pb2.UpsertItemsRequest(items=[_item("written", "by the writer")]))
    assert response.upserted_count == 1
    got = _call(secure_catalog.address, writer, "GetItems", catalog_pb2.GetItemsRequest(item_ids=["written"]))
    assert [item.title for item in got.items] == ["by the writer"]


def test_reflection_needs_a_token(secure_catalog, pki):
    def list_services(metadata):
        with create_sync_channel(secure_catalog.address, pki.client()) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata, timeout=10)
            return [service.name for response in responses for service in response.list_services_response.service]

    code, _ = _code(lambda: list_services(()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "whisperlite.v1.CatalogService" in list_services(pki.client(pki.tokens["reader"]).metadata())


def test_refusals_are_counted_by_code_and_tokens_never_logged(secure_catalog, pki):
    reader = pki.client(pki.tokens["reader"])
    _code(lambda: _call(secure_catalog.address, reader, "DeleteItems", catalog_pb2.DeleteItemsRequest(item_ids=["item-3"])))
    _code(lambda: _call(secure_catalog.address, pki.client("Bearer-less-garbage-token-000"), "GetStats", catalog_pb2.GetStatsRequest()))
    with urllib.request.urlopen(secure_catalog.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    assert 'whisperlite_auth_rejected_total{grpc_code="PERMISSION_DENIED",grpc_method="DeleteItems",grpc_service="whisperlite.v1.CatalogService"}' in metrics
    assert 'grpc_code="UNAUTHENTICATED",grpc_method="GetStats"' in metrics
    log = secure_catalog.log()
    assert '"message": "call refused"' in log
    for token in [*pki.tokens.values(), "Bearer-less-garbage-token-000"]:
        assert token not in log and token not in metrics


def test_a_flood_of_refused_calls_writes_a_line_per_interval_not_per_call(secure_catalog, pki):
    """3,000 bad-token calls in ~3 s wrote 13,646 WARNING lines (7.8 MB): each refusal had its own line."""
    lines_before = secure_catalog.log().count('"message": "call refused"')
    stranger = pki.client("Bearer-less-flood-token-0000")
    with create_sync_channel(secure_catalog.address, pki.client()) as channel:
        call = channel.unary_unary("/whisperlite.v1.CatalogService/GetStats", catalog_pb2.GetStatsRequest.SerializeToString)
        for _ in range(300):
            with pytest.raises(grpc.RpcError):
                call(catalog_pb2.GetStatsRequest(), metadata=stranger.metadata(), timeout=10)
    lines = secure_catalog.log().count('"message": "call refused"')
    assert lines - lines_before <= 2, lines - lines_before  # at most one per 10 s, and the test takes less
    with urllib.request.urlopen(secure_catalog.metrics_url, timeout=10) as response:
        rejected = [line for line in response.read().decode().splitlines()
                    if line.startswith('whisperlite_auth_rejected_total{grpc_code="UNAUTHENTICATED",grpc_method="GetStats"')]
    assert float(rejected[0].rsplit(" ", 1)[1]) >= 300  # the metric counts every one


def test_sighup_revokes_and_adds_tokens_without_a_restart(secure_catalog, pki):
    revoked, added = pki.client(pki.tokens["revoked"]), pki.client(pki.tokens["added"])
    assert _stats(secure_catalog, pki).item_count >= 5
    assert _call(secure_catalog.address, revoked, "GetStats", catalog_pb2.GetStatsRequest()).dimension == DIMENSION
    pki.write_tokens(reader="recommend", writer="recommend,write", added="recommend")
    secure_catalog.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while True:  # the signal is handled by the server's event loop: wait for it, generously
        try:
            _call(secure_catalog.address, revoked, "GetStats", catalog_pb2.GetStatsRequest())
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error.details() == "unknown or revoked bearer token"
            break
        assert time.monotonic() < deadline, "the revoked token still works 30 s after SIGHUP"
        time.sleep(0.2)
    assert _call(secure_catalog.address, added, "GetStats", catalog_pb2.GetStatsRequest()).dimension == DIMENSION
    assert secure_catalog.process.poll() is None
    # A broken file on SIGHUP keeps the tokens in force rather than locking everyone out.
    (pki.directory / "tokens.txt").write_text("broken line\n")
    secure_catalog.process.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert _call(secure_catalog.address, added, "GetStats", catalog_pb2.GetStatsRequest()).dimension == DIMENSION
    pki.write_tokens(reader="recommend", writer="recommend,write", added="recommend")


def _served_certificate(port: int, ca_file: str) -> bytes:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.getpeercert(binary_form=True)


def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(secure_catalog, pki):
    def der(pair: KeyPair) -> bytes:
        return pair.certificate.public_bytes(serialization.Encoding.DER)

    original = (pki.directory / "server.pem").read_bytes()
    rotated = issue(pki.ca, "catalog-rotated", LOCAL)
    # Half a rotation (new certificate, old key) is refused: the old pair keeps serving.
    (pki.directory / "server.pem").write_bytes(rotated.cert_pem)
    assert _served_certificate(secure_catalog.port, pki.path("ca.pem")) != der(rotated)
    assert _stats(secure_catalog, pki).item_count >= 5
    (pki.directory / "server-key.pem").write_bytes(rotated.key_pem)
    deadline = time.monotonic() + 30
    while _served_certificate(secure_catalog.port, pki.path("ca.pem")) != der(rotated):
        assert time.monotonic() < deadline, "the rotated certificate is not served 30 s after it was written"
        time.sleep(0.2)
    assert _stats(secure_catalog, pki).item_count >= 5
    assert original != rotated.cert_pem
    assert "certificates reloaded" in secure_catalog.log()


def test_sighup_reloads_certificates_whose_files_look_unchanged(secure_catalog, pki):
    """A copy that keeps size and times (rsync -t, some secret stores) is not noticed: SIGHUP forces it."""
    cert_path, key_path = pki.directory / "server.pem", pki.directory / "server-key.pem"
    sizes = (cert_path.stat().st_size, key_path.stat().st_size)
    replacement = next(pair for pair in (issue(pki.ca, "catalog-sighup", LOCAL) for _ in range(200)) if (len(pair.cert_pem), len(pair.key_pem)) == sizes)
    times = [(path.stat().st_atime_ns, path.stat().st_mtime_ns) for path in (cert_path, key_path)]
    cert_path.write_bytes(replacement.cert_pem)
    key_path.write_bytes(replacement.key_pem)
    for path, (atime, mtime) in zip((cert_path, key_path), times):
        os.utime(path, ns=(atime, mtime))
    new_der = replacement.certificate.public_bytes(serialization.Encoding.DER)
    assert _served_certificate(secure_catalog.port, pki.path("ca.pem")) != new_der
    secure_catalog.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while _served_certificate(secure_catalog.port, pki.path("ca.pem")) != new_der:
        assert time.monotonic() < deadline, "SIGHUP did not reload the certificate within 30 s"
        time.sleep(0.2)
    assert _stats(secure_catalog, pki).item_count >= 5


def test_metrics_bind_the_service_host_only(secure_catalog, pki):
    with urllib.request.urlopen(f"http://127.0.0.1:{secure_catalog.metrics_port}/metrics", timeout=10) as response:
        assert response.status == 200
    # 127.0.0.2 is loopback too, but not the address the service was told to bind.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", secure_catalog.metrics_port), timeout=5).close()


# ---- mTLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_catalog(tmp_path_factory, pki):
    """Requires client certificates; binds every address (gRPC) without a tokens file, /metrics on loopback only."""
    service = start_catalog(
        tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("catalog"), "",
        "--dimension", str(DIMENSION), "--encoder-model", "test-vectors", "--host", "0.0.0.0", "--metrics-host", "127.0.0.1",
        "--tls-cert-file", pki.path("server.pem"), "--tls-key-file", pki.path("server-key.pem"),
        "--tls-client-ca-file", pki.path("ca.pem"), "--no-reflection",
        security=pki.client(cert_file=pki.path("client.pem"), key_file=pki.path("client-key.pem")),
    )  # fmt: skip
    yield service
    service.stop()


def test_mtls_refuses_clients_without_a_certificate_from_its_ca(mtls_catalog, pki):
    request = catalog_pb2.GetStatsRequest()
    code, _ = _code(lambda: _call(mtls_catalog.address, pki.client(), "GetStats", request, timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE
    rogue = pki.client(cert_file=pki.path("rogue-client.pem"), key_file=pki.path("rogue-client-key.pem"))
    code, _ = _code(lambda: _call(mtls_catalog.address, rogue, "GetStats", request, timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE
    trusted = pki.client(cert_file=pki.path("client.pem"), key_file=pki.path("client-key.pem"))
    assert _call(mtls_catalog.address, trusted, "GetStats", request).dimension == DIMENSION


def test_no_reflection_switches_reflection_off(mtls_catalog, pki):
    trusted = pki.client(cert_file=pki.path("client.pem"), key_file=pki.path("client-key.pem"))
    with create_sync_channel(mtls_catalog.address, trusted) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        code, _ = _code(lambda: list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)))
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_an_exposed_server_without_tokens_warns_once_and_metrics_stay_on_their_host(mtls_catalog):
    assert mtls_catalog.log().count("bound to a non-loopback address without authentication") == 1
    socket.create_connection(("127.0.0.2", mtls_catalog.port), timeout=5).close()  # gRPC is on every address
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", mtls_catalog.metrics_port), timeout=5).close()
    with urllib.request.urlopen(f"http://127.0.0.1:{mtls_catalog.metrics_port}/metrics", timeout=10) as response:
        assert response.status == 200


def test_a_token_file_that_does_not_parse_stops_start_up(tmp_path):
    bad = tmp_path / "tokens.txt"
    bad.write_text("a-long-enough-token-0123 recommend,everything\n")
    service = launch_service("catalog", tmp_path, "--auth-tokens-file", str(bad), "--query-encoder-addr", "", "--data-dir", str(tmp_path / "c"))
    assert service.process.wait(60) != 0
    assert f"{bad}:1: unknown scope ['everything']" in service.log()
    assert "a-long-enough-token-0123" not in service.log()


def test_refused_calls_take_no_admission_slot(tmp_path, pki):
    """With one slot and no queue, 200 concurrent calls without a token were partly answered RESOURCE_EXHAUSTED (their
    refusal ran inside admission), and such a flood shed a legitimate caller's calls."""
    service = start_catalog(
        tmp_path / "logs", tmp_path / "catalog", "",
        "--dimension", str(DIMENSION), "--encoder-model", "test-vectors", "--auth-tokens-file", pki.path("tokens.txt"),
        "--tls-cert-file", pki.path("server.pem"), "--tls-key-file", pki.path("server-key.pem"),
        "--max-in-flight", "1", "--max-queued", "0",
        security=pki.client(),
    )  # fmt: skip

    async def flood() -> list[grpc.StatusCode]:
        async with grpc.aio.secure_channel(service.address, pki.client().channel_credentials()) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)

            async def call(metadata) -> grpc.StatusCode:
                try:
                    await stub.GetStats(catalog_pb2.GetStatsRequest(), metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            return await asyncio.gather(*(call((("authorization", f"Bearer not-a-token-{i:020d}"),)) for i in range(200)))

    try:
        codes = asyncio.run(flood())
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}, {code.name: codes.count(code) for code in set(codes)}
    finally:
        service.stop()


def test_a_grpc_port_in_use_stops_start_up_saying_so(tmp_path):
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        taken.bind(("::", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = launch_service("catalog", tmp_path, "--query-encoder-addr", "", "--data-dir", str(tmp_path / "c"), port=port)
        assert service.process.wait(60) != 0
    assert "catalog: cannot bind gRPC port " in service.log() and f":{port} (" in service.log() and "Traceback" not in service.log()
