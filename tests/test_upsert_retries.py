"""Which failed upserts `whisperlite catalog import` and `whisperlite ingest` send again, and after how long: both
decide through core/clients/errors.py (`is_transient`, `RetrySchedule`). Each command runs as a process against a real
gRPC server on loopback: a catalog over TLS with a tokens file, or a catalog stand-in that refuses a first upsert."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.servers import REPO, free_port, serving_catalog
from tests.test_security import mtls_catalog, pki, secure_catalog  # noqa: F401 (fixtures: catalogs over TLS, one with a tokens file, one requiring client certificates)
from whisperlite.core.clients.errors import (
    DEFAULT_RETRIES, MAX_RETRY_WAIT_SECONDS, CredentialsRefused, RetrySchedule, is_transient, wait_until_ready,
)
from whisperlite.core.errors import RETRY_AFTER_KEY, DownstreamBusy, FailedPrecondition, InvalidArgument, ResponseTooLarge, Unavailable
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc

COMMANDS = ("import", "ingest")
ITEMS = 3
# What a command refused at its first upsert may take at most: starting Python and its imports on a loaded 2-core
# machine. A refused token used to be retried 8 times by ingest, for about 1.5 minutes.
REFUSED_WITHIN_SECONDS = 30.0


def _command(name: str, catalog: str, directory: Path, *flags: str) -> list[str]:
    """`whisperlite catalog import` of a JSONL file, or `whisperlite ingest` of a dataset, of ITEMS items."""
    if name == "import":
        source = directory / "items.jsonl"
        source.write_text("".join(json.dumps({"item_id": f"i{n}", "title": f"wool scarf {n}"}) + "\n" for n in range(ITEMS)))
        return [sys.executable, "-m", "whisperlite", "catalog", "import", str(source), "--catalog", catalog, *flags]
    data = directory / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,title\n" + "".join(f"i{n},wool scarf {n}\n" for n in range(ITEMS)))
    return [sys.executable, "-m", "whisperlite", "ingest", "--data", str(data), "--catalog", catalog, *flags]


def _run(command: list[str]) -> tuple[int, str, float]:
    """The command's exit code, its stdout and stderr together, and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


# ---- a refused token fails at once --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize(
    ("token", "refusal"),
    [("not-a-token-anyone-was-given", "unknown or revoked bearer token"), ("reader", "UpsertItems needs the 'write' scope")],
    ids=["unknown-token", "token-without-write"],
)
def test_a_refused_token_fails_the_command_at_once_naming_the_refusal(secure_catalog, pki, tmp_path, name, token, refusal):  # noqa: F811
    """UNAUTHENTICATED and PERMISSION_DENIED: no wait makes the token good. Ingest retried them 8 times (~1.5 minutes)
    before it said so, and then named --downstream-token-file, a flag of the services, not of the command."""
    sent = pki.tokens.get(token, token)  # a name the tokens file grants, or a token nobody was given
    command = _command(name, secure_catalog.address, tmp_path, "--tls-ca-file", pki.path("ca.pem"), "--token", sent)
    code, output, seconds = _run(command)
    assert code == 1, output
    assert refusal in output and "retry" not in output and "Traceback" not in output, output
    assert "--downstream-token-file" not in output, output
    if name == "import":  # "run the same command again" alone would fail the same way
        assert "run the same command again with a token the catalog accepts" in output, output
    assert seconds < REFUSED_WITHIN_SECONDS, output


# ---- a transient failure is sent again ----------------------------------------------------------------------------


class RefusesTheFirstUpsert(catalog_pb2_grpc.CatalogServiceServicer):
    """A catalog stand-in: refuses the first upsert with `code` (and `trailer`), along with the retries the client's
    channel makes of it on its own (they carry grpc-previous-rpc-attempts), so that the command's own retry is the
    call it answers; writes every upsert after that."""

    def __init__(self, code: grpc.StatusCode, trailer: tuple[tuple[str, str], ...] = ()):
        self.code, self.trailer, self.calls = code, trailer, 0

    def UpsertItems(self, request, context):
        self.calls += 1
        if self.calls == 1 or "grpc-previous-rpc-attempts" in dict(context.invocation_metadata()):
            context.set_trailing_metadata(self.trailer)
            context.abort(self.code, f"refused as the test asked: {self.code.name}")
        return catalog_pb2.UpsertItemsResponse(upserted_count=len(request.items))


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize(
    ("code", "trailer", "first_wait"),
    [
        # A server stopping ends the calls it received but had not started so: `catalog import` gave up on it.
        (grpc.StatusCode.CANCELLED, (), "0.5"),
        # A catalog shedding load says when to come back: both commands came back after 0.5 s regardless.
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ((RETRY_AFTER_KEY, "1200"),), "1.2"),
    ],
    ids=["cancelled", "shedding-with-a-hint"],
)
def test_a_transient_refusal_is_sent_again_after_the_same_wait_by_both_commands(tmp_path, name, code, trailer, first_wait):
    catalog = RefusesTheFirstUpsert(code, trailer)
    with serving_catalog(catalog) as address:
        exit_code, output, _ = _run(_command(name, address, tmp_path))
    assert exit_code == 0, output
    assert f"{code.name}: refused as the test asked" in output and f"; retry 1/{DEFAULT_RETRIES} in {first_wait} s" in output, output
    assert "after 1 retry" in output and "Traceback" not in output, output


# ---- a catalog that requires a client certificate -----------------------------------------------------------------

MTLS_HINT = "(if the catalog requires client certificates (mTLS), pass --tls-cert-file and --tls-key-file)"


