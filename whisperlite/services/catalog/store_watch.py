"""Watches the catalog's store while the service serves: a dead or wedged store turns health
NOT_SERVING at once, the store is reopened, and health turns SERVING again.

milvus-lite runs as a child process; when it dies (or stops answering) every pymilvus call fails
or hangs, while gRPC health would go on reporting SERVING. A cheap probe every interval finds it
within interval + probe timeout. If the store cannot be reopened in time the service exits non-zero,
so a supervisor (docker, Kubernetes, `whisperlite up`'s caller) restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from whisperlite.core.errors import ServiceError, Unavailable
from whisperlite.services.catalog import metrics
from whisperlite.services.catalog.catalog import Catalog
from whisperlite.services.common.server import HealthReport

log = logging.getLogger("whisperlite.catalog.store_watch")


@dataclass(frozen=True)
class StoreWatchSettings:
    probe_interval_seconds: float = 1.0
    probe_timeout_seconds: float = 2.0
    reopen_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("probe_interval_seconds", "probe_timeout_seconds", "reopen_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")


class StoreWatch:
    def __init__(self, catalog: Catalog, settings: StoreWatchSettings = StoreWatchSettings()):
        self._catalog = catalog
        self._settings = settings

    async def watch(self, health: HealthReport) -> None:
        while True:
            await asyncio.sleep(self._settings.probe_interval_seconds)
            reason = await self._catalog.probe_store(self._settings.probe_timeout_seconds)
            if reason is None:
                continue
            log.error("store down: health NOT_SERVING until it is reopened", extra={"reason": reason})
            self._catalog.mark_store_down(reason)
            await health.set_serving(False)
            metrics.STORE_UP.set(0)
            seconds = await self._reopen()
            metrics.STORE_UP.set(1)
            metrics.STORE_REOPENS.inc()
            await health.set_serving(True)
            log.warning("store reopened: health SERVING", extra={"seconds_down": round(seconds, 3)})

    async def _reopen(self) -> float:
        started = time.monotonic()
        backoff = 0.2
        while True:
            try:
                await self._catalog.reopen_store()
                return time.monotonic() - started
            except ServiceError as error:
                waited = time.monotonic() - started
                if waited >= self._settings.reopen_timeout_seconds:
                    # Ends serve() and the process (non-zero, with this reason) for a supervisor to restart.
                    raise Unavailable(
                        f"the store could not be reopened within {waited:.0f} s (--store-reopen-timeout-seconds): {error}"
                    ) from None
                log.warning("store reopen failed; retrying", extra={"reason": str(error), "retry_in_seconds": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
