"""The gateway's SIGTERM: refuse new requests with 503 while those in flight finish, then stop uvicorn, and exit 0.

uvicorn alone closed the listener at the signal: a request sent just after it met a refused connection, or one
accepted on a kept-alive connection was closed unanswered (ReadError), and the process ended by re-raising the signal
(exit -15), where the gRPC services drain (`services/common/admission.py`) and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from types import FrameType

import uvicorn

SHUTTING_DOWN = "the gateway is shutting down: retry, at another replica if there is one"
# Between closing the listener and closing the connections: a connection accepted just before the listener closed
# sends its request within it and is answered (503), where uvicorn closed it at once and its request was dropped.
SETTLE_SECONDS = 0.3


class Drain:
    """Counts the requests in flight and says when the gateway drains; the app's middleware reads and updates it."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def request(self):
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def wait_idle(self, timeout_seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)


class DrainingServer(uvicorn.Server):
    """At the first SIGTERM or SIGINT the gateway drains (`Drain`) for at most `grace_seconds`, then uvicorn stops as
    it would have at once; a second signal stops it at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_seconds: float):
        super().__init__(config)
        self._drain = drain
        self._grace_seconds = grace_seconds
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals: it would raise the signal again once stopped (exit -15).
        if self._drain.draining or self._loop is None:
            self.should_exit = True
            if sig == signal.SIGINT and self._drain.draining:
                self.force_exit = True
            return
        self._drain.draining = True
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._stop_once_drained()))

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()
        await asyncio.sleep(SETTLE_SECONDS)
        await super().shutdown(sockets=sockets)

    async def _stop_once_drained(self) -> None:
        await self._drain.wait_idle(self._grace_seconds)
        self.should_exit = True
