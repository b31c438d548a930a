"""The ranker's Coalescer: concurrent calls share batches, and each caller gets its own call's answer."""

import asyncio

import pytest

from whisperlite.core.errors import InvalidArgument, ResponseTooLarge, Unavailable
from whisperlite.services.ranker.batching import Coalescer


class Doubler:
    """A batch function that doubles numbers after a short wait, refusing negative ones as bad input."""

    def __init__(self, fail_with: Exception | None = None):
        self.batches: list[list[int]] = []
        self.fail_with = fail_with
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, numbers: list[int]) -> list[int]:
        self.batches.append(list(numbers))
        await self.release.wait()
        await asyncio.sleep(0.01)
        if self.fail_with is not None:
            raise self.fail_with
        if any(n < 0 for n in numbers):
            raise InvalidArgument(f"numbers: {min(numbers)} is negative")
        return [2 * n for n in numbers]


async def test_an_idle_call_goes_alone_and_calls_arriving_meanwhile_go_together():
    doubler = Doubler()
    coalescer = Coalescer(doubler, max_batch=4, max_concurrent=1)
    assert await coalescer.call(1) == 2
    assert doubler.batches == [[1]]

    doubler.release.clear()
    first = asyncio.create_task(coalescer.call(10))
    await asyncio.sleep(0)  # the first call is out, alone
    rest = [asyncio.create_task(coalescer.call(n)) for n in range(11, 17)]
    await asyncio.sleep(0)
    doubler.release.set()
    assert await first == 20
    assert await asyncio.gather(*rest) == [22, 24, 26, 28, 30, 32]
    assert doubler.batches[1:] == [[10], [11, 12, 13, 14], [15, 16]]  # at most max_batch per call


async def test_bad_input_fails_only_its_own_call():
    doubler = Doubler()
    coalescer = Coalescer(doubler, max_batch=8, max_concurrent=1)
    doubler.release.clear()
    blocker = asyncio.create_task(coalescer.call(0))
    await asyncio.sleep(0)
    calls = [asyncio.create_task(coalescer.call(n)) for n in (1, -1, 2)]
    await asyncio.sleep(0)
    doubler.release.set()
    await blocker
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == 2 and results[2] == 4
    assert isinstance(results[1], InvalidArgument) and "-1 is negative" in str(results[1])
    assert [1, -1, 2] in doubler.batches and [-1] in doubler.batches  # the batch failed, then each went alone


class SizeLimited:
    """A batch function whose answer is refused, as the catalog refuses it, once its members' sizes pass a limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, sizes: list[int]) -> list[int]:
        self.batches.append(list(sizes))
        await self.release.wait()
        if sum(sizes) > self.limit:
            raise ResponseTooLarge(f"catalog: SearchBatch refused: the response would be {sum(sizes)} bytes, over {self.limit}")
        return sizes


async def test_members_whose_answers_together_pass_the_message_limit_each_get_their_own():
    """Eight searches of 300 each fit alone (and four by four), not together under 1,000: the batch is halved until
    they fit, and only a member too large on its own hears the refusal. It used to be every member's UNAVAILABLE."""
    limited = SizeLimited(limit=1000)
    coalescer = Coalescer(limited, max_batch=16, max_concurrent=1)
    blocker = asyncio.create_task(coalescer.call(1))
    await asyncio.sleep(0)
    sizes = [300, 300, 300, 300, 300, 300, 5000, 300]
    calls = [asyncio.create_task(coalescer.call(size)) for size in sizes]
    await asyncio.sleep(0)
    limited.release.set()
    assert await blocker == 1
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [result for i, result in enumerate(results) if i != 6] == [300] * 7
    assert isinstance(results[6], ResponseTooLarge) and "5000 bytes, over 1000" in str(results[6])
    assert sizes in limited.batches and [300, 300] in limited.batches and [5000] in limited.batches
    assert len(limited.batches) <= 1 + 2 * len(sizes)  # halving: a few calls more, not one per member after a failure


async def test_a_downstream_failure_reaches_every_member_and_a_cancelled_caller_leaves_the_rest_alone():
    doubler = Doubler(fail_with=Unavailable("catalog: Search failed: UNAVAILABLE"))
    coalescer = Coalescer(doubler, max_batch=8, max_concurrent=2)
    results = await asyncio.gather(*(coalescer.call(n) for n in range(5)), return_exceptions=True)
    assert all(isinstance(result, Unavailable) for result in results)

    healthy = Coalescer(Doubler(), max_batch=8, max_concurrent=1)
    calls = [asyncio.create_task(healthy.call(n)) for n in range(4)]
    await asyncio.sleep(0)
    calls[1].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == 0 and isinstance(results[1], asyncio.CancelledError) and results[2:] == [4, 6]


