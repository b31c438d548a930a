"""Load shedding: a bound on in-flight work, a short FIFO queue, and a quick refusal past both.

A service that queues without bound answers everyone late once callers outnumber what it can
compute: every latency grows with the number of callers until deadlines fail. Here at most
`max_in_flight` calls run at once, at most `max_queued` more wait (each no longer than
`max_queue_wait_seconds` or its own deadline), and any further call is refused at once with
RESOURCE_EXHAUSTED, so accepted calls keep a bounded latency and the refused ones can back off
or go to another replica.

Refusing has to stay cheap, or the refusals themselves eat the CPU the admitted calls need: a
refusal sends nothing but its status (no per-call log line, no headers frame), its trailer says
when to retry (RETRY_AFTER_KEY: about how long the work ahead of it takes to drain), so callers
that honour it stop hammering, and the log gets one summary line per interval instead of a line
per refused call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from whisperlite.core.errors import Overloaded, Unavailable
from whisperlite.services.common.logs import ThrottledWarning

IN_FLIGHT = Gauge("whisperlite_admission_in_flight", "Calls running past admission control.", ["grpc_service"])
QUEUED = Gauge("whisperlite_admission_queued", "Calls waiting for an in-flight slot.", ["grpc_service"])
REFUSED = Counter(
    "whisperlite_admission_refused_total", "Calls refused by admission control, by reason.", ["grpc_service", "reason"]
)

log = logging.getLogger("whisperlite.admission")

SHED_LOG_INTERVAL_SECONDS = 10.0
# The retry hint's floor (its ceiling is the queue wait): a hint of 0 would invite the same burst again.
MIN_RETRY_AFTER_MS = 10


class LoadShed(Overloaded):
    """A call refused by admission control, with the retry hint its RETRY_AFTER_KEY trailer carries."""


@dataclass(frozen=True)
class AdmissionLimits:
    max_in_flight: int = 16
    max_queued: int = 32
    max_queue_wait_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight: must be >= 1, got {self.max_in_flight}")
        if self.max_queued < 0:
            raise ValueError(f"max_queued: must be >= 0, got {self.max_queued}")
        if self.max_queue_wait_seconds < 0:
            raise ValueError(f"max_queue_wait_seconds: must be >= 0, got {self.max_queue_wait_seconds}")


class Admission:
    """Admits calls of one gRPC service (health checks and reflection never pass through it)."""

    def __init__(self, limits: AdmissionLimits, service: str):
        self.limits = limits
        self._service = service
        # asyncio.Semaphore wakes its waiters in arrival order, which makes the queue FIFO.
        self._slots = asyncio.Semaphore(limits.max_in_flight)
        self._queued = 0
        self._mean_call_seconds = 0.0  # moving average of admitted calls' durations (retry hint)
        self._shed_log = ThrottledWarning(log, "shedding load", SHED_LOG_INTERVAL_SECONDS)
        self._draining = False
        self._admitted_or_waiting = 0
        self._idle = asyncio.Event()

    @contextlib.asynccontextmanager
    async def admit(self, deadline_seconds: float | None) -> AsyncIterator[None]:
        """Holds an in-flight slot for the body; raises ResourceExhausted when none comes in time, Unavailable while
        the server drains."""
        if self._draining:
            raise Unavailable(f"the {self._service} server is shutting down: retry, at another replica if there is one")
        self._admitted_or_waiting += 1
        try:
            if self._slots.locked():
                await self._wait_for_slot(deadline_seconds)
            else:
                await self._slots.acquire()
            IN_FLIGHT.labels(self._service).inc()
            started = time.perf_counter()
            try:
                yield
            finally:
                IN_FLIGHT.labels(self._service).dec()
                self._slots.release()
                elapsed = time.perf_counter() - started
                self._mean_call_seconds += 0.05 * (elapsed - self._mean_call_seconds)
        finally:
            self._admitted_or_waiting -= 1
            if not self._admitted_or_waiting:
                self._idle.set()

    async def drain(self, timeout_seconds: float) -> None:
        """From now on refuses new calls with UNAVAILABLE, which callers' channels retry (another replica, or the
        restarted server), and returns once the calls admitted or queued have ended, or after `timeout_seconds`.

        gRPC's own stop() ends the calls it has received but not yet handed to a handler with a bare CANCELLED: under
        load, up to 23 of 32 callers' calls at a SIGTERM, which HTTP callers got as a 499 blaming them. Stopped once
        drained, the server holds next to none such."""
        self._draining = True
        if self._admitted_or_waiting:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_seconds)

    def retry_after_ms(self) -> int:
        """About when a call arriving now would find room: the queue ahead drained at the current pace."""
        drain_ms = 1e3 * (self._queued + 1) * self._mean_call_seconds / self.limits.max_in_flight
        return int(max(MIN_RETRY_AFTER_MS, min(drain_ms, 1e3 * self.limits.max_queue_wait_seconds)))

    def _refuse(self, reason: str, message: str) -> "LoadShed":
        REFUSED.labels(self._service, reason).inc()
        self._shed_log.record(
            reason, grpc_service=self._service, max_in_flight=self.limits.max_in_flight, max_queued=self.limits.max_queued
        )
        return LoadShed(message, self.retry_after_ms())

    async def _wait_for_slot(self, deadline_seconds: float | None) -> None:
        limits = self.limits
        if self._queued >= limits.max_queued:
            raise self._refuse(
                "queue_full",
                f"server overloaded: {limits.max_in_flight} calls in flight and {limits.max_queued} queued "
                "(--max-in-flight, --max-queued); retry after the retry-after-ms trailer's delay or at another replica",
            )
        wait = limits.max_queue_wait_seconds if deadline_seconds is None else min(limits.max_queue_wait_seconds, deadline_seconds)
        self._queued += 1
        QUEUED.labels(self._service).inc()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=wait)
        except TimeoutError:
            raise self._refuse(
                "queue_timeout",
                f"server overloaded: no in-flight slot freed within {wait * 1e3:.0f} ms "
                "(--max-queue-wait-ms or the call's deadline); retry after the retry-after-ms trailer's delay or at another replica",
            ) from None
        finally:
            self._queued -= 1
            QUEUED.labels(self._service).dec()
