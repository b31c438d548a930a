"""Micro-batching of the ranker's downstream calls: concurrent Recommends share encoder and catalog calls.

Each Recommend needs one Embed and one Search. Alone, each is a gRPC round trip plus a store query,
and their fixed costs (protobuf, the event loops, a Milvus call) outweigh the work; merged, one
Embed carries many texts and one SearchBatch runs one multi-vector Milvus search.

A `Coalescer` sends a call at once while fewer than `max_concurrent` batches are out, so an idle
ranker adds no wait; calls that arrive while they all are out leave together, up to `max_batch`,
when one comes back. Batches grow with the load and no timer is involved. A batch refused for what
its members ask (INVALID_ARGUMENT: one member's input; RESOURCE_EXHAUSTED with no retry hint: an answer
over the message limit, which their answers together may pass where each alone would not) is halved
until each refusal is one member's own, so each caller gets the answer its own call would have had;
any other error (UNAVAILABLE...) is every member's.

A batch's downstream call ends by the latest of its callers' deadlines, and a batch none of its callers waits for any
more is cancelled: a dependency does no work for callers who have gone, and the batch's slot is free at once.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from whisperlite.core.errors import DownstreamBusy, InvalidArgument, ResponseTooLarge
from whisperlite.core.request_context import bind_deadline, current_deadline

Q = TypeVar("Q")
R = TypeVar("R")


class Coalescer(Generic[Q, R]):
    def __init__(
        self, run_batch: Callable[[list[Q]], Awaitable[Sequence[R]]], *, max_batch: int, max_concurrent: int,
        wait_seconds: float | None = None, name: str = "batch",
    ):  # fmt: skip
        """`wait_seconds` bounds a call from its arrival, the wait for the batches ahead of it included (None:
        unbounded); a call past it fails DownstreamBusy naming `name`, e.g. "catalog at ...: SearchBatch"."""
        if max_batch < 1:
            raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent: must be >= 1, got {max_concurrent}")
        if wait_seconds is not None and wait_seconds <= 0:
            raise ValueError(f"wait_seconds: must be > 0, got {wait_seconds}")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        self._wait_seconds = wait_seconds
        self._name = name
        # Calls not sent yet: the query, its answer to be, its caller's deadline (time.monotonic(); None: none).
        self._waiting: collections.deque[tuple[Q, asyncio.Future[R], float | None]] = collections.deque()
        # The batches out, with their calls (the event loop keeps only weak references to tasks).
        self._batches: dict[asyncio.Task, list[asyncio.Future[R]]] = {}

    async def call(self, query: Q) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((query, future, current_deadline()))
        self._dispatch()
        try:
            # A caller that gives up (or times out here) cancels its future; its batch goes on for the others.
            return await asyncio.wait_for(future, self._wait_seconds)
        except TimeoutError:
            # Without this bound a call queued behind batches that hang (a frozen dependency) would wait for
            # them to time out and then for its own batch: twice the dependency's deadline.
            raise DownstreamBusy(
                f"{self._name}: no answer within {self._wait_seconds:g} s (--deadline-seconds), the wait for the batches ahead included"
            ) from None
        finally:
            if future.cancelled():  # this caller left: its batch may now be nobody's (an answered one has ended)
                self._cancel_unwanted_batches()

    def _dispatch(self) -> None:
        while self._waiting and len(self._batches) < self._max_concurrent:
            batch = []
            while self._waiting and len(batch) < self._max_batch:
                query, future, deadline = self._waiting.popleft()
                if not future.done():
                    batch.append((query, future, deadline))
            if not batch:
                return
            task = asyncio.create_task(self._run(batch))
            self._batches[task] = [future for _, future, _ in batch]
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._batches.pop(task, None)
        self._dispatch()

    def _cancel_unwanted_batches(self) -> None:
        for task, futures in self._batches.items():
            if all(future.done() for future in futures):
                task.cancel()

    def fail_all(self, error: Exception) -> None:
        """Fails every call waiting or out with `error` (their dependency is known to be down); the batches out, which
        nobody waits for any more, are cancelled."""
        for _, future, _ in self._waiting:
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        for futures in self._batches.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._cancel_unwanted_batches()

    async def _run(self, batch: list[tuple[Q, asyncio.Future[R], float | None]]) -> None:
        deadlines = [deadline for _, _, deadline in batch]
        bind_deadline(None if None in deadlines else max(deadlines))  # this task's own context: its downstream call's
        try:
            results = await self._answers([query for query, _, _ in batch])
        except asyncio.CancelledError:  # shutting down, or every caller has gone: no answer will come
            for _, future, _ in batch:
                future.cancel()
            raise
        for (_, future, _), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _answers(self, queries: list[Q]) -> list[R | Exception]:
        """Each query's answer or error (every member waits on its batch: each must hear how it ended)."""
        try:
            return list(await self._run_batch(queries))
        except (InvalidArgument, ResponseTooLarge) as refusal:
            if len(queries) == 1:
                return [refusal]
        except Exception as error:
            return [error] * len(queries)
        middle = len(queries) // 2
        first, second = await asyncio.gather(self._answers(queries[:middle]), self._answers(queries[middle:]))
        return first + second
