"""A deadline on request headers: uvicorn has none, so a client sending its headers a byte at a time (slowloris)
held a connection, and its file descriptor, for as long as it liked (each byte also restarts uvicorn's keep-alive
timer). Here a request's headers must be complete within --header-timeout-seconds of the connection opening or of
the previous answer on it; past that the client gets 408 and the connection is closed, as nginx's
client_header_timeout does. A request whose headers came is not timed here: its body has --body-timeout-seconds.

The same protocol answers a request that is not valid HTTP/1.1 (a negative or repeated Content-Length, a bad chunk
size, no Host) in the gateway's JSON error shape with its security headers and a request id: uvicorn wrote
"Invalid HTTP request received." as plain text, a shape no client of the API parses and no log can be matched with.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import prometheus_client
from uvicorn.protocols.http.h11_impl import H11Protocol

from whisperlite.services.gateway.browsers import SECURITY_HEADERS
from whisperlite.core.request_context import REQUEST_ID_KEY
from whisperlite.services.gateway.status import error_body

NOT_HTTP = ("the request is not valid HTTP/1.1 (its request line, a header, Host, Content-Length or Transfer-Encoding "
            "framing): send it as an HTTP client library writes it")

HEADER_TIMEOUTS = prometheus_client.Counter(
    "whisperlite_gateway_header_timeouts_total", "Connections closed with 408 because a request's headers came too slowly."
)


def _closing_answer(status: str, code: grpc.StatusCode, message: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 answer written on the transport, below the app: the JSON error, the security headers, and
    `connection: close`."""
    body = json.dumps(error_body(code, message)).encode()
    head = [
        f"HTTP/1.1 {status}", "content-type: application/json", f"content-length: {len(body)}", "connection: close", *headers,
        *(f"{name.lower()}: {value}" for name, value in SECURITY_HEADERS.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def header_deadline_protocol(header_timeout_seconds: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with that deadline (uvicorn.Config(http=...) takes the class)."""
    if not 0 < header_timeout_seconds <= 3600:  # NaN too
        raise ValueError(f"header_timeout_seconds: must be between 0 and 3600, got {header_timeout_seconds}")
    message = f"request headers did not arrive within {header_timeout_seconds:g} s (--header-timeout-seconds)"
    answer = _closing_answer("408 Request Timeout", grpc.StatusCode.DEADLINE_EXCEEDED, message)

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _bytes_since_armed = 0

        def send_400_response(self, msg: str) -> None:
            self.transport.write(_closing_answer("400 Bad Request", grpc.StatusCode.INVALID_ARGUMENT, NOT_HTTP, f"{REQUEST_ID_KEY}: {uuid.uuid4().hex}"))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            self._bytes_since_armed += len(data)
            super().data_received(data)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()  # the next request on this connection

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._bytes_since_armed = 0
            self._header_timer = self.loop.call_later(header_timeout_seconds, self._header_deadline_passed, self.cycle)

        def _header_deadline_passed(self, cycle_when_armed) -> None:
            self._header_timer = None
            # A new request began since (its headers came), or the one armed with is still being answered
            # (a pipelined request started when the previous answer completed).
            if self.cycle is not cycle_when_armed or (self.cycle is not None and not self.cycle.response_complete):
                return
            if self.transport.is_closing():
                return
            if not self._bytes_since_armed:  # an idle connection: closed quietly, as the keep-alive timeout does
                self.timeout_keep_alive_handler()
                return
            HEADER_TIMEOUTS.inc()
            self.transport.write(answer)
            self.transport.close()

    return HeaderDeadlineProtocol
