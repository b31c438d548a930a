"""How another service's refusal becomes this service's error (core/clients/errors.py), read off real gRPC calls."""

import grpc
import pytest

from whisperlite.core.clients.errors import CredentialsRefused, downstream_error
from whisperlite.core.errors import RETRY_AFTER_KEY, DownstreamBusy, FailedPrecondition, InvalidArgument, ResponseTooLarge, Unavailable

METHOD = "/probe.Probe/Call"


async def refusal(code: grpc.StatusCode, details: str, trailer: tuple = ()) -> grpc.aio.AioRpcError:
    """The error a real loopback call gets from a server that aborts it so."""

    async def abort(_request, context):
        await context.abort(code, details, trailing_metadata=trailer)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.Probe", {"Call": grpc.unary_unary_rpc_method_handler(abort)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary(METHOD)(b"", timeout=10)
            return failed.value
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("code", "trailer", "kind", "status"),
    [
        # A busy service says when to retry: the caller may, later (the ranker reports it as its own overload).
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ((RETRY_AFTER_KEY, "250"),), DownstreamBusy, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, (), DownstreamBusy, grpc.StatusCode.UNAVAILABLE),
        # No hint: an answer over a message limit. A retry fails alike, so the caller hears it must ask for less.
        (grpc.StatusCode.RESOURCE_EXHAUSTED, (), ResponseTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (grpc.StatusCode.INVALID_ARGUMENT, (), InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (grpc.StatusCode.PERMISSION_DENIED, (), CredentialsRefused, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.UNAVAILABLE, (), Unavailable, grpc.StatusCode.UNAVAILABLE),
        # A server stopping ends the calls it has not started so: the dependency is unavailable, not the request bad.
        (grpc.StatusCode.CANCELLED, (), Unavailable, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.INTERNAL, (), FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
async def test_a_downstream_refusal_becomes_the_error_its_cause_calls_for(code, trailer, kind, status):
    error = downstream_error("catalog at host:1", "SearchBatch", await refusal(code, "the response would be too large", trailer))
    assert type(error) is kind and error.code == status
    assert "the response would be too large" in str(error)
    if kind is DownstreamBusy:
        assert error.retry_after_ms == (250 if trailer else None)
