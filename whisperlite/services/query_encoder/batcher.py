"""Micro-batching with a cost budget and two lanes: merge inputs of concurrent requests into
model calls whose cost is bounded, with bulk requests in a lane of their own.

A request's inputs wait at most `max_wait_s` for company; a batch closes early once its lane holds
`max_batch_size` inputs. A batch holds at most `max_batch_size` inputs and costs at most
`max_batch_cost` (inputs x the costliest input: a padded batch of tokens), so one model call takes
a bounded time; a request larger than one batch is split across several. Interactive and bulk
requests are batched apart, each lane on its own model thread when given a `bulk_executor`: a
shopper's query then never waits for a bulk batch to finish (on a CPU the two share the cores;
one bulk batch of long texts alone takes longer than a whole Recommend call). Without one, bulk
batches run on the interactive thread and a query waits for at most one of them. The event loop
keeps accepting requests while batches are computed.
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


@dataclass
class _Lane(Generic[T]):
    executor: concurrent.futures.Executor
    queue: collections.deque[_Pending[T]] = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None

    def queued_inputs(self) -> int:
        return sum(pending.waiting for pending in self.queue)


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
        bulk_executor: concurrent.futures.Executor | None = None,
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
        self._kind = kind
        self._interactive: _Lane[T] = _Lane(executor)
        self._bulk: _Lane[T] = _Lane(bulk_executor or executor)
        # With one executor the lanes share its thread: bulk batches then go only when no query waits.
        self._shared_thread = bulk_executor is None
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for name, lane in (("interactive", self._interactive), ("bulk", self._bulk)):
            lane.worker = asyncio.create_task(self._run(lane), name=f"micro-batcher-{self._kind}-{name}")

    async def close(self) -> None:
        for lane in (self._interactive, self._bulk):
            if lane.worker is not None:
                lane.worker.cancel()
                try:
                    await lane.worker
                except asyncio.CancelledError:
                    pass
                lane.worker = None
            while lane.queue:
                pending = lane.queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("encoder is shutting down"))
        self._started = False

    async def submit(self, inputs: Sequence[T], costs: Sequence[int] | None = None, bulk: bool = False) -> np.ndarray:
        """Embed `inputs` (in order) as part of whatever batches form around them.

        `costs` (one per input, e.g. its token count; 1 each when omitted) must each fit
        `max_batch_cost`; `bulk` requests go to the bulk lane.
        """
        if not self._started:
            raise RuntimeError("MicroBatcher.start() was not called")
        if not inputs:
            raise ValueError("inputs: at least one is required")
        costs = [1] * len(inputs) if costs is None else list(costs)
        if len(costs) != len(inputs):
            raise ValueError(f"costs: {len(costs)} given for {len(inputs)} inputs")
        if self._max_batch_cost is not None and max(costs) > self._max_batch_cost:
            raise ValueError(f"costs: an input costs {max(costs)}, over the batch budget of {self._max_batch_cost}")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        lane = self._bulk if bulk else self._interactive
        lane.queue.append(_Pending(inputs, costs, future))
        lane.wakeup.set()
        return await future

    async def _run(self, lane: _Lane[T]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not lane.queue:
                lane.wakeup.clear()
                await lane.wakeup.wait()
            deadline = loop.time() + self._max_wait_s
            while lane.queued_inputs() < self._max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                lane.wakeup.clear()
                try:
                    await asyncio.wait_for(lane.wakeup.wait(), remaining)
                except TimeoutError:
                    break
            if lane is self._bulk and self._shared_thread:
                await self._interactive_idle()
            batch = self._take_batch(lane.queue)
            await self._compute(batch, lane.executor, loop)

    async def _interactive_idle(self) -> None:
        # Sharing one model thread, a bulk batch is handed to it only while no query waits for it.
        while self._interactive.queue:
            await asyncio.sleep(self._max_wait_s or 0.001)

    def _fits(self, count: int, costliest: int) -> bool:
        return count <= self._max_batch_size and (self._max_batch_cost is None or count * costliest <= self._max_batch_cost)

    def _take_batch(self, queue: collections.deque[_Pending[T]]) -> list[_Slice[T]]:
        """Inputs in queue order while the batch stays within size and cost."""
        batch: list[_Slice[T]] = []
        count, costliest = 0, 0
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
                break  # the batch is full
            queue.popleft()
        return batch

    async def _compute(self, batch: list[_Slice[T]], executor: concurrent.futures.Executor, loop: asyncio.AbstractEventLoop) -> None:
        if not batch:
            return
        # Identical inputs in concurrent requests (a popular query) are computed once.
        unique = list(dict.fromkeys(item for part in batch for item in part.pending.inputs[part.start : part.end]))
        BATCH_SIZE.labels(self._kind).observe(len(unique))
        BATCH_COST.labels(self._kind).observe(len(unique) * max(part.pending.costs[i] for part in batch for i in range(part.start, part.end)))
        started = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(executor, self._encode, unique)
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
