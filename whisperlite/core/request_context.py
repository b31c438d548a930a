"""The request id (x-request-id) of the call being served, for logs and downstream calls.

A server interceptor binds it from the caller's metadata (or mints one); the internal clients send
it on every downstream call, so one id names the whole request in every service's logs.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from contextvars import ContextVar, Token

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# What a request id may be: carried unchanged by gRPC metadata, HTTP headers and log fields. Servers replace
# another id with a minted one; the gateway and the clients refuse it, naming the rule.
REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")  # "orders/42" and base64 ids included
REQUEST_ID_RULE = f"must be 1 to {MAX_REQUEST_ID_CHARS} visible ASCII characters (no spaces)"

_request_id: ContextVar[str] = ContextVar("whisperlite_request_id", default="")


def current_request_id() -> str:
    """The id of the request being served ('' outside a request)."""
    return _request_id.get()


def bind_request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, Token]:
    """Binds the caller's x-request-id (or a new one) to the current context; reset with the token."""
    given = next((value for key, value in metadata or () if key == REQUEST_ID_KEY), "")
    if not isinstance(given, str) or not REQUEST_ID.fullmatch(given):
        given = uuid.uuid4().hex
    return given, _request_id.set(given)


def reset_request_id(token: Token) -> None:
    _request_id.reset(token)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata that forwards the current request id downstream (none outside a request)."""
    request_id = _request_id.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else ()
