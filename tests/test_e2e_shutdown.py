"""SIGTERM drains: in-flight calls finish, health flips to NOT_SERVING, new calls are refused, exit code 0."""

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.servers import start_service
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc


async def test_sigterm_drains_in_flight_calls(tmp_path):
    # A long batching window keeps each Embed call in flight for ~1.5 s: long enough to signal mid-call.
    encoder = start_service("query-encoder", tmp_path, "--max-wait-ms", "1500", "--grace-seconds", "20")
    async with grpc.aio.insecure_channel(encoder.address) as channel:
        stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        in_flight = [
            asyncio.ensure_future(stub.Embed(query_encoder_pb2.EmbedRequest(texts=[f"a warm winter coat {i}"]), timeout=30))
            for i in range(4)
        ]
        await asyncio.sleep(0.5)
        assert not any(call.done() for call in in_flight)
        signalled = time.monotonic()
        encoder.process.terminate()

        responses = await asyncio.gather(*in_flight)
        assert all(len(r.text_vectors[0].values) == 384 for r in responses)
        assert time.monotonic() - signalled < 15

        health = health_pb2_grpc.HealthStub(channel)
        try:
            status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=2)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.aio.AioRpcError as error:  # already closed: equally refused
            assert error.code() == grpc.StatusCode.UNAVAILABLE

    assert encoder.process.wait(30) == 0
    async with grpc.aio.insecure_channel(encoder.address) as channel:
        stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        try:
            await stub.Embed(query_encoder_pb2.EmbedRequest(texts=["too late"]), timeout=2)
            raise AssertionError("a stopped server answered")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert '"stopped"' in encoder.log()


async def test_calls_sent_before_a_sigterm_under_load_are_answered_not_cancelled(tmp_path):
    """gRPC's stop() ends with a bare CANCELLED the calls it has received but not yet started: under load, ~70 of 128
    callers' calls sent before the SIGTERM, which the gateway passed on as a 499 blaming its client. The server now
    drains first: calls admitted or queued finish, and new ones are refused with UNAVAILABLE, which channels retry."""
    encoder = start_service("query-encoder", tmp_path, "--grace-seconds", "20")
    outcomes: list[tuple[float, str, str]] = []  # (sent, code, details)
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(encoder.address) as channel:  # no retry policy: every code is seen
        stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)

        async def caller(n: int) -> None:
            sent_count = 0
            while not stop.is_set():
                sent_count += 1
                sent = time.monotonic()
                try:
                    await stub.Embed(query_encoder_pb2.EmbedRequest(texts=[f"a warm coat {n} {sent_count}"]), timeout=30)
                    outcomes.append((sent, "OK", ""))
                except grpc.aio.AioRpcError as error:
                    outcomes.append((sent, error.code().name, error.details() or ""))
                    await asyncio.sleep(0.05)

        callers = [asyncio.ensure_future(caller(n)) for n in range(128)]
        await asyncio.sleep(3)
        signalled = time.monotonic()
        encoder.process.terminate()
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*callers)
    assert encoder.process.wait(30) == 0
    before = [(code, details) for sent, code, details in outcomes if sent < signalled]
    late = [(code, details) for code, details in before if code != "OK" and not details.startswith("server overloaded")]
    assert not [outcome for outcome in late if outcome[0] == "CANCELLED"], late[:5]
    refused = [details for sent, code, details in outcomes if sent >= signalled and code == "UNAVAILABLE"]
    assert any(details.startswith("the query-encoder server is shutting down: retry") for details in refused), refused[:5]
