"""The whole Recommend path over TLS with tokens: encoder and catalog require client certificates,
every service checks tokens, and the services call each other with their own service token.

The ranker knows only the shopper's token and the encoder and catalog only the service and ingest
tokens, so Recommend works only if the ranker sends its own token downstream, never the shopper's.
Certificates and tokens come from `scripts/dev_certs.py` (run here); the items are ingested with
`whisperlite ingest` over mTLS and embedded by the catalog through the encoder (mTLS, service token).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pandas as pd
import pytest

from tests.servers import REPO, start_catalog, start_gateway, start_service
from whisperlite.core.channels import create_sync_channel
from whisperlite.core.client_security import ClientSecurity
from whisperlite.core.clients.health import is_serving, poll_until
from whisperlite.core.clients.model_admin import ModelAdminClient
from whisperlite.core.clients.ranker import RankerClient
from whisperlite.core.dataset import ITEM_COLUMNS, ITEMS_FILE
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc


TITLES = [
    "Black leather ankle boots with side zip",
    "Brown suede chelsea boots",
    "Waterproof hiking boots for men",
    "Light floral summer dress with short sleeves",
    "Linen maxi dress for a beach wedding",
    "Red cocktail dress with lace",
    "Men's automatic dive watch with steel bracelet",
    "Minimalist quartz watch with leather strap",
    "Warm down winter coat with hood",
    "Wool pea coat in navy",
    "Lightweight running shoes with mesh upper",
    "Trail running shoes with grippy sole",
    "Cotton crew neck t-shirt, pack of three",
    "Slim fit stretch jeans",
    "Silk scarf with paisley print",
    "Leather belt with brass buckle",
    "Canvas tote bag",
    "Knitted beanie hat",
    "Polarized aviator sunglasses",
    "Gold hoop earrings",
]


def _token(pki: Path, name: str) -> str:
    return (pki / f"{name}.token").read_text().strip()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("secrets")
    subprocess.run([sys.executable, "scripts/dev_certs.py", "--out", str(out)], cwd=REPO, check=True, timeout=120)
    (out / "ranker-tokens.txt").write_text(f"{_token(out, 'shopper')} recommend\n{_token(out, 'admin')} admin\n")
    (out / "backend-tokens.txt").write_text(f"{_token(out, 'service')} recommend\n{_token(out, 'ingest')} recommend,write\n")
    return out


def _server_flags(pki: Path, name: str, tokens: str, mtls: bool) -> list[str]:
    flags = ["--tls-cert-file", str(pki / f"{name}.pem"), "--tls-key-file", str(pki / f"{name}-key.pem"), "--auth-tokens-file", str(pki / tokens)]
    return flags + (["--tls-client-ca-file", str(pki / "ca.pem")] if mtls else [])


def _downstream_flags(pki: Path) -> list[str]:
    return ["--tls-ca-file", str(pki / "ca.pem"), "--downstream-token-file", str(pki / "service.token")]


def _client_cert(pki: Path) -> dict[str, str]:
    return {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"), "key_file": str(pki / "client-key.pem")}


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory, pki):
    logs = tmp_path_factory.mktemp("logs")
    mtls_probe = ClientSecurity(**_client_cert(pki))
    encoder = start_service("query-encoder", logs, *_server_flags(pki, "query-encoder", "backend-tokens.txt", mtls=True), security=mtls_probe)
    catalog = start_catalog(
        logs, tmp_path_factory.mktemp("catalog"), encoder.address,
        *_server_flags(pki, "catalog", "backend-tokens.txt", mtls=True), *_downstream_flags(pki), security=mtls_probe,
    )  # fmt: skip
    data = tmp_path_factory.mktemp("items")
    rows = [{"item_id": f"item-{i}", "title": title, "text": "", "category": "", "image_path": ""} for i, title in enumerate(TITLES)]
    pd.DataFrame(rows, columns=ITEM_COLUMNS).to_csv(data / ITEMS_FILE, index=False)
    ingest = subprocess.run(
        [sys.executable, "-m", "whisperlite", "ingest", "--data", str(data), "--catalog", catalog.address,
         "--tls-ca-file", str(pki / "ca.pem"), "--tls-cert-file", str(pki / "client.pem"), "--tls-key-file", str(pki / "client-key.pem"),
         "--token-file", str(pki / "ingest.token")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    assert f"upserted {len(rows)} items" in ingest.stdout
    ranker = start_service(
        "ranker", logs, "--model-dir", str(tmp_path_factory.mktemp("no-model")),
        "--query-encoder-addr", encoder.address, "--catalog-addr", catalog.address,
        *_server_flags(pki, "ranker", "ranker-tokens.txt", mtls=False), *_downstream_flags(pki),
        security=ClientSecurity(ca_file=str(pki / "ca.pem")),
    )  # fmt: skip
    yield {"encoder": encoder, "catalog": catalog, "ranker": ranker, "items": len(rows)}
    for service in (ranker, catalog, encoder):
        service.stop()


def test_recommend_over_tls_with_a_shopper_token(secure_stack, pki):
    shopper = ClientSecurity(ca_file=str(pki / "ca.pem"), token_file=str(pki / "shopper.token"))
    with RankerClient(secure_stack["ranker"].address, timeout_seconds=60, security=shopper) as ranker:
        response = ranker.recommend(user_id="", query="black leather boots", top_k=5)
    assert len(response.items) == 5
    assert any("boot" in scored.item.title.lower() for scored in response.items), [s.item.title for s in response.items]


def test_recommend_without_a_token_is_unauthenticated(secure_stack, pki):
    with RankerClient(secure_stack["ranker"].address, timeout_seconds=30, security=ClientSecurity(ca_file=str(pki / "ca.pem"))) as ranker:
        with pytest.raises(grpc.RpcError) as raised:
            ranker.recommend(user_id="", query="black leather boots", top_k=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_shopper_token_means_nothing_to_the_catalog(secure_stack, pki):
    shopper = ClientSecurity(token=_token(pki, "shopper"), **_client_cert(pki))
    with create_sync_channel(secure_stack["catalog"].address, shopper) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetStats(catalog_pb2.GetStatsRequest(), metadata=shopper.metadata(), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        service = ClientSecurity(token_file=str(pki / "service.token"), **_client_cert(pki))
        stats = stub.GetStats(catalog_pb2.GetStatsRequest(), metadata=service.metadata(), timeout=30)
    assert stats.item_count == secure_stack["items"]


def test_cli_recommend_and_health_speak_tls(secure_stack, pki):
    ranker = secure_stack["ranker"].address
    recommend = subprocess.run(
        [sys.executable, "-m", "whisperlite", "recommend", "--ranker", ranker, "--query", "summer dress", "-k", "3", "--json",
         "--tls-ca-file", str(pki / "ca.pem")],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "WHISPERLITE_TOKEN": _token(pki, "shopper")},
    )  # fmt: skip
    assert recommend.returncode == 0, recommend.stderr[-2000:]
    assert len(json.loads(recommend.stdout)["items"]) == 3
    health = subprocess.run(
        [sys.executable, "-m", "whisperlite", "health", ranker, "--tls-ca-file", str(pki / "ca.pem")], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")
    plaintext = subprocess.run([sys.executable, "-m", "whisperlite", "health", ranker, "--timeout", "3"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (plaintext.returncode, plaintext.stdout.strip()) == (1, "NOT_SERVING")
    assert f"{ranker}: UNAVAILABLE: " in plaintext.stderr  # why: the call failed, not the server's own status


def test_model_admin_needs_the_admin_scope(secure_stack, pki):
    """ModelAdminService (issue 10) on the same port: a shopper's token is refused, the admin token lists versions,
    and `whisperlite model list` speaks TLS with a token."""
    ranker = secure_stack["ranker"].address
    shopper = ClientSecurity(ca_file=str(pki / "ca.pem"), token_file=str(pki / "shopper.token"))
    with ModelAdminClient(ranker, timeout_seconds=30, security=shopper) as admin:
        with pytest.raises(grpc.RpcError) as raised:
            admin.list_models()
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin" in raised.value.details()
    with ModelAdminClient(ranker, timeout_seconds=30, security=ClientSecurity(ca_file=str(pki / "ca.pem"))) as admin:
        with pytest.raises(grpc.RpcError) as raised:
            admin.get_traffic()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listing = subprocess.run(
        [sys.executable, "-m", "whisperlite", "model", "--ranker", ranker, "--tls-ca-file", str(pki / "ca.pem"),
         "--token-file", str(pki / "admin.token"), "list", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert json.loads(listing.stdout).get("models", []) == []  # this ranker serves text-only: no version on disk


def test_the_gateway_speaks_tls_upstream_and_forwards_the_callers_token(secure_stack, pki, tmp_path):
    """The HTTP gateway (issue 11) in front of the secured stack: TLS (mTLS to the catalog) upstream,
    the caller's own token passed through, never one of its own."""
    gateway = start_gateway(
        tmp_path / "logs", secure_stack["ranker"].address, secure_stack["catalog"].address, tmp_path / "state",
        "--tls-ca-file", str(pki / "ca.pem"), "--tls-cert-file", str(pki / "client.pem"), "--tls-key-file", str(pki / "client-key.pem"),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{gateway.port}/v1/recommend"
        body = {"query": "black leather boots", "top_k": 3}
        shopper = {"authorization": f"Bearer {_token(pki, 'shopper')}"}
        answered = httpx.post(url, json=body, headers=shopper, timeout=60)
        assert answered.status_code == 200, answered.text
        assert len(answered.json()["items"]) == 3
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        # The shopper's token may not write: the catalog says PERMISSION_DENIED, the gateway 403, and nothing is stored.
        item = {"items": [{"item_id": "defaced", "title": "DEFACED"}]}
        refused = httpx.post(f"http://127.0.0.1:{gateway.port}/v1/items", json=item, headers=shopper, timeout=60)
        assert refused.status_code in (401, 403), refused.text  # the catalog does not know the shopper's token at all
        ingest = {"authorization": f"Bearer {_token(pki, 'ingest')}"}
        assert httpx.get(f"http://127.0.0.1:{gateway.port}/v1/items/defaced", headers=ingest, timeout=60).status_code == 404
    finally:
        gateway.stop()


def test_a_revoked_service_token_turns_the_ranker_not_serving_and_blames_no_shopper(secure_stack, pki):
    """The backends revoke the ranker's own token (a rotation done in the wrong order). Their open health checks still
    say SERVING, so the ranker stayed SERVING, and shoppers got FAILED_PRECONDITION (HTTP 400) as if they were at fault."""
    tokens = pki / "backend-tokens.txt"
    original = tokens.read_text()
    ranker, probe = secure_stack["ranker"], ClientSecurity(ca_file=str(pki / "ca.pem"))
    shopper = ClientSecurity(ca_file=str(pki / "ca.pem"), token_file=str(pki / "shopper.token"))
    try:
        tokens.write_text(f"{_token(pki, 'ingest')} recommend,write\n")
        for service in ("encoder", "catalog"):
            secure_stack[service].process.send_signal(signal.SIGHUP)
        assert poll_until(lambda: not is_serving(ranker.address, security=probe), 30), "the ranker stayed SERVING"
        assert "refuses this ranker's token: UNAUTHENTICATED" in ranker.log()
        with RankerClient(ranker.address, timeout_seconds=30, security=shopper) as client, pytest.raises(grpc.RpcError) as raised:
            client.recommend(user_id="", query="a query no cache holds: silk scarf", top_k=3)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "refused this service's own token (UNAUTHENTICATED" in raised.value.details()
    finally:
        tokens.write_text(original)
        for service in ("encoder", "catalog"):
            secure_stack[service].process.send_signal(signal.SIGHUP)
    assert poll_until(lambda: is_serving(ranker.address, security=probe), 30), "the ranker did not serve again"


def test_the_study_s_stored_comparisons_and_judgements_need_a_token_the_ranker_would_take(secure_stack, pki, tmp_path):
    """The study's routes that answer from the gateway's own store called no upstream, so on a secured stack anyone
    could read every stored request (ids count up) and change judgements. The gateway now checks them against the
    ranker's tokens file (the `recommend` scope, which creating a comparison needs at the ranker); SIGHUP re-reads it."""
    tokens = tmp_path / "ranker-tokens.txt"
    tokens.write_text((pki / "ranker-tokens.txt").read_text())
    gateway = start_gateway(
        tmp_path / "logs", secure_stack["ranker"].address, secure_stack["catalog"].address, tmp_path / "state",
        "--tls-ca-file", str(pki / "ca.pem"), "--tls-cert-file", str(pki / "client.pem"), "--tls-key-file", str(pki / "client-key.pem"),
        "--auth-tokens-file", str(tokens),
    )  # fmt: skip
    base = f"http://127.0.0.1:{gateway.port}/v1/study"
    shopper = {"authorization": f"Bearer {_token(pki, 'shopper')}"}
    admin_only = {"authorization": f"Bearer {_token(pki, 'admin')}"}
    try:
        created = httpx.post(f"{base}/comparisons", json={"user_id": "alice", "query": "a private request", "top_k": 2}, headers=shopper, timeout=60)
        assert created.status_code == 200, created.text
        comparison = created.json()["comparison_id"]
        judgement = {"position": "left", "rank": 1, "relevant": True}
        for method, path, body in (("GET", f"/comparisons/{comparison}", None), ("PUT", f"/comparisons/{comparison}/judgements", judgement),
                                   ("GET", "/users", None), ("POST", "/comparisons", {"query": "boots", "top_k": 2})):  # fmt: skip
            anonymous = httpx.request(method, f"{base}{path}", json=body, timeout=60)
            assert anonymous.status_code == 401, (path, anonymous.text)
            assert anonymous.json()["error"] == {"code": "UNAUTHENTICATED", "message": "missing 'authorization' metadata: send 'authorization: Bearer <token>'"}
            unscoped = httpx.request(method, f"{base}{path}", json=body, headers=admin_only, timeout=60)
            assert unscoped.status_code == 403, (path, unscoped.text)
            assert "needs the 'recommend' scope; this token has admin" in unscoped.json()["error"]["message"]
        stored = httpx.get(f"{base}/comparisons/{comparison}", headers=shopper, timeout=60)
        assert stored.status_code == 200 and stored.json()["query"] == "a private request", stored.text
        assert stored.json()["judged"] == 0, "no refused judgement was stored"
        assert httpx.put(f"{base}/comparisons/{comparison}/judgements", json=judgement, headers=shopper, timeout=60).status_code == 200
        tokens.write_text(f"{_token(pki, 'admin')} admin\n")  # the shopper's token revoked
        gateway.process.send_signal(signal.SIGHUP)
        wait_for_status = time.monotonic() + 10
        while httpx.get(f"{base}/users", headers=shopper, timeout=60).status_code != 401:
            assert time.monotonic() < wait_for_status, "the revoked token still works 10 s after SIGHUP"
            time.sleep(0.1)
    finally:
        gateway.stop()
