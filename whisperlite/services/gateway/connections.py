"""The gateway's HTTP/1.1 connections: uvicorn's h11 protocol, with the answers it leaves out or gives wrong. Every
answer written here is the gateway's JSON error with its security headers and a request id, and closes the connection.

A deadline on request headers: uvicorn has none, so a client sending its headers a byte at a time (slowloris) held a
connection, and its file descriptor, for as long as it liked (each byte also restarts uvicorn's keep-alive timer).
Here a request's headers must be complete within --header-timeout-seconds of the connection opening or of the
previous answer on it; past that the client gets 408, as nginx's client_header_timeout does. A request whose headers
came is not timed here: its body has --body-timeout-seconds.

A request head (request line and headers) of at most MAX_REQUEST_HEAD_BYTES: h11 refuses a head still incomplete past
it (uvicorn's h11_max_incomplete_event_size, which server.py sets), answered here 414 for a request line and 431 for
headers, where uvicorn answered 400; one that came whole past it, which h11 lets through, is refused the same way.

A chunk whose size line announces more than --max-body-bytes is refused with 413 at that line: the app counts a body's
bytes as they come (app.py), so the client had to send the limit's worth first.

A request that is not valid HTTP/1.1 (a negative or repeated Content-Length, a bad chunk size, no Host) gets 400:
uvicorn wrote "Invalid HTTP request received." as plain text, a shape no client of the API parses and no log can be
matched with.

Closing: a socket closed with the client's bytes unread sends a reset, which can take the answer with it, so a client
sending a 1 MB header met a reset. After these answers, and after the app's answer to a request whose body had not
all come (its 413 for a Content-Length over the limit), the gateway shuts its side and drops what the client still
sends, until it closes or LINGER_SECONDS pass (nginx's lingering close). uvicorn read such a body to its end, for as
long as the client sent it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from http import HTTPStatus

import grpc
import h11
import prometheus_client
from h11._readers import ChunkedReader
from uvicorn.protocols.http.h11_impl import H11Protocol

from whisperlite.services.gateway.browsers import API_ANSWER_HEADERS
from whisperlite.core.request_context import REQUEST_ID_KEY
from whisperlite.services.gateway.status import error_body

NOT_HTTP = ("the request is not valid HTTP/1.1 (its request line, a header, Host, Content-Length or Transfer-Encoding "
            "framing): send it as an HTTP client library writes it")
# Generous beside the API's longest requests (about 12 KiB: a 7,168-character Authorization, a 256-character item id
# %-escaped); nginx takes 32 KiB of headers by default, Envoy 60 KiB.
MAX_REQUEST_HEAD_BYTES = 64 * 1024
REQUEST_LINE_TOO_LONG = f"the request line is longer than the gateway's limit of {MAX_REQUEST_HEAD_BYTES} bytes: send long values in a JSON body"
HEADERS_TOO_LARGE = f"the request's headers are larger than the gateway's limit of {MAX_REQUEST_HEAD_BYTES} bytes"
LINGER_SECONDS = 5.0  # the most a closing connection drops what its client still sends (see Closing, above)
# Put in a request's ASGI scope when the connection answered it while the app was still reading it: (HTTP status,
# request id). The app's own answer then goes nowhere; it counts and logs this one, the answer the client got.
CONNECTION_ANSWER = "whisperlite.connection_answer"

HEADER_TIMEOUTS = prometheus_client.Counter(
    "whisperlite_gateway_header_timeouts_total", "Connections closed with 408 because a request's headers came too slowly."
)


def _closing_answer(status: HTTPStatus, code: grpc.StatusCode, message: str, request_id: str) -> bytes:
    """A whole HTTP/1.1 answer written on the transport, below the app: the JSON error, the security headers of the
    app's answers that are no page, the request id and `connection: close`."""
    body = json.dumps(error_body(code, message)).encode()
    head = [
        f"HTTP/1.1 {status.value} {status.phrase}", "content-type: application/json", f"content-length: {len(body)}",
        "connection: close", f"{REQUEST_ID_KEY}: {request_id}",
        *(f"{name.lower()}: {value}" for name, value in API_ANSWER_HEADERS.items()),
    ]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _head_bytes(scope: dict) -> tuple[int, int]:
    """(request line, whole head) in bytes of a request h11 has read, as a client writes them (give or take the
    spaces around header values, which h11 drops)."""
    target = len(scope["raw_path"]) + (len(scope["query_string"]) + 1 if scope["query_string"] else 0)
    request_line = len(scope["method"]) + 1 + target + len(" HTTP/1.1\r\n")
    return request_line, request_line + sum(len(name) + len(value) + len(": \r\n") for name, value in scope["headers"]) + len("\r\n")


