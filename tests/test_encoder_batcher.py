"""MicroBatcher: merging concurrent submits, limits, deduplication and failure delivery."""

import asyncio
import concurrent.futures
import threading

import numpy as np
import pytest

from whisperlite.services.query_encoder.batcher import MicroBatcher


def expected(texts: list[str]) -> np.ndarray:
    return np.array([[len(t), sum(map(ord, t))] for t in texts], dtype=np.float32)


class RecordingEncoder:
    """A deterministic text -> vector function that records each call's inputs."""

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        if self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on!r}")
        return expected(texts)


@pytest.fixture
def executor():
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    yield pool
    pool.shutdown()


async def started(encode, executor, **kwargs):
    batcher = MicroBatcher(encode, executor=executor, kind="test", **{"max_batch_size": 8, "max_wait_s": 0.05, **kwargs})
    batcher.start()
    return batcher


async def test_concurrent_submits_share_one_model_call(executor):
    encode = RecordingEncoder()
    batcher = await started(encode, executor)
    texts = [f"query {i}" for i in range(5)]
    results = await asyncio.gather(*(batcher.submit([t]) for t in texts))
    await batcher.close()
    assert encode.calls == [texts]
    for text, result in zip(texts, results):
        np.testing.assert_array_equal(result, expected([text]))
    assert encode.threads == {"model_0"}  # off the event loop


async def test_batches_never_exceed_max_batch_size_and_keep_request_order(executor):
    encode = RecordingEncoder(delay_s=0.01)
    batcher = await started(encode, executor, max_batch_size=4)
    requests = [[f"r{r}-t{t}" for t in range(3)] for r in range(6)]
    results = await asyncio.gather(*(batcher.submit(texts) for texts in requests))
    await batcher.close()
    assert all(len(call) <= 4 for call in encode.calls)
    assert sorted(t for call in encode.calls for t in call) == sorted(t for r in requests for t in r)
    for texts, result in zip(requests, results):
        np.testing.assert_array_equal(result, expected(texts))


async def test_a_request_larger_than_the_batch_is_split_in_order(executor):
    encode = RecordingEncoder()
    batcher = await started(encode, executor, max_batch_size=2)
    big = [f"t{i}" for i in range(5)]
    result = await batcher.submit(big)
    await batcher.close()
    assert encode.calls == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    np.testing.assert_array_equal(result, expected(big))


async def test_batches_stay_within_the_cost_budget_counting_padding(executor):
    encode = RecordingEncoder()
    batcher = await started(encode, executor, max_batch_size=8, max_batch_cost=100)
    texts = [f"t{i}" for i in range(6)]
    # Padded cost is inputs x the costliest: 40 + 10 fit (2 x 40 = 80), a third 40 would not (120).
    result = await batcher.submit(texts, costs=[40, 10, 40, 10, 10, 10])
    await batcher.close()
    assert encode.calls == [["t0", "t1"], ["t2", "t3"], ["t4", "t5"]]
    np.testing.assert_array_equal(result, expected(texts))


async def test_sharing_one_thread_interactive_requests_go_between_the_batches_of_a_bulk_request(executor):
    encode = RecordingEncoder(delay_s=0.05)
    batcher = await started(encode, executor, max_batch_size=2, max_wait_s=0.0)
    bulk = asyncio.ensure_future(batcher.submit([f"bulk{i}" for i in range(8)], bulk=True))
    await asyncio.sleep(0.02)  # the first bulk batch is on the model thread
    query = await batcher.submit(["query"])
    bulk_done_when_query_answered = bulk.done()
    await bulk
    await batcher.close()
    assert not bulk_done_when_query_answered
    assert encode.calls[1] == ["query"]  # one bulk batch, then the query alone, then the rest
    np.testing.assert_array_equal(query, expected(["query"]))


async def test_with_a_bulk_thread_a_query_runs_beside_a_bulk_batch(executor):
    encode = RecordingEncoder(delay_s=0.3)
    running, most_running, lock = 0, 0, threading.Lock()

    def counting(texts: list[str]) -> np.ndarray:
        nonlocal running, most_running
        with lock:
            running += 1
            most_running = max(most_running, running)
        try:
            return encode(texts)
        finally:
            with lock:
                running -= 1

    bulk_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk")
    batcher = await started(counting, executor, max_batch_size=2, max_wait_s=0.0, bulk_executor=bulk_pool)
    bulk = asyncio.ensure_future(batcher.submit([f"bulk{i}" for i in range(4)], bulk=True))
    await asyncio.sleep(0.05)  # the first bulk batch is running on the bulk thread
    await batcher.submit(["query"])
    await bulk
    await batcher.close()
    bulk_pool.shutdown()
    assert most_running == 2  # the query did not wait for the bulk batch to finish
    assert encode.threads == {"model_0", "bulk_0"}


async def test_an_input_over_the_cost_budget_is_refused(executor):
    batcher = await started(RecordingEncoder(), executor, max_batch_cost=10)
    with pytest.raises(ValueError, match="over the batch budget of 10"):
        await batcher.submit(["long"], costs=[11])
    await batcher.close()


async def test_identical_inputs_of_concurrent_requests_are_computed_once(executor):
    encode = RecordingEncoder()
    batcher = await started(encode, executor)
    first, second = await asyncio.gather(batcher.submit(["boots", "dress"]), batcher.submit(["boots"]))
    await batcher.close()
    assert encode.calls == [["boots", "dress"]]
    np.testing.assert_array_equal(first[0], second[0])


async def test_zero_wait_still_merges_requests_that_queue_during_inference(executor):
    encode = RecordingEncoder(delay_s=0.05)
    batcher = await started(encode, executor, max_wait_s=0.0)
    first = asyncio.ensure_future(batcher.submit(["a"]))
    await asyncio.sleep(0.01)  # the first call is now running on the model thread
    rest = await asyncio.gather(*(batcher.submit([t]) for t in "bcd"))
    await first
    await batcher.close()
    assert encode.calls == [["a"], ["b", "c", "d"]]
    assert len(rest) == 3


async def test_a_failed_model_call_fails_every_waiter_and_the_batcher_recovers(executor):
    encode = RecordingEncoder(fail_on="poison")
    batcher = await started(encode, executor)
    outcomes = await asyncio.gather(batcher.submit(["poison"]), batcher.submit(["fine"]), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert (await batcher.submit(["fine again"])).shape == (1, 2)
    await batcher.close()


async def test_close_fails_queued_requests_instead_of_hanging(executor):
    encode = RecordingEncoder(delay_s=0.2)
    batcher = await started(encode, executor, max_wait_s=0.0)
    running = asyncio.ensure_future(batcher.submit(["slow"]))
    await asyncio.sleep(0.02)
    queued = asyncio.ensure_future(batcher.submit(["queued"]))
    await asyncio.sleep(0)
    await batcher.close()
    for future in (running, queued):
        with pytest.raises(RuntimeError, match="shutting down"):
            await future


def test_invalid_limits_are_rejected(executor):
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(RecordingEncoder(), max_batch_size=0, max_wait_s=0.0, executor=executor, kind="test")
    with pytest.raises(ValueError, match="max_wait"):
        MicroBatcher(RecordingEncoder(), max_batch_size=1, max_wait_s=-1, executor=executor, kind="test")
