"""How a failed call to another WhisperLite service becomes this service's error: decided once.

- INVALID_ARGUMENT stays the caller's fault: the caller's own input was refused downstream.
- UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED with a retry hint (a busy service) may pass:
  UNAVAILABLE, so the caller retries later; the last two as DownstreamBusy (connected, but slow or shedding), which
  a service may report to its caller as its own overload.
- RESOURCE_EXHAUSTED without one (an answer over a message limit: the request asks too much) stays
  RESOURCE_EXHAUSTED with its message: a retry fails the same way, so the caller must ask for less.
- UNAUTHENTICATED and PERMISSION_DENIED (this service's own token refused) are UNAVAILABLE too, naming
  the token: the caller is not at fault, and the service's health turns NOT_SERVING (ranker).
- Anything else (UNIMPLEMENTED: an address that points at another service; FAILED_PRECONDITION;
  INTERNAL...) is a deployment fault no retry fixes: FAILED_PRECONDITION.

Which of those errors a caller may retry (`is_transient`), and after how long (`RetrySchedule`), is decided here too:
`catalog import` and `ingest` retry their upserts by them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from whisperlite.core.errors import (
    RETRY_AFTER_KEY, DownstreamBusy, FailedPrecondition, InvalidArgument, ResponseTooLarge, ServiceError, Unavailable,
)
from whisperlite.core.request_context import downstream_timeout

T = TypeVar("T")

# How long a timed-out call's follow-up, which asks the channel why it is not connected, may take.
WHY_NOT_CONNECTED_SECONDS = 2.0
# A call that failed transiently is made again after waits that double up to 30 s and sum to about 1.5 minutes over
# 8 retries: a service's restart and its store reopening fit.
DEFAULT_RETRIES = 8
FIRST_RETRY_WAIT_SECONDS = 0.5
MAX_RETRY_WAIT_SECONDS = 30.0
# A downstream's CANCELLED is the downstream's doing (this process's own cancellations raise CancelledError): a server
# stopping ends calls it had received but not started so. Another try, or replica, may answer.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})


class DownstreamClient:
    """What a service's client of another service keeps: how its errors name that service, and each call's deadline."""

    def __init__(self, kind: str, timeout_seconds: float, address: str = ""):
        self._timeout = timeout_seconds
        self._service = f"{kind} at {address}" if address else kind

    @property
    def service(self) -> str:
        """How errors name the service, e.g. "catalog at host:port"."""
        return self._service

    @property
    def timeout_seconds(self) -> float:
        return self._timeout

    def _call_timeout(self) -> float:
        """This call's timeout: the client's, or less when the caller being served will stop waiting sooner."""
        return downstream_timeout(self._timeout)


async def call_when_ready(call: Callable[[bool], Awaitable[T]], service: str, method: str) -> T:
    """`call(wait_for_ready=True)`: waits for a service not reachable yet. Failures become this service's error
    (`downstream_error`); when the wait times out, the channel is asked once more without waiting, since that
    answer names why it is not connected (a refused TLS handshake, a refused connection), where the timeout's
    "Deadline Exceeded" names nothing."""
    try:
        return await call(True)
    except grpc.aio.AioRpcError as error:
        failure = error
    if failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        try:  # briefly: a connected but slow service must not be waited for twice
            return await asyncio.wait_for(call(False), WHY_NOT_CONNECTED_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                failure = error
        except TimeoutError:
            pass
    raise downstream_error(service, method, failure) from None


def retry_after_seconds(error: grpc.RpcError) -> float | None:
    """The server's hint of when to retry a refused call (its retry-after-ms trailer), or None."""
    trailer = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    hint = dict(trailer or ()).get(RETRY_AFTER_KEY)
    return int(hint) / 1e3 if isinstance(hint, str) and hint.isdigit() else None


class CredentialsRefused(Unavailable):
    """The downstream service refused this service's own token: for this service's caller, that dependency is
    unavailable (503), and the caller is not to blame (a 400 or 401 would say it is)."""

    def __init__(self, service: str, method: str, refusal: str):
        super().__init__(
            f"{service}: {method} refused this service's own token ({refusal}); "
            "a deployment fault: check --downstream-token-file against that service's tokens file"
        )
        self.refusal = refusal  # e.g. "UNAUTHENTICATED: unknown or revoked bearer token"


def downstream_error(service: str, method: str, error: grpc.RpcError) -> ServiceError:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(details or f"{service} rejected the request")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return CredentialsRefused(service, method, f"{code.name}: {details}")
    retry_after = retry_after_seconds(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is None:
        return ResponseTooLarge(f"{service}: {method} refused: {details}")
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):  # connected, and slow or shedding
        return DownstreamBusy(f"{service}: {method} failed: {code.name}: {details}", None if retry_after is None else round(retry_after * 1e3))
    kind = Unavailable if code in TRANSIENT else FailedPrecondition
    return kind(f"{service}: {method} failed: {code.name}: {details}")


def is_transient(error: ServiceError) -> bool:
    """Whether the same call, made again a little later, may succeed: the downstream was unreachable, stopping, slow or
    shedding load (`downstream_error`'s Unavailable and DownstreamBusy). A refused token is Unavailable to this
    service's own caller, but no wait makes it good."""
    return isinstance(error, Unavailable) and not isinstance(error, CredentialsRefused)


class RetrySchedule:
    """The waits before each of up to `retries` retries of a call that failed transiently: doubling from
    FIRST_RETRY_WAIT_SECONDS up to MAX_RETRY_WAIT_SECONDS, and no shorter than a busy service's retry hint, which
    is honoured up to that maximum too (a hint of an hour must not stall a command)."""

    def __init__(self, retries: int = DEFAULT_RETRIES):
        self.retries = retries
        self.retried = 0
        self._backoff = FIRST_RETRY_WAIT_SECONDS

    def next_wait(self, error: ServiceError) -> float | None:
        """Seconds to wait before the next retry after `error`, which counts as made; None once the retries are spent."""
        if self.retried == self.retries:
            return None
        self.retried += 1
        wait, self._backoff = self._backoff, min(self._backoff * 2, MAX_RETRY_WAIT_SECONDS)
        if isinstance(error, DownstreamBusy) and error.retry_after_ms is not None:
            return min(max(wait, error.retry_after_ms / 1e3), MAX_RETRY_WAIT_SECONDS)
        return wait


async def wait_until_ready(call: Callable[[], Awaitable[T]], wait_seconds: float, on_wait: Callable[[str], None] | None = None) -> T:
    """`await call()`, again while it raises Unavailable (a service still starting or loading), for
    up to `wait_seconds`; then the last Unavailable is raised, saying how long it waited."""
    started = time.monotonic()
    while True:
        try:
            return await call()
        except Unavailable as error:
            if not is_transient(error):
                raise  # waiting does not make a refused token good: stop start-up now, saying so
            waited = time.monotonic() - started
            if waited >= wait_seconds:
                raise Unavailable(f"not ready after {waited:.0f} s: {error}") from None
            if on_wait is not None:
                on_wait(str(error))
            await asyncio.sleep(min(1.0, wait_seconds - waited))