def gateway_protocol(header_timeout_seconds: float, max_body_bytes: int) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with these answers (uvicorn.Config(http=...) takes the class)."""
    if not 0 < header_timeout_seconds <= 3600:  # NaN too
        raise ValueError(f"header_timeout_seconds: must be between 0 and 3600, got {header_timeout_seconds}")
    header_timeout = f"request headers did not arrive within {header_timeout_seconds:g} s (--header-timeout-seconds)"

    class GatewayProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _bytes_since_armed = 0
        _closing_after: asyncio.TimerHandle | None = None  # set once answered and closing: what comes is dropped

        def data_received(self, data: bytes) -> None:
            if self._closing_after is not None:
                return
            self._bytes_since_armed += len(data)
            super().data_received(data)

        def handle_events(self) -> None:
            answering = self.cycle
            super().handle_events()
            if self._closing_after is not None or self.cycle is None or self.cycle.response_started:
                return
            if self.cycle is not answering:  # a new request's head came whole
                request_line, head = _head_bytes(self.cycle.scope)
                if head > MAX_REQUEST_HEAD_BYTES:
                    self._refuse_head(request_line_too_long=request_line > MAX_REQUEST_HEAD_BYTES)
                    return
            # h11 keeps the size a chunk's line announced to its reader (h11 is pinned in constraints.txt; a release
            # that moves it fails tests/test_gateway_oversized_input.py).
            reader = self.conn._reader
            if isinstance(reader, ChunkedReader) and reader._bytes_in_chunk > max_body_bytes:
                self._answer_and_close(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a request body chunk announces {reader._bytes_in_chunk} bytes still to come, more than the gateway's limit of "
                    f"{max_body_bytes} (--max-body-bytes)",
                )  # fmt: skip

        def send_400_response(self, msg: str) -> None:
            # uvicorn calls this inside its `except h11.RemoteProtocolError`, so the error is the one being handled.
            # h11 hints 431 only for an event still incomplete past the limit; while reading a body (a chunk's line,
            # trailers) it is no head.
            error = sys.exc_info()[1]
            reading_head = self.cycle is None or not self.cycle.more_body
            if getattr(error, "error_status_hint", 400) == 431 and reading_head:
                self._refuse_head(request_line_too_long=b"\n" not in self.conn.trailing_data[0])
            else:
                self._answer_and_close(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, NOT_HTTP)

        def _refuse_head(self, request_line_too_long: bool) -> None:
            if request_line_too_long:
                self._answer_and_close(HTTPStatus.REQUEST_URI_TOO_LONG, grpc.StatusCode.RESOURCE_EXHAUSTED, REQUEST_LINE_TOO_LONG)
            else:
                self._answer_and_close(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED, HEADERS_TOO_LARGE)

        def _answer_and_close(self, status: HTTPStatus, code: grpc.StatusCode, message: str) -> None:
            request_id = uuid.uuid4().hex
            self.transport.write(_closing_answer(status, code, message, request_id))
            if self.cycle is not None and not self.cycle.response_complete:
                # uvicorn's way of telling the app its client left: its reads end and its answer is dropped.
                self.cycle.scope[CONNECTION_ANSWER] = (status.value, request_id)  # type: ignore[typeddict-unknown-key]
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self._close_lingering()

        def _close_lingering(self) -> None:
            """Closes after the answer without a reset: the write side is shut (the client reads the answer, then its
            end) and what the client still sends is dropped until it closes, or for LINGER_SECONDS at most."""
            if self.transport.is_closing() or self._closing_after is not None:
                return
            self._unset_keepalive_if_required()
            if self._header_timer is not None:
                self._header_timer.cancel()
            self.transport.write_eof()  # plain TCP: the gateway's HTTP port has no TLS (a proxy in front adds it)
            self.flow.resume_reading()
            self._closing_after = self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request, and refuse it
            if self.transport.is_closing() or self._closing_after is not None:
                return
            if self.conn.their_state is h11.SEND_BODY:  # answered before its body came: it is not read
                self._close_lingering()
            else:
                self._arm_header_deadline()  # the next request on this connection

        def shutdown(self) -> None:
            if self._closing_after is not None:
                self.transport.close()
            else:
                super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._header_timer, self._closing_after):
                if timer is not None:
                    timer.cancel()
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
            if self.transport.is_closing() or self._closing_after is not None:
                return
            if not self._bytes_since_armed:  # an idle connection: closed quietly, as the keep-alive timeout does
                self.timeout_keep_alive_handler()
                return
            HEADER_TIMEOUTS.inc()
            self._answer_and_close(HTTPStatus.REQUEST_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED, header_timeout)

    return GatewayProtocol
