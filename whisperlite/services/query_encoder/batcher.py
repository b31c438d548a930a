"""Micro-batching with a cost budget and two priorities: merge inputs of concurrent requests into
model calls whose cost is bounded, serving interactive requests ahead of bulk ones.

A request's inputs wait at most `max_wait_s` for company; a batch closes early once the queue holds
`max_batch_size` inputs. A batch holds at most `max_batch_size` inputs and costs at most
`max_batch_cost` (inputs x the costliest input: a padded batch of tokens), so one model call takes
a bounded time. A request larger than one batch is split across several, and between any two of
its batches the interactive queue goes first: a bulk embed of thousands of long texts delays a
shopper's query by one batch, not by the whole bulk request. The model runs on one worker thread,
so the event loop keeps accepting requests while a batch is being computed.
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

from whisperlite.services.query_encoder.metrics import BATCH_COST, BATCH_SIZE, INFERENCE_SECONDS

T = TypeVar("T", bound=Hashable)


@dataclass
class _Pending(Generic[T]):
    inputs: Sequence[T]
    costs: Sequence[int]
    future: asyncio.Future[np.ndarray] = field(repr=False)
    taken: int = 0  # inputs handed to a batch so far (a request is split in order)
    parts: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # start offset -> vectors
    computed: int = 0

    @property
    def waiting(self) -> int:
        return len(self.inputs) - self.taken


@dataclass(frozen=True)
class _Slice(Generic[T]):
    pending: _Pending[T]
    start: int
    end: int


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
        max_batch_cost: int | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait: must be >= 0, got {max_wait_s}")
        if max_batch_cost is not None and max_batch_cost < 1:
            raise ValueError(f"max_batch_cost: must be >= 1, got {max_batch_cost}")
        self._encode = encode
        self._max_batch_size = max_batch_size
        self._max_batch_cost = max_batch_cost
        self._max_wait_s = max_wait_s
        self._executor = executor
        self._kind = kind
        self._interactive: collections.deque[_Pending[T]] = collections.deque()
        self._bulk: collections.deque[_Pending[T]] = collections.deque()
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
        for queue in (self._interactive, self._bulk):
            while queue:
                pending = queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("encoder is shutting down"))

    async def submit(self, inputs: Sequence[T], costs: Sequence[int] | None = None, bulk: bool = False) -> np.ndarray:
        """Embed `inputs` (in order) as part of whatever batches form around them.

        `costs` (one per input, e.g. its token count; 1 each when omitted) must each fit
        `max_batch_cost`; `bulk` requests are served only when no interactive one waits.
        """
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if not inputs:
            raise ValueError("inputs: at least one is required")
        costs = [1] * len(inputs) if costs is None else list(costs)
        if len(costs) != len(inputs):
            raise ValueError(f"costs: {len(costs)} given for {len(inputs)} inputs")
        if self._max_batch_cost is not None and costs and max(costs) > self._max_batch_cost:
            raise ValueError(f"costs: an input costs {max(costs)}, over the batch budget of {self._max_batch_cost}")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        (self._bulk if bulk else self._interactive).append(_Pending(inputs, costs, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not (self._interactive or self._bulk):
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
        return sum(pending.waiting for queue in (self._interactive, self._bulk) for pending in queue)

    def _fits(self, count: int, costliest: int) -> bool:
        return count <= self._max_batch_size and (self._max_batch_cost is None or count * costliest <= self._max_batch_cost)

    def _take_batch(self) -> list[_Slice[T]]:
        """Inputs in queue order while the batch stays within size and cost: interactive ones when
        any wait (never topped up with bulk inputs, which would make the query's own call as slow
        as a bulk one), else bulk ones."""
        batch: list[_Slice[T]] = []
        count, costliest = 0, 0
        for queue in (self._interactive, self._bulk):
            if batch:
                return batch
            while queue:
                pending = queue[0]
                if pending.future.done():  # cancelled by its caller, or failed in an earlier batch
                    queue.popleft()
                    continue
                start = pending.taken
                while pending.taken < len(pending.inputs):
                    cost = max(costliest, pending.costs[pending.taken])
                    if not self._fits(count + 1, cost):
                        break
                    count, costliest = count + 1, cost
                    pending.taken += 1
                if pending.taken > start:
                    batch.append(_Slice(pending, start, pending.taken))
                if pending.waiting:
                    return batch  # the batch is full
                queue.popleft()
        return batch

    async def _compute(self, batch: list[_Slice[T]], loop: asyncio.AbstractEventLoop) -> None:
        if not batch:
            return
        # Identical inputs in concurrent requests (a popular query) are computed once.
        unique = list(dict.fromkeys(item for part in batch for item in part.pending.inputs[part.start : part.end]))
        BATCH_SIZE.labels(self._kind).observe(len(unique))
        BATCH_COST.labels(self._kind).observe(len(unique) * max(part.pending.costs[i] for part in batch for i in range(part.start, part.end)))
        started = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(self._executor, self._encode, unique)
        except (Exception, asyncio.CancelledError) as error:
            # Every waiter must learn about the failure (or the shutdown) instead of hanging.
            for part in batch:
                if not part.pending.future.done():
                    part.pending.future.set_exception(error if isinstance(error, Exception) else RuntimeError("encoder is shutting down"))
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        finally:
            INFERENCE_SECONDS.labels(self._kind).observe(time.perf_counter() - started)
        row = {item: index for index, item in enumerate(unique)}
        for part in batch:
            pending = part.pending
            if pending.future.done():
                continue
            pending.parts[part.start] = vectors[[row[item] for item in pending.inputs[part.start : part.end]]]
            pending.computed += part.end - part.start
            if pending.computed == len(pending.inputs):
                pending.future.set_result(np.concatenate([pending.parts[start] for start in sorted(pending.parts)]))
