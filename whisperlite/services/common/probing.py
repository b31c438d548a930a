"""Health checks of a dependency, repeated while a service serves: the ranker's of its query encoder and catalog,
the gateway's of the ranker and the catalog. A dependency is down after `failures_to_trip` failed checks in a row,
and up again at the first check that passes.

While it is up a check starts every interval whether or not the last one has answered: a frozen dependency (its
connections open, nothing answering, as under SIGSTOP) then fails a check each interval once the first times out, and
is found down within timeout + interval, inside a 5 s call deadline with the defaults (when each check waited for the
last, two rounds took ~6 s and the calls of those seconds waited out their deadline). While it is down one check is out
at a time (the newest of those out at the trip), started DOWN_PROBE_INTERVAL_SECONDS after the last answered: a frozen
dependency that resumes answers the check it holds at once, and a restarted one is found within that interval rather
than a whole interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from whisperlite.services.common.outages import Outages

# How soon a down dependency is checked again after its last check answered (the channel's reconnect backoff,
# core/channels.py, is as short).
DOWN_PROBE_INTERVAL_SECONDS = 0.1


@dataclass(frozen=True)
class ProbeSettings:
    probe_interval_seconds: float = 1.0
    probe_timeout_seconds: float = 2.0
    # One slow check of a busy dependency is not an outage; this many failed checks in a row are.
    failures_to_trip: int = 2

    def __post_init__(self) -> None:
        for name in ("probe_interval_seconds", "probe_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.failures_to_trip < 1:
            raise ValueError(f"failures_to_trip: must be >= 1, got {self.failures_to_trip}")


@dataclass
class ProbeCount:
    """One dependency's checks so far: failed in a row, and whether that has tripped (down until a check passes)."""

    failures_to_trip: int
    failures: int = 0
    down: bool = False

    def add(self, failed: bool) -> None:
        self.failures = self.failures + 1 if failed else 0
        if self.failures >= self.failures_to_trip:
            self.down = True
        elif not self.failures:
            self.down = False


async def keep_probing(
    probe: Callable[[], Awaitable[str | None]], settings: ProbeSettings, record: Callable[[str | None], Awaitable[bool]]
) -> None:
    """Runs until cancelled. `probe()` says why the dependency failed a check (None: it passed; it must return within
    the probe timeout); `record(reason)` is given each answer in the order the checks started, and says whether the
    dependency is down now."""
    loop = asyncio.get_running_loop()
    in_flight: dict[asyncio.Task, int] = {}  # each check's start order
    started = 0
    down = False
    next_start = loop.time() + settings.probe_interval_seconds
    down_interval = min(DOWN_PROBE_INTERVAL_SECONDS, settings.probe_interval_seconds)
    try:
        while True:
            if (not down or not in_flight) and loop.time() >= next_start:
                in_flight[asyncio.ensure_future(probe())] = started
                started += 1
                next_start = loop.time() + (down_interval if down else settings.probe_interval_seconds)
            if not in_flight:
                await asyncio.sleep(max(0.0, next_start - loop.time()))
                continue
            # Down: wait for the one check's answer (its timeout bounds the wait). Up: also for the next start.
            timeout = None if down else max(0.0, next_start - loop.time())
            done, _ = await asyncio.wait(set(in_flight), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for check in sorted(done, key=in_flight.__getitem__):
                if check not in in_flight:
                    continue  # cancelled below, at the trip
                del in_flight[check]
                down = await record(check.result())
                if down:
                    next_start = loop.time() + down_interval
                    # The newest check held is the one a resuming dependency answers first; the older ones would only
                    # time out after it.
                    for older in sorted(in_flight, key=in_flight.__getitem__)[:-1]:
                        older.cancel()
                        del in_flight[older]
    finally:
        for check in in_flight:
            check.cancel()


async def answers_health_checks(stub: health_pb2_grpc.HealthStub, service: str, settings: ProbeSettings) -> str | None:
    """A probe for `keep_probing` that fails only when the dependency answers nothing (no connection, no answer within
    the probe timeout): NOT_SERVING is an answer, as is an error of its own (a server without the health service). For
    callers that still have use for a dependency that reports NOT_SERVING (a ranker whose encoder is down still answers
    texts in its cache) and only need to stop waiting on one that cannot answer."""
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=settings.probe_timeout_seconds)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return f"health check failed: {error.code().name}: {error.details()}"
    return None


def outage_recorder(
    outages: Outages, name: str, address: str, settings: ProbeSettings, on_down: Callable[[str], None], on_up: Callable[[], None]
) -> Callable[[str | None], Awaitable[bool]]:
    """A `record` for `keep_probing` that begins and ends `name`'s outage in `outages` (calls to it then fail at once,
    and those waiting are let go), with `on_down(reason)` and `on_up()` once at each turn (the log lines)."""
    count = ProbeCount(settings.failures_to_trip)

    async def record(reason: str | None) -> bool:
        was_down = count.down
        count.add(failed=reason is not None)
        if count.down:
            outages.begin(name, f"{name} at {address}: {reason}")
            if not was_down:
                on_down(reason)
        elif was_down:
            outages.end(name)
            on_up()
        return count.down

    return record
