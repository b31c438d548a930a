"""Micro-batching: merge inputs of concurrent requests into one model call.

A request's inputs wait at most `max_wait_s` for company; a batch closes early once it holds
`max_batch_size` inputs. The model runs on one worker thread, so the event loop keeps accepting
requests (which then queue up for the next batch) while a batch is being computed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from whisperlite.services.query_encoder.metrics import BATCH_SIZE, INFERENCE_SECONDS

T = TypeVar("T", bound=Hashable)


@dataclass
class _Pending(Generic[T]):
    inputs: Sequence[T]
    future: asyncio.Future[np.ndarray] = field(repr=False)


class MicroBatcher(Generic[T]):
    """Collects `submit` calls and answers them from shared calls of `encode(inputs) -> (n, d)`."""

    def __init__(
        self,
        encode: Callable[[list[T]], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_s: float,
        executor: concurrent.futures.Executor,
        kind: str,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait: must be >= 0, got {max_wait_s}")
        self._encode = encode
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._executor = executor
        self._kind = kind
        self._queue: collections.deque[_Pending[T]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"micro-batcher-{self._kind}")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("encoder is shutting down"))

    async def submit(self, inputs: Sequence[T]) -> np.ndarray:
        """Embed `inputs` (in order) as part of whatever batch forms around them."""
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self._max_wait_s
            while self._queued_inputs() < self._max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            await self._compute(batch, loop)

    def _queued_inputs(self) -> int:
        return sum(len(pending.inputs) for pending in self._queue)

    def _take_batch(self) -> list[_Pending[T]]:
        # Whole requests only, so each request gets its answer from one model call; the first
        # request always goes even when it alone exceeds max_batch_size (the encoder chunks it).
        batch = [self._queue.popleft()]
        size = len(batch[0].inputs)
        while self._queue and size + len(self._queue[0].inputs) <= self._max_batch_size:
            pending = self._queue.popleft()
            batch.append(pending)
            size += len(pending.inputs)
        return [pending for pending in batch if not pending.future.cancelled()]

    async def _compute(self, batch: list[_Pending[T]], loop: asyncio.AbstractEventLoop) -> None:
        if not batch:
            return
        # Identical inputs in concurrent requests (a popular query) are computed once.
        unique = list(dict.fromkeys(item for pending in batch for item in pending.inputs))
        BATCH_SIZE.labels(self._kind).observe(len(unique))
        started = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(self._executor, self._encode, unique)
        except (Exception, asyncio.CancelledError) as error:
            # Every waiter must learn about the failure (or the shutdown) instead of hanging.
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error if isinstance(error, Exception) else RuntimeError("encoder is shutting down"))
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        finally:
            INFERENCE_SECONDS.labels(self._kind).observe(time.perf_counter() - started)
        row = {item: index for index, item in enumerate(unique)}
        for pending in batch:
            if not pending.future.done():
                pending.future.set_result(vectors[[row[item] for item in pending.inputs]])
