"""Structured (JSON lines) logging shared by every service."""

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from whisperlite.core.request_context import current_request_id


class RequestContextFilter(logging.Filter):
    """Adds the request id (and, when tracing is on, the trace id) of the call being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        if request_id:
            record.request_id = request_id
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = trace.format_trace_id(span_context.trace_id)
        return True


def configure_logging(level: str = "INFO", service: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service} if service else None,
        )
    )
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    grpc_core = logging.getLogger(GRPC_CORE_LOGGER)
    if not any(isinstance(present, UndecodableMetadataFilter) for present in grpc_core.filters):  # configured again
        grpc_core.addFilter(UndecodableMetadataFilter())


# gRPC's Cython layer logs, at ERROR with a traceback, every request metadata value that is not UTF-8, the value
# itself in the message: a bearer token with one stray byte was written to the log in full, two lines per call, by
# anyone who reached the port (the call itself is refused UNAUTHENTICATED by the auth interceptor).
GRPC_CORE_LOGGER = "grpc._cython.cygrpc"
UNDECODABLE_METADATA = "Invalid encoding on"


class UndecodableMetadataFilter(logging.Filter):
    """Drops gRPC's lines that quote a metadata value it cannot decode; says how many there were instead, at most one
    WARNING per interval and never the value."""

    def __init__(self):
        super().__init__()
        self._summary = ThrottledWarning(
            logging.getLogger("whisperlite.server"),
            "request metadata values that are not UTF-8 were left out of the log (gRPC quotes them, tokens included)",
        )

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(UNDECODABLE_METADATA):
            return True
        self._summary.record("metadata value not UTF-8")
        return False


class ThrottledWarning:
    """One WARNING per interval for a burst of like events, with their counts by kind since the last line: a flood of
    refused calls (load shed, bad tokens) wrote a line per call, 570 bytes each, as fast as a client could send."""

    def __init__(self, logger: logging.Logger, message: str, interval_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._message = message
        self._interval = interval_seconds
        self._clock = clock
        self._unlogged: Counter[str] = Counter()
        self._last = -interval_seconds

    def record(self, kind: str, **extra) -> None:
        """Counts one event; logs (with `extra`, the latest event's details) when the interval has passed."""
        self._unlogged[kind] += 1
        now = self._clock()
        if now - self._last >= self._interval:
            self._logger.warning(self._message, extra={"refused": dict(self._unlogged), **extra})
            self._unlogged.clear()
            self._last = now
