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
