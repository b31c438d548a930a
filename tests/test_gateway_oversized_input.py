"""Oversized HTTP input, sent as raw bytes over loopback to a real gateway: a body announced over --max-body-bytes (by its
Content-Length or by a chunk-size line) and a request head over the gateway's head limit are answered at once, in the
JSON error shape with a request id, and the connection is closed without a reset; the gateway keeps serving. Every
answer the connection writes itself (these, 400 for invalid HTTP, 408) carries the security headers of the app's answers.

The gateway here has no upstreams: every answer under test is its own.
"""

import json
import re
import select
import socket
import time

import httpx
import pytest

from whisperlite.services.gateway.browsers import NOTHING_POLICY
from whisperlite.services.gateway.connections import MAX_REQUEST_HEAD_BYTES
from tests.servers import free_port, launch_gateway

MAX_BODY_BYTES = 1000
HEADER_TIMEOUT_SECONDS = 3  # long enough for the heads sent below in 1 KiB pieces on a loaded machine
ONE_MB = 1024 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    nowhere = f"127.0.0.1:{free_port()}"  # no ranker or catalog: the gateway answers these requests itself
    state = tmp_path_factory.mktemp("state")
    service = launch_gateway(tmp_path_factory.mktemp("logs"), nowhere, nowhere, state, "--max-body-bytes", str(MAX_BODY_BYTES),
                             "--header-timeout-seconds", str(HEADER_TIMEOUT_SECONDS))
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{service.port}/health/liveness", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or service.process.poll() is not None:
            service.stop()
            raise RuntimeError(f"gateway did not start:\n{service.log()[-3000:]}")
        time.sleep(0.3)
    yield service
    service.stop()


def _answer_until_closed(sock: socket.socket, within_seconds: float) -> tuple[bytes, bool, float]:
    """(what came, whether the gateway closed its side cleanly, seconds taken), reading until the gateway's end of
    stream or `within_seconds`. A reset raises ConnectionResetError: the connection must close without one."""
    started, received = time.monotonic(), b""
    while (left := started + within_seconds - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        chunk = sock.recv(65536)
        if not chunk:
            return received, True, time.monotonic() - started
        received += chunk
    return received, False, time.monotonic() - started


def _refusal(received: bytes) -> tuple[int, dict[str, str], dict]:
    """(status, headers, JSON body) of a raw answer."""
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    return int(status_line.split(" ")[1]), headers, json.loads(body)


def _count(gateway, status: int) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{gateway.port}/metrics", timeout=30).text
    found = re.search(rf'^whisperlite_gateway_requests_total\{{method="POST",route="/v1/recommend",status="{status}"\}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _still_serving(gateway) -> None:
    liveness = httpx.get(f"http://127.0.0.1:{gateway.port}/health/liveness", timeout=30)  # a new connection
    assert (liveness.status_code, liveness.json()) == (200, {"status": "SERVING"})


CHUNKED_HEAD = b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("together", [True, False], ids=["size-line-with-the-head", "size-line-after-the-head"])
def test_a_chunk_announcing_more_than_the_limit_is_413_at_its_size_line(gateway, together):
    """It was refused only once the limit's worth of bytes had come: a client announcing FFFFFFF (268 MB) and sending
    nothing more waited for the body timeout (60 s), its connection held all along."""
    counted = _count(gateway, 413), _count(gateway, 499)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        if together:
            sock.sendall(CHUNKED_HEAD + b"FFFFFFF\r\n")
        else:  # the app is already waiting for the body when the size line comes
            sock.sendall(CHUNKED_HEAD)
            time.sleep(0.3)
            sock.sendall(b"FFFFFFF\r\n")
        received, closed, seconds = _answer_until_closed(sock, within_seconds=1.0)
    assert received.startswith(b"HTTP/1.1 413 "), received[:300]
    assert closed and seconds < 1.0, (closed, seconds)
    status, headers, body = _refusal(received)
    assert body == {"error": {"code": "RESOURCE_EXHAUSTED", "message": "a request body chunk announces 268435455 bytes still "
                              f"to come, more than the gateway's limit of {MAX_BODY_BYTES} (--max-body-bytes)"}}
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]) and headers["connection"] == "close"
    assert headers["x-content-type-options"] == "nosniff"
    # Counted (and logged) as the answer the client got, not as a client that left.
    assert (_count(gateway, 413), _count(gateway, 499)) == (counted[0] + 1, counted[1])
    _still_serving(gateway)


