"""Load shedding: a bound on in-flight work, a short FIFO queue, and a quick refusal past both.

A service that queues without bound answers everyone late once callers outnumber what it can
compute: every latency grows with the number of callers until deadlines fail. Here at most
`max_in_flight` calls run at once, at most `max_queued` more wait (each no longer than
`max_queue_wait_seconds` or its own deadline), and any further call is refused at once with
RESOURCE_EXHAUSTED, so accepted calls keep a bounded latency and the refused ones can back off
or go to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from whisperlite.core.errors import ResourceExhausted

IN_FLIGHT = Gauge("whisperlite_admission_in_flight", "Calls running past admission control.", ["grpc_service"])
QUEUED = Gauge("whisperlite_admission_queued", "Calls waiting for an in-flight slot.", ["grpc_service"])
REFUSED = Counter(
    "whisperlite_admission_refused_total", "Calls refused by admission control, by reason.", ["grpc_service", "reason"]
)


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

    @contextlib.asynccontextmanager
    async def admit(self, deadline_seconds: float | None) -> AsyncIterator[None]:
        """Holds an in-flight slot for the body; raises ResourceExhausted when none comes in time."""
        if self._slots.locked():
            await self._wait_for_slot(deadline_seconds)
        else:
            await self._slots.acquire()
        IN_FLIGHT.labels(self._service).inc()
        try:
            yield
        finally:
            IN_FLIGHT.labels(self._service).dec()
            self._slots.release()

    async def _wait_for_slot(self, deadline_seconds: float | None) -> None:
        limits = self.limits
        if self._queued >= limits.max_queued:
            REFUSED.labels(self._service, "queue_full").inc()
            raise ResourceExhausted(
                f"server overloaded: {limits.max_in_flight} calls in flight and {limits.max_queued} queued "
                "(--max-in-flight, --max-queued); retry with backoff or another replica"
            )
        wait = limits.max_queue_wait_seconds if deadline_seconds is None else min(limits.max_queue_wait_seconds, deadline_seconds)
        self._queued += 1
        QUEUED.labels(self._service).inc()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=wait)
        except TimeoutError:
            REFUSED.labels(self._service, "queue_timeout").inc()
            raise ResourceExhausted(
                f"server overloaded: no in-flight slot freed within {wait * 1e3:.0f} ms "
                "(--max-queue-wait-ms or the call's deadline); retry with backoff or another replica"
            ) from None
        finally:
            self._queued -= 1
            QUEUED.labels(self._service).dec()
