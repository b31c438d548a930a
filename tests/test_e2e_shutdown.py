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