def test_chunks_within_the_limit_are_read(gateway):
    """A chunked body within --max-body-bytes reaches the route (here: 503, no ranker), not a refusal of its size."""
    body = b'{"query": "boots", "top_k": 1}'
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(CHUNKED_HEAD + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        received, _, _ = _answer_until_closed(sock, within_seconds=10.0)
    assert received.startswith(b"HTTP/1.1 503 "), received[:300]


def test_a_content_length_over_the_limit_is_413_at_once_and_the_connection_closed(gateway):
    """It was answered at once, but the connection stayed open while the gateway read and dropped the body, for as long
    as the client sent it (up to the 1 GB it announced)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
        received, closed, seconds = _answer_until_closed(sock, within_seconds=1.0)
    assert received.startswith(b"HTTP/1.1 413 "), received[:300]
    assert closed and seconds < 1.0, (closed, seconds)
    _, headers, body = _refusal(received)
    assert body["error"] == {"code": "RESOURCE_EXHAUSTED",
                             "message": f"request body of 1000000000 bytes is larger than the gateway's limit of {MAX_BODY_BYTES} (--max-body-bytes)"}
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    _still_serving(gateway)


def test_a_client_still_sending_its_refused_body_reads_the_answer_and_a_clean_close(gateway):
    """Closing a socket with the client's bytes unread sends a reset, which can take the answer with it: the gateway
    shuts its side after the answer and drops what the client still sends until it closes."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
        sock.sendall(b" " * (4 * ONE_MB))  # a client that sends its whole body before it reads
        received, closed, seconds = _answer_until_closed(sock, within_seconds=3.0)
    assert received.startswith(b"HTTP/1.1 413 "), received[:300]
    assert closed and seconds < 3.0, (closed, seconds)  # at the answer, not when uvicorn's keep-alive timer (5 s) fires
    _still_serving(gateway)


@pytest.mark.parametrize(
    ("head", "status", "message"),
    [
        (b"GET /health/liveness HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * ONE_MB + b"\r\n\r\n", 431,
         f"the request's headers are larger than the gateway's limit of {MAX_REQUEST_HEAD_BYTES} bytes"),
        (b"GET /health/liveness?q=" + b"a" * ONE_MB + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
         f"the request line is longer than the gateway's limit of {MAX_REQUEST_HEAD_BYTES} bytes: send long values in a JSON body"),
    ],
    ids=["1mb-header-line", "1mb-request-target"],
)
def test_a_1mb_head_is_answered_431_or_414_and_the_gateway_keeps_serving(gateway, head, status, message):
    """uvicorn answered it as any invalid request (400) and closed with the client's bytes unread: the client met a
    reset, and with it could lose the answer."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(head)
        received, closed, _ = _answer_until_closed(sock, within_seconds=10.0)
    assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:300]
    assert closed
    _, headers, body = _refusal(received)
    assert body == {"error": {"code": "RESOURCE_EXHAUSTED", "message": message}}
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]) and headers["x-content-type-options"] == "nosniff"
    _still_serving(gateway)


@pytest.mark.parametrize("in_pieces", [False, True], ids=["in-one-write", "in-1kb-pieces"])
def test_the_head_limit_holds_however_the_head_arrives(gateway, in_pieces):
    """h11 counts a head's bytes only while it is incomplete: a head past the limit passed when it came in one read and
    was refused when it came in several, as a client's network happened to cut it."""
    for header_bytes, status in ((MAX_REQUEST_HEAD_BYTES - 1024, 200), (MAX_REQUEST_HEAD_BYTES + 1024, 431)):
        head = b"GET /health/liveness HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Junk: " + b"a" * header_bytes + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pieces = [head[start : start + 1024] for start in range(0, len(head), 1024)] if in_pieces else [head]
            for piece in pieces:
                sock.sendall(piece)
                if in_pieces:
                    time.sleep(0.001)
            received, closed, _ = _answer_until_closed(sock, within_seconds=10.0)
        assert received.startswith(f"HTTP/1.1 {status} ".encode()) and closed, (header_bytes, received[:300])


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        (b"GET /health/liveness HTTP/1.1\r\nHost: x\r\nX-Slow: a", 408),  # the head never ends
        (CHUNKED_HEAD + b"FFFFFFF\r\n", 413),
        (b"GET /health/liveness?q=" + b"a" * ONE_MB + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /health/liveness HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * ONE_MB + b"\r\n\r\n", 431),
    ],
    ids=["invalid-http", "header-timeout", "chunk-over-the-limit", "request-line-too-long", "headers-too-large"],
)
def test_the_connection_s_own_answers_carry_the_api_s_security_headers(gateway, sent, status):
    """Written below the app, they had nosniff, X-Frame-Options, Referrer-Policy and COOP but no Content-Security-Policy,
    which every other answer that is not a page has (docs/security.md)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(sent)
        received, _, _ = _answer_until_closed(sock, within_seconds=HEADER_TIMEOUT_SECONDS + 10.0)
    assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:300]
    _, headers, _ = _refusal(received)
    assert headers["content-security-policy"] == NOTHING_POLICY
    assert (headers["x-content-type-options"], headers["x-frame-options"], headers["referrer-policy"], headers["cross-origin-opener-policy"]) == (
        "nosniff", "DENY", "no-referrer", "same-origin",
    )