def test_an_import_without_the_client_certificate_a_catalog_requires_says_it_may_be_wanted(mtls_catalog, pki, tmp_path):  # noqa: F811
    """gRPC says only "Socket closed": the catalog closes the connection after the TLS handshake, as a server going
    away would, so the upsert is still retried (--retries, about 1.5 minutes by default); every retry and the final
    failure named no cause."""
    token_file = tmp_path / "token"
    token_file.write_text(pki.tokens["writer"] + "\n")
    flags = ["--tls-ca-file", pki.path("ca.pem"), "--token-file", str(token_file)]
    code, output, _ = _run(_command("import", mtls_catalog.address, tmp_path, *flags, "--retries", "2"))
    assert code == 1, output
    retries = [line for line in output.splitlines() if "; retry " in line]
    assert len(retries) == 2 and all("Socket closed " + MTLS_HINT in line for line in retries), output
    assert "retry 2/2 in" in retries[-1], output
    assert f"Socket closed {MTLS_HINT}\nstopped; no row was done yet" in output, output
    # As the hint says: with the client certificate, the import goes through (with vectors: this catalog has no encoder).
    with_vectors = tmp_path / "with-vectors.jsonl"
    with_vectors.write_text("".join(json.dumps({"item_id": f"v{n}", "title": "scarf", "vector": [1.0, 0.5, 0.25, 0.125]}) + "\n" for n in range(ITEMS)))
    client_certificate = ["--tls-cert-file", pki.path("client.pem"), "--tls-key-file", pki.path("client-key.pem")]
    code, output, _ = _run([sys.executable, "-m", "whisperlite", "catalog", "import", str(with_vectors), "--catalog", mtls_catalog.address,
                            *flags, *client_certificate])  # fmt: skip
    assert code == 0 and f"imported {ITEMS} items" in output, output


@pytest.mark.parametrize("name", ["count", "get", "delete", "export"])
def test_every_catalog_command_without_the_client_certificate_a_catalog_requires_says_it_may_be_wanted(mtls_catalog, pki, tmp_path, name):  # noqa: F811
    arguments = {"get": ["i0"], "delete": ["i0"], "export": [str(tmp_path / "items.jsonl")]}.get(name, [])
    flags = ["--catalog", mtls_catalog.address, "--tls-ca-file", pki.path("ca.pem")]
    code, output, _ = _run([sys.executable, "-m", "whisperlite", "catalog", name, *arguments, *flags])
    assert code == 1 and "UNAVAILABLE" in output and MTLS_HINT in output, output


def test_an_ingest_without_the_client_certificate_a_catalog_requires_says_it_may_be_wanted(mtls_catalog, pki, tmp_path):  # noqa: F811
    """ingest fails when it cannot reach the catalog (15 s), with gRPC's words alone ("Socket closed")."""
    code, output, _ = _run(_command("ingest", mtls_catalog.address, tmp_path, "--tls-ca-file", pki.path("ca.pem")))
    assert code == 1 and "not reachable within" in output and MTLS_HINT in output, output


def test_a_catalog_not_listening_is_not_blamed_on_a_client_certificate(pki):  # noqa: F811
    nowhere = f"127.0.0.1:{free_port()}"
    code, output, _ = _run([sys.executable, "-m", "whisperlite", "catalog", "count", "--catalog", nowhere, "--tls-ca-file", pki.path("ca.pem")])
    assert code == 1 and "Connection refused" in output and "mTLS" not in output, output


# ---- the decision and the schedule, without a server --------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "transient"),
    [
        (Unavailable("catalog at host:1: UpsertItems failed: UNAVAILABLE: restarting"), True),
        (DownstreamBusy("catalog at host:1: UpsertItems failed: DEADLINE_EXCEEDED: slow"), True),
        (CredentialsRefused("catalog at host:1", "UpsertItems", "UNAUTHENTICATED: unknown or revoked bearer token"), False),
        (ResponseTooLarge("catalog at host:1: UpsertItems refused: over the limit"), False),
        (InvalidArgument("items[0].title: too long"), False),
        (FailedPrecondition("catalog at host:1: UpsertItems failed: UNIMPLEMENTED: another service"), False),
    ],
    ids=["unavailable", "busy", "credentials-refused", "too-large", "invalid", "deployment-fault"],
)
def test_only_a_failure_that_a_wait_may_cure_is_transient(failure, transient):
    assert is_transient(failure) is transient


def test_the_schedule_doubles_its_waits_up_to_the_maximum_and_waits_at_least_a_busy_service_s_hint():
    schedule = RetrySchedule(DEFAULT_RETRIES)
    plain = Unavailable("restarting")
    assert [schedule.next_wait(plain) for _ in range(DEFAULT_RETRIES + 1)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, None]
    assert schedule.retried == DEFAULT_RETRIES

    hinted = RetrySchedule(3)
    assert hinted.next_wait(DownstreamBusy("shedding", retry_after_ms=2500)) == 2.5  # longer than the backoff's 0.5 s
    assert hinted.next_wait(DownstreamBusy("shedding", retry_after_ms=100)) == 1.0  # shorter: the backoff's
    assert hinted.next_wait(DownstreamBusy("shedding", retry_after_ms=3_600_000)) == MAX_RETRY_WAIT_SECONDS


async def test_a_readiness_wait_stops_at_a_refused_token_and_waits_for_a_service_still_starting():
    """A service's start-up waits for its dependencies by the same decision (wait_until_ready)."""
    refusals = []

    async def refused():
        refusals.append(1)
        raise CredentialsRefused("catalog at host:1", "GetStats", "UNAUTHENTICATED: unknown or revoked bearer token")

    with pytest.raises(CredentialsRefused):
        await wait_until_ready(refused, 30)
    assert len(refusals) == 1

    answers = iter([Unavailable("catalog at host:1: GetStats failed: UNAVAILABLE: still opening its store"), "ready"])

    async def starting():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await wait_until_ready(starting, 30) == "ready"
