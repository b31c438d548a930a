"""The request id (x-request-id) and the deadline of the call being served, for logs and downstream calls.

A server interceptor binds the id from the caller's metadata (or mints one; an id given twice or breaking the rule is
refused); the internal clients send it on every downstream call, so one id names the whole request in every
service's logs. It binds the caller's deadline too, and the internal clients' calls end with it: a dependency stops
working for a caller who has given up instead of running on to the client's own timeout.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Sequence
from contextvars import ContextVar, Token

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# What a request id may be: carried unchanged by gRPC metadata, HTTP headers and log fields. The servers, the gateway
# and the clients refuse another, naming the rule.
REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")  # "orders/42" and base64 ids included
REQUEST_ID_RULE = f"must be 1 to {MAX_REQUEST_ID_CHARS} visible ASCII characters (no spaces)"

_request_id: ContextVar[str] = ContextVar("whisperlite_request_id", default="")
# When the caller of the call being served stops waiting, in time.monotonic() seconds (None: it set no deadline).
_deadline: ContextVar[float | None] = ContextVar("whisperlite_deadline", default=None)
# A downstream call is never given less than this: gRPC fails a zero or negative timeout before sending anything, and
# a caller whose deadline has passed is answered by its own server's timer.
MIN_DOWNSTREAM_SECONDS = 0.001


def current_request_id() -> str:
    """The id of the request being served ('' outside a request)."""
    return _request_id.get()


def request_id_problem(given: Sequence[str]) -> str | None:
    """Why the x-request-id values a request carries (its HTTP headers or gRPC metadata entries) cannot name it, or
    None (none given: one is minted)."""
    if len(given) > 1:  # which would count? Each reader may take another.
        return f"{REQUEST_ID_KEY}: given {len(given)} times; send it once (a request id names one request: logs and traces key on it)"
    if given and not REQUEST_ID.fullmatch(given[0]):
        return f"{REQUEST_ID_KEY}: {REQUEST_ID_RULE}, got {given[0][:40]!r}"
    return None


def bind_request_id(metadata: Iterable[tuple[str, str]] | None) -> tuple[str, Token, str | None]:
    """Binds the caller's x-request-id (or a new one) to the current context: (the id, the token to reset it with, why
    the caller's ids cannot be used or None). A call refused for its ids is bound a new one: its refusal and log line
    still carry an id."""
    given = [value for key, value in metadata or () if key == REQUEST_ID_KEY]
    problem = request_id_problem(given)
    request_id = given[0] if given and problem is None else uuid.uuid4().hex
    return request_id, _request_id.set(request_id), problem


def reset_request_id(token: Token) -> None:
    _request_id.reset(token)


def bind_deadline(deadline: float | None) -> Token:
    """Binds the deadline (time.monotonic() seconds, None: none) the current context's downstream calls end by."""
    return _deadline.set(deadline)


def deadline_from_now(time_remaining: float | None) -> float | None:
    """A server's time_remaining() as a deadline for bind_deadline."""
    return None if time_remaining is None else time.monotonic() + time_remaining


def current_deadline() -> float | None:
    return _deadline.get()


def reset_deadline(token: Token) -> None:
    _deadline.reset(token)


def downstream_timeout(timeout_seconds: float) -> float:
    """A downstream call's timeout: the client's own, cut to what is left of the current caller's deadline."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout_seconds
    return max(MIN_DOWNSTREAM_SECONDS, min(timeout_seconds, deadline - time.monotonic()))


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata that forwards the current request id downstream (none outside a request)."""
    request_id = _request_id.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else ()
