"""The request id (x-request-id) of the call being served, for logs and downstream calls.

A server interceptor binds it from the caller's metadata (or mints one); the internal clients send
it on every downstream call, so one id names the whole request in every service's logs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from contextvars import ContextVar, Token

REQUEST_ID_KEY = "x-request-id"
# Longer ids are replaced by a minted one rather than logged and forwarded at any length.
MAX_REQUEST_ID_CHARS = 128

_request_id: ContextVar[str] = ContextVar("whisperlite_request_id", default="")


def current_request_id() -> str:
    """The id of the request being served ('' outside a request)."""
    return _request_id.get()


def bind_request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, Token]:
    """Binds the caller's x-request-id (or a new one) to the current context; reset with the token."""
    given = next((value for key, value in metadata or () if key == REQUEST_ID_KEY), "")
    if isinstance(given, bytes) or not given or len(given) > MAX_REQUEST_ID_CHARS or not given.isprintable():
        given = uuid.uuid4().hex
    return given, _request_id.set(given)


def reset_request_id(token: Token) -> None:
    _request_id.reset(token)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata that forwards the current request id downstream (none outside a request)."""
    request_id = _request_id.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else ()
