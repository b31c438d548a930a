"""The shared server plumbing (whisperlite.services.common.server) around a servicer written here:
a real grpc.aio server on loopback, its interceptor's metrics and logs, and calls that end badly."""

import asyncio
import logging
import random
import re
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.servers import free_port
from whisperlite.services.common.admission import AdmissionLimits
from whisperlite.services.common.server import serve
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc

SERVICE = "whisperlite.v1.QueryEncoderService"


class BusyServicer(query_encoder_pb2_grpc.QueryEncoderServiceServicer):
    """GetModelInfo yields once, then holds the event loop for `seconds` (CPU-bound work between awaits),
    so a short deadline passes at every stage of a call: queued for admission, sending headers, running
    or sending the answer."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    async def GetModelInfo(self, request, context):
        await asyncio.sleep(0)
        time.sleep(self.seconds)
        return query_encoder_pb2.GetModelInfoResponse(model_name="busy")


def handled(code: str) -> float:
    return REGISTRY.get_sample_value(
        "grpc_server_handled_total", {"grpc_service": SERVICE, "grpc_method": "GetModelInfo", "grpc_code": code}
    ) or 0.0


@pytest.fixture
async def busy_server():
    port, ready, stop = free_port(), asyncio.Event(), asyncio.Event()
    servicer = BusyServicer(seconds=0.0)
    task = asyncio.ensure_future(serve(
        name="busy", port=port, metrics_port=0, ready=ready, stop=stop, grace_seconds=1,
        admission=AdmissionLimits(max_in_flight=1, max_queued=64),
        servicers=[(query_encoder_pb2_grpc.add_QueryEncoderServiceServicer_to_server, servicer, SERVICE)],
    ))  # fmt: skip
    await asyncio.wait_for(ready.wait(), 30)
    yield f"localhost:{port}", servicer
    stop.set()
    await task


def cancelled_calls(address: str, delays: list[float]) -> None:
    """Calls hung up by the caller after `delays` seconds each (long deadlines: the hang-up ends them)."""
    with grpc.insecure_channel(address) as channel:
        stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        for delay in delays:
            call = stub.GetModelInfo.future(query_encoder_pb2.GetModelInfoRequest(), timeout=30)
            time.sleep(delay)
            call.cancel()


def calls(address: str, deadlines: list[float]) -> list[grpc.StatusCode]:
    codes = []
    with grpc.insecure_channel(address) as channel:
        stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        for deadline in deadlines:
            try:
                stub.GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=deadline)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
    return codes


async def test_callers_that_give_up_at_any_stage_are_counted_as_such_and_log_no_error(busy_server, caplog):
    """A caller whose deadline passes, or who hangs up, while its call waits, sends headers, runs or answers:
    grpc fails any send on such a call, which must not read as a server fault (INTERNAL, an error with a traceback)."""
    address, servicer = busy_server
    assert await asyncio.to_thread(calls, address, [10]) == [grpc.StatusCode.OK]
    servicer.seconds = 0.004
    before = {code: handled(code) for code in ("OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN")}
    rng = random.Random(0)
    with caplog.at_level(logging.INFO):
        per_caller = await asyncio.gather(*[
            asyncio.to_thread(calls, address, [rng.uniform(0.002, 0.03) for _ in range(40)]) for _ in range(6)
        ])  # fmt: skip
        await asyncio.gather(*[
            asyncio.to_thread(cancelled_calls, address, [rng.uniform(0.0, 0.02) for _ in range(40)]) for _ in range(6)
        ])  # fmt: skip
        await asyncio.sleep(0.5)  # handlers still running when their callers gave up finish
    seen = [code for codes in per_caller for code in codes]
    assert set(seen) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert seen.count(grpc.StatusCode.DEADLINE_EXCEEDED) > 20  # the deadlines were short enough to bite
    assert handled("INTERNAL") == before["INTERNAL"] and handled("UNKNOWN") == before["UNKNOWN"]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [(record.name, record.getMessage()) for record in errors]



def answer_to(address: str, metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str, dict]:
    """(status, details, response headers and trailers) of a GetModelInfo call sending `metadata`."""
    with grpc.insecure_channel(address) as channel:
        call = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel).GetModelInfo.future(
            query_encoder_pb2.GetModelInfoRequest(), metadata=metadata, timeout=30
        )
        call.exception()  # waits for the end of the call
        return call.code(), call.details() or "", {**dict(call.initial_metadata()), **dict(call.trailing_metadata())}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((("x-request-id", "order-7"), ("x-request-id", "order-8")),
         "x-request-id: given 2 times; send it once (a request id names one request: logs and traces key on it)"),
        ((("x-request-id", "order 7"),), "x-request-id: must be 1 to 128 visible ASCII characters (no spaces), got 'order 7'"),
        ((("x-request-id", "r" * 129),), f"x-request-id: must be 1 to 128 visible ASCII characters (no spaces), got {'r' * 40!r}"),
    ],
    ids=["given-twice", "with-a-space", "too-long"],
)
async def test_a_request_id_given_twice_or_breaking_the_rule_is_refused(busy_server, metadata, message):
    """As the gateway and the clients refuse them. A server took the first of two ids (a proxy or log reader may have
    taken the other), and replaced one breaking the rule by a new one: the caller's id was in no server log."""
    address, _ = busy_server
    code, details, headers = await asyncio.to_thread(answer_to, address, metadata)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # the refusal's own id, for its log line
    longest = "r" * 128
    assert await asyncio.to_thread(answer_to, address, (("x-request-id", longest),)) == (grpc.StatusCode.OK, "", {"x-request-id": longest})