async def test_failing_all_releases_the_calls_out_and_queued_at_once_and_later_calls_go_on():
    """The dependency's outage began: calls waiting on a batch that will not answer before its deadline are failed
    then, freeing their admission slots; what the hung batch answers later is dropped."""
    doubler = Doubler()
    doubler.release.clear()
    coalescer = Coalescer(doubler, max_batch=2, max_concurrent=1, wait_seconds=30)
    calls = [asyncio.create_task(coalescer.call(n)) for n in range(5)]  # one batch out, the rest queued
    await asyncio.sleep(0.01)
    coalescer.fail_all(Unavailable("query encoder at e:50051: health check failed"))
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=1)
    assert all(isinstance(result, Unavailable) and "health check failed" in str(result) for result in results), results
    doubler.release.set()  # the hung batch answers after all: nobody is left to hear it
    assert await asyncio.wait_for(coalescer.call(7), timeout=5) == 14


async def test_a_call_queued_behind_hanging_batches_fails_within_its_own_wait():
    """A frozen dependency: the batches out never answer, and a call queued behind them must not wait for
    them to give up and then for its own batch (twice the deadline)."""
    hanging = Doubler()
    hanging.release.clear()
    coalescer = Coalescer(hanging, max_batch=8, max_concurrent=1, wait_seconds=0.3, name="catalog at here:1: SearchBatch")
    loop = asyncio.get_running_loop()
    first = asyncio.ensure_future(coalescer.call(1))
    await asyncio.sleep(0.15)
    queued_at = loop.time()
    with pytest.raises(Unavailable, match=r"^catalog at here:1: SearchBatch: no answer within 0\.3 s \(--deadline-seconds\)"):
        await coalescer.call(2)
    assert loop.time() - queued_at < 0.45  # its own 0.3 s, not the 0.15 s left of the batch ahead plus 0.3 s
    with pytest.raises(Unavailable):
        await first
    # The first batch was cancelled when its one caller left (at 0.3 s), which freed its slot for the queued call.
    assert hanging.batches == [[1], [2]]
    hanging.release.set()
    await asyncio.sleep(0.05)
    assert await coalescer.call(3) == 6  # the hanging batch came back: calls flow again


async def test_a_batch_nobody_waits_for_is_cancelled_and_its_slot_freed():
    """A caller's deadline passing (the ranker's handler cancelled) used to leave its batch running downstream to the
    client's own timeout, holding one of the few batch slots; a batch with a caller still waiting goes on."""
    hanging = Doubler()
    hanging.release.clear()
    cancelled: list[list[int]] = []

    async def run_batch(numbers: list[int]) -> list[int]:
        try:
            return await hanging(numbers)
        except asyncio.CancelledError:
            cancelled.append(numbers)
            raise

    coalescer = Coalescer(run_batch, max_batch=8, max_concurrent=1)
    alone = asyncio.ensure_future(coalescer.call(1))
    await asyncio.sleep(0.05)
    shared = [asyncio.ensure_future(coalescer.call(n)) for n in (2, 3)]  # queued behind the one slot
    await asyncio.sleep(0.05)
    assert hanging.batches == [[1]]
    alone.cancel()
    await asyncio.sleep(0.05)
    assert cancelled == [[1]] and hanging.batches == [[1], [2, 3]]  # the slot went at once to the queued calls
    shared[0].cancel()
    await asyncio.sleep(0.05)
    assert cancelled == [[1]]  # 3 still waits for the batch it shares with 2
    hanging.release.set()
    assert await shared[1] == 6


async def test_a_batch_ends_by_the_latest_of_its_callers_deadlines():
    from whisperlite.core.request_context import bind_deadline, current_deadline

    seen: list[float | None] = []
    release = asyncio.Event()

    async def run_batch(numbers: list[int]) -> list[int]:
        seen.append(current_deadline())
        await release.wait()
        return numbers

    coalescer = Coalescer(run_batch, max_batch=8, max_concurrent=1)

    async def call_by(deadline: float | None, n: int) -> int:
        bind_deadline(deadline)  # as the server interceptor does, in this call's own task
        return await coalescer.call(n)

    async def batch_behind_one(deadlines: list[float | None]) -> None:
        release.clear()
        first = asyncio.ensure_future(call_by(100.0, 0))
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(call_by(deadline, n)) for n, deadline in enumerate(deadlines, start=1)]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(first, *queued)

    await batch_behind_one([50.0, 200.0, 120.0])
    await batch_behind_one([50.0, None])
    # the lone call's deadline, the queued batch's latest; a batch with a caller that set none is bounded by nothing
    assert seen == [100.0, 200.0, 100.0, None]


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        Coalescer(Doubler(), max_batch=0, max_concurrent=1)
    with pytest.raises(ValueError, match="max_concurrent"):
        Coalescer(Doubler(), max_batch=1, max_concurrent=0)
    with pytest.raises(ValueError, match="wait_seconds"):
        Coalescer(Doubler(), max_batch=1, max_concurrent=1, wait_seconds=0)
