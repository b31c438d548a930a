"""Server interceptor: per-RPC Prometheus metrics, request logs and domain-error -> status mapping."""

import logging
import time

import grpc
from prometheus_client import Counter, Histogram

from whisperlite.core.errors import ResourceExhausted, ServiceError
from whisperlite.core.request_context import REQUEST_ID_KEY, bind_request_id, reset_request_id

log = logging.getLogger("whisperlite.rpc")

# Names follow the go-grpc-prometheus conventions so existing dashboards and alerts apply.
STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method"])
HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by status code.", ["grpc_service", "grpc_method", "grpc_code"]
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to sending its response.",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _split_method(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary handlers; streaming ones (health Watch, reflection) pass through untouched."""

    def __init__(self, max_response_bytes: int):
        # gRPC refuses an oversized response only after the handler has returned, past this
        # interceptor, so the call would be counted OK; checking here fails it with a status that says why.
        self._max_response_bytes = max_response_bytes

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        behavior = handler.unary_unary

        async def observed(request, context: grpc.aio.ServicerContext):
            STARTED.labels(service, method).inc()
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            # Every log line of this call, and every downstream call, carries the request id; the
            # caller gets it back in the response headers.
            request_id, bound = bind_request_id(context.invocation_metadata())
            await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            try:
                response = await behavior(request, context)
                size = response.ByteSize()
                if size > self._max_response_bytes:
                    raise ResourceExhausted(
                        f"the response would be {size} bytes, over this server's {self._max_response_bytes}-byte message "
                        "limit: ask for fewer or smaller results (a lower top_k, fewer ids, no vectors)"
                    )
                return response
            except ServiceError as error:
                code = error.code
                await context.abort(error.code, str(error))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error", extra={"grpc_method": handler_call_details.method})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
            finally:
                elapsed = time.perf_counter() - start
                HANDLED.labels(service, method, code.name).inc()
                HANDLING_SECONDS.labels(service, method).observe(elapsed)
                log.info(
                    "rpc",
                    extra={"grpc_method": handler_call_details.method, "grpc_code": code.name, "duration_ms": round(elapsed * 1e3, 3)},
                )
                reset_request_id(bound)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
