"""Server interceptor: per-RPC Prometheus metrics, request logs, admission and domain-error -> status mapping."""

import asyncio
import contextlib
import logging
import time

import grpc
from google.protobuf.message import DecodeError
from grpc._cython.cygrpc import ExecuteBatchError  # grpc.aio's own error for a failed send; no public name
from prometheus_client import Counter, Histogram

from whisperlite.core.errors import RETRY_AFTER_KEY, InvalidArgument, Overloaded, ResourceExhausted, ServiceError
from whisperlite.core.request_context import (
    REQUEST_ID_KEY, bind_deadline, bind_request_id, deadline_from_now, reset_deadline, reset_request_id,
)
from whisperlite.services.common.admission import Admission, LoadShed

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


class MalformedRequest:
    """What the request deserializer yields for bytes that are not a valid message of the method's type."""

    def __init__(self, reason: str):
        self.reason = reason


def _tolerant(deserializer):
    # grpc deserializes before any handler runs and answers a parse error with UNKNOWN, past every
    # interceptor (no metrics, a traceback in the log); handing the handler a marker instead lets it
    # answer INVALID_ARGUMENT and be counted like any other call.
    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as error:
            return MalformedRequest(str(error) or "cannot parse")

    return deserialize


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def without_admission(behavior):
    """Marks a handler admission must not shed. One that answers at once without work (a refused token): it takes no
    admission slot, so a flood of refused calls cannot shed a legitimate caller's, nor be told RESOURCE_EXHAUSTED
    instead of why it was refused. And an operator's control call (a model rollback), which must get through exactly
    when the service is overloaded: it was refused like any Recommend."""
    behavior.whisperlite_without_admission = True
    return behavior


def _cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    return grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(context) else grpc.StatusCode.CANCELLED


def _caller_gone(context: grpc.aio.ServicerContext) -> bool:
    """The caller hung up or its deadline passed: nothing sent on this call can reach it any more."""
    return _deadline_passed(context) or context.cancelled()


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary handlers; streaming ones (health Watch, reflection) pass through untouched."""

    def __init__(self, max_response_bytes: int, admission: Admission | None = None):
        # gRPC refuses an oversized response only after the handler has returned, past this
        # interceptor, so the call would be counted OK; checking here fails it with a status that says why.
        self._max_response_bytes = max_response_bytes
        # Health checks and reflection (grpc.* services) bypass admission: an overloaded server is still alive.
        self._admission = admission

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        behavior = handler.unary_unary
        admitting = not service.startswith("grpc.") and not getattr(behavior, "whisperlite_without_admission", False)
        admission = self._admission if admitting else None

        async def admitted(request, context: grpc.aio.ServicerContext, request_id: str):
            if isinstance(request, MalformedRequest):
                raise InvalidArgument(f"the request is not a valid {method} message: {request.reason}")
            async with admission.admit(context.time_remaining()) if admission is not None else contextlib.nullcontext():
                # Only admitted calls send headers: a refusal costs one status frame, its request id in the trailer.
                await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                return await behavior(request, context)

        async def observed(request, context: grpc.aio.ServicerContext):
            STARTED.labels(service, method).inc()
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            # Every log line of this call, and every downstream call, carries the request id; the
            # caller gets it back in the response headers. Downstream calls end with the caller's deadline.
            request_id, bound, unusable_id = bind_request_id(context.invocation_metadata())
            deadline_bound = bind_deadline(deadline_from_now(context.time_remaining()))
            shed = False
            try:
                if unusable_id is not None:  # refused before admission: it holds no slot a served call could use
                    raise InvalidArgument(unusable_id)
                response = await admitted(request, context, request_id)
                size = response.ByteSize()
                if size > self._max_response_bytes:
                    raise ResourceExhausted(
                        f"the response would be {size} bytes, over this server's {self._max_response_bytes}-byte message "
                        "limit: ask for fewer or smaller results (a lower top_k, fewer ids, no vectors)"
                    )
                if _caller_gone(context):
                    # Sending would fail inside grpc and be logged as a servicer error; the caller has its status.
                    raise asyncio.CancelledError
                return response
            except ServiceError as error:
                if _caller_gone(context):
                    code = _cancelled_code(context)  # the caller has its status; an abort now would fail inside grpc
                    raise asyncio.CancelledError from None
                code = error.code
                trailer = ((REQUEST_ID_KEY, request_id),)
                if isinstance(error, Overloaded):
                    shed = isinstance(error, LoadShed)  # admission logs a summary; a line per refusal would add load where it hurts
                    trailer += ((RETRY_AFTER_KEY, str(error.retry_after_ms)),)
                if isinstance(request, MalformedRequest):
                    log.warning("malformed request", extra={"grpc_method": handler_call_details.method, "reason": request.reason})
                try:
                    await context.abort(error.code, str(error), trailing_metadata=trailer)
                except ExecuteBatchError:
                    code = _cancelled_code(context)  # the call ended between the check above and the abort
                    raise asyncio.CancelledError from None
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                # grpc cancels the handler when the caller's deadline passes or it hangs up: never an OK.
                code = _cancelled_code(context)
                raise
            except Exception as error:
                if isinstance(error, ExecuteBatchError) or _caller_gone(context):
                    # grpc fails a send (headers, the answer) on a call the caller ended meanwhile, sometimes
                    # before the call reads as cancelled here: not a server fault, and nothing can reach the caller.
                    code = _cancelled_code(context)
                    raise asyncio.CancelledError from None
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error", extra={"grpc_method": handler_call_details.method})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
            finally:
                elapsed = time.perf_counter() - start
                if code == grpc.StatusCode.OK and _deadline_passed(context):
                    code = grpc.StatusCode.DEADLINE_EXCEEDED  # the answer came too late for the caller
                HANDLED.labels(service, method, code.name).inc()
                HANDLING_SECONDS.labels(service, method).observe(elapsed)
                if not shed:
                    log.info(
                        "rpc",
                        extra={"grpc_method": handler_call_details.method, "grpc_code": code.name, "duration_ms": round(elapsed * 1e3, 3)},
                    )
                reset_deadline(deadline_bound)
                reset_request_id(bound)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=_tolerant(handler.request_deserializer) if handler.request_deserializer else None,
            response_serializer=handler.response_serializer,
        )
