"""Failing fast on a dependency that is known to be down.

A service's watch (services/common/probing.py: the ranker's of its encoder and catalog, the gateway's of the ranker
and the catalog) finds a dependency down by its failed health checks. Until then a call that needs it waits its whole
deadline for an answer that does not come, and holds an admission slot meanwhile: under load the slots fill with such
calls and requests that need no dependency (a query text in the ranker's cache) are refused as "overloaded". From the
moment the watch reports the outage, a call that needs the dependency fails at once with UNAVAILABLE naming it and why.

A busy dependency can miss health checks and still answer calls, so the watch's word alone does not stop the
calls: any answer from the dependency after the outage began (a result, or an error about the request) ends
failing fast for it, as the next passing health check does.

Calls already waiting on the dependency when the outage begins are told too (`on_outage`): they would otherwise
keep their admission slots until their deadline, past the moment the service knows no answer is coming.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from whisperlite.core.errors import Unavailable

T = TypeVar("T")


@dataclass(frozen=True)
class Outage:
    since: float
    reason: str


class Outages:
    def __init__(self, watcher: str, clock: Callable[[], float] = time.monotonic):
        self._watcher = watcher  # the service whose checks found the outage, as refusals name it: "ranker"
        self._clock = clock
        self._down: dict[str, Outage] = {}
        self._last_answer: dict[str, float] = {}
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._waiting: dict[str, dict[asyncio.Future, str]] = {}  # calls in `during`, by dependency: what else is served
        self._let_go: dict[asyncio.Future, Unavailable] = {}  # calls an outage cancelled: what their callers get

    async def during(self, name: str, start: Callable[[], Awaitable[T]], still_served: str = "") -> T:
        """`await start()`, refused with Unavailable while `name` is down, and let go with it (the call cancelled) when
        an outage of `name` begins before the answer comes."""
        self.check(name, still_served)
        call = asyncio.ensure_future(start())
        waiting = self._waiting.setdefault(name, {})
        waiting[call] = still_served
        try:
            return await call  # a cancelled caller cancels the call with it
        except BaseException:  # the client under `start` may turn its cancellation into an error of its own
            refusal = self._let_go.pop(call, None)
            if refusal is None:
                raise
            raise refusal from None
        finally:
            waiting.pop(call, None)
            self._let_go.pop(call, None)

    def on_outage(self, name: str, listener: Callable[[], None]) -> None:
        """`listener()` runs each time an outage of `name` begins."""
        self._listeners.setdefault(name, []).append(listener)

    def begin(self, name: str, reason: str) -> None:
        """The watch found `name` down (`reason` names its address and the failed check)."""
        if name not in self._down:
            self._down[name] = Outage(self._clock(), reason)
            for call, still_served in self._waiting.get(name, {}).items():
                if not call.done():
                    self._let_go[call] = self.refusal(name, still_served)
                    call.cancel()
            for listener in self._listeners.get(name, ()):
                listener()

    def end(self, name: str) -> None:
        """`name` passes its health checks again."""
        self._down.pop(name, None)

    def answered(self, name: str) -> None:
        """A call to `name` got an answer: it is alive, whatever its health checks say."""
        self._last_answer[name] = self._clock()

    def check(self, name: str, still_served: str = "") -> None:
        """Raises Unavailable when `name` is down and has not answered since; `still_served` tells the caller
        what the service still answers without it."""
        if (refusal := self.refusal(name, still_served)) is not None:
            raise refusal

    def refusal(self, name: str, still_served: str = "") -> Unavailable | None:
        """What `check` raises, or None."""
        outage = self._down.get(name)
        if outage is None or self._last_answer.get(name, float("-inf")) >= outage.since:
            return None
        age = self._clock() - outage.since
        return Unavailable(
            f"{outage.reason} (down for {age:.1f} s by the {self._watcher}'s health checks: not called until it answers again"
            + (f"; {still_served}" if still_served else "")
            + ")"
        )
