"""Failing fast on a dependency the watch found down (services/common/outages.py), without gRPC."""

import asyncio

import pytest

from whisperlite.core.errors import Unavailable
from whisperlite.services.common.outages import Outages
from whisperlite.services.ranker.dependency_watch import CATALOG, QUERY_ENCODER


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_dependency_down_fails_at_once_naming_it_until_it_answers_or_passes_its_checks():
    clock = Clock()
    outages = Outages("ranker", clock)
    outages.check(CATALOG)  # nothing known down: no refusal
    outages.answered(CATALOG)
    clock.now += 1
    outages.begin(CATALOG, "catalog at db:50052: health check failed: DEADLINE_EXCEEDED")
    clock.now += 2.5
    outages.begin(CATALOG, "catalog at db:50052: health check failed: UNAVAILABLE")  # the outage keeps its start
    with pytest.raises(Unavailable) as refused:
        outages.check(CATALOG)
    assert str(refused.value).startswith("catalog at db:50052: health check failed: DEADLINE_EXCEEDED (down for 2.5 s")
    outages.check(QUERY_ENCODER)  # the other dependency is not held back by this one's outage

    with pytest.raises(Unavailable, match="query texts in the cache are still answered"):
        outages.begin(QUERY_ENCODER, "query encoder at enc:50051: health NOT_SERVING")
        outages.check(QUERY_ENCODER, still_served="query texts in the cache are still answered")

    outages.answered(CATALOG)  # a busy catalog that misses its health checks but answers calls is not refused
    outages.check(CATALOG)
    outages.end(QUERY_ENCODER)
    outages.check(QUERY_ENCODER)


def test_an_outage_tells_its_listeners_once_when_it_begins():
    outages = Outages("ranker", Clock())
    heard = []
    outages.on_outage(CATALOG, lambda: heard.append(str(outages.refusal(CATALOG))))
    outages.begin(QUERY_ENCODER, "query encoder at e:50051: health check failed")
    assert heard == [] and outages.refusal(CATALOG) is None
    outages.begin(CATALOG, "catalog at db:50052: health check failed: DEADLINE_EXCEEDED")
    outages.begin(CATALOG, "catalog at db:50052: health check failed: UNAVAILABLE")  # the same outage goes on
    assert heard == ["catalog at db:50052: health check failed: DEADLINE_EXCEEDED (down for 0.0 s by the ranker's health checks: "
                     "not called until it answers again)"]
    outages.end(CATALOG)
    outages.begin(CATALOG, "catalog at db:50052: health check failed: UNAVAILABLE")  # a new outage
    assert len(heard) == 2


async def test_a_call_during_an_outage_is_refused_and_one_waiting_when_it_begins_is_let_go():
    outages = Outages("catalog")
    assert await outages.during(QUERY_ENCODER, lambda: asyncio.sleep(0, result="vectors")) == "vectors"
    never = asyncio.Event()
    started = []

    async def hangs():
        started.append(True)
        try:
            await never.wait()
        finally:
            started.append("cancelled")

    waiting = asyncio.ensure_future(outages.during(QUERY_ENCODER, hangs, still_served="reads are still answered"))
    other = asyncio.ensure_future(outages.during(CATALOG, lambda: asyncio.sleep(0.2, result="answered")))
    await asyncio.sleep(0.05)
    outages.begin(QUERY_ENCODER, "query encoder at e:50051: health check failed: DEADLINE_EXCEEDED")
    with pytest.raises(Unavailable, match=r"^query encoder at e:50051: .*; reads are still answered\)$"):
        await waiting
    assert started == [True, "cancelled"]  # the call itself was cancelled, not left running
    assert await other == "answered"  # a call to another dependency goes on
    with pytest.raises(Unavailable):
        await outages.during(QUERY_ENCODER, hangs)  # refused before it starts
    assert started == [True, "cancelled"]
    outages.end(QUERY_ENCODER)
    assert await outages.during(QUERY_ENCODER, lambda: asyncio.sleep(0, result="back")) == "back"


async def test_the_outage_refusal_wins_over_a_client_error_and_a_cancelled_caller_cancels_its_call():
    """A client may turn its own cancellation into an error (a gRPC wrapper's CANCELLED -> Unavailable of its own):
    the caller still learns of the outage. A caller cancelled for its own reasons is not told of any outage."""
    outages = Outages("gateway")

    async def maps_its_cancellation():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("the client's own word for a cancelled call") from None

    waiting = asyncio.ensure_future(outages.during(CATALOG, maps_its_cancellation))
    await asyncio.sleep(0.01)
    outages.begin(CATALOG, "catalog at db:50052: health check failed: UNAVAILABLE")
    with pytest.raises(Unavailable, match="^catalog at db:50052"):
        await waiting
    outages.end(CATALOG)

    cancelled = []

    async def hangs():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    caller = asyncio.ensure_future(outages.during(CATALOG, hangs))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cancelled == [True]
    outages.begin(CATALOG, "catalog at db:50052: health check failed: UNAVAILABLE")  # nothing is waiting any more
    assert outages._waiting[CATALOG] == {} and outages._let_go == {}
