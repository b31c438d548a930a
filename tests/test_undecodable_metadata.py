"""Request metadata that is not UTF-8, sent as raw HTTP/2 to a real catalog with a tokens file: gRPC's Python client
refuses to send such bytes, so the frames are written here (cleartext HTTP/2 with prior knowledge, headers as HPACK
literals). gRPC's Cython layer logged each such value at ERROR, quoted, with a traceback: a token with one stray byte
went into the log in full, two lines per call."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.servers import start_catalog

TOKEN = "secret-token-abcdefghijklmnopqrstuvwxyz0123456789"
CALLS = 40


def _length(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix."""
    if value < 127:
        return bytes([value])
    out, value = [127], value - 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes([*out, value])


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _call(port: int, path: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """One unary call with an empty message; returns what the server sent until its status."""
    pseudo = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"localhost")]
    fields = [*pseudo, (b"content-type", b"application/grpc"), (b"te", b"trailers"), *headers]
    block = b"".join(b"\x00" + _length(len(name)) + name + _length(len(value)) + value for name, value in fields)
    message = b"\x00" + struct.pack(">I", 0)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"") + _frame(1, 4, 1, block) + _frame(0, 1, 1, message))
        received, deadline = b"", time.monotonic() + 10
        while b"grpc-status" not in received and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


@pytest.fixture(scope="module")
def catalog_with_tokens(tmp_path_factory):
    directory = tmp_path_factory.mktemp("catalog")
    (directory / "tokens.txt").write_text(f"{TOKEN} recommend\n")
    service = start_catalog(
        directory / "logs", directory / "data", "", "--dimension", "4", "--encoder-model", "test-vectors",
        "--auth-tokens-file", str(directory / "tokens.txt"),
    )  # fmt: skip
    yield service
    service.stop()


def test_a_token_that_is_not_utf8_is_refused_and_never_written_to_the_log(catalog_with_tokens):
    before = catalog_with_tokens.log()
    for _ in range(CALLS):
        answer = _call(catalog_with_tokens.port, b"/whisperlite.v1.CatalogService/GetStats", [(b"authorization", b"Bearer t\xf6k\xe9n" + TOKEN.encode())])
        assert b"grpc-status\x0216" in answer, answer[-300:]  # UNAUTHENTICATED
    time.sleep(0.5)
    written = catalog_with_tokens.log()[len(before):]
    assert TOKEN not in written and "Invalid encoding" not in written and "Traceback" not in written, written[-2000:]
    summaries = [line for line in written.splitlines() if "not UTF-8" in line]
    assert 1 <= len(summaries) <= 2, summaries  # one WARNING per 10 s, counting
