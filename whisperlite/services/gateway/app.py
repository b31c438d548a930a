"""The gateway's HTTP routes (FastAPI): /v1 over the ranker and catalog, /health, /metrics, the study page."""

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable
from importlib import resources
from typing import TypeVar

import grpc
import prometheus_client
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from google.protobuf import json_format
from starlette.exceptions import HTTPException

from whisperlite.core.clients.errors import retry_after_seconds
from whisperlite.services.gateway import study
from whisperlite.services.gateway.judgements import POSITIONS, JudgementStore, NotShown, UnknownComparison
from whisperlite.services.gateway.schema import (
    Item,
    RecommendRequest,
    RecommendResponse,
    UpsertItemsRequest,
    UpsertItemsResponse,
    from_proto,
    to_proto,
)
from whisperlite.services.gateway.status import error_body, http_status
from whisperlite.services.gateway.upstream import Upstream

log = logging.getLogger("whisperlite.gateway")
REQUEST_ID_HEADER = "x-request-id"
# What a gRPC metadata value and a log field can carry unchanged.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
STATIC = resources.files("whisperlite.services.gateway") / "static"
T = TypeVar("T")

REQUESTS = prometheus_client.Counter(
    "whisperlite_gateway_requests_total", "HTTP requests answered by the gateway.", ["method", "route", "status"]
)
LATENCY = prometheus_client.Histogram(
    "whisperlite_gateway_request_seconds",
    "Time from an HTTP request's arrival to its answer.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _error(status: int, code: grpc.StatusCode, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def _grpc_error(code: grpc.StatusCode, message: str) -> JSONResponse:
    return _error(http_status(code), code, message)


def _validation_message(error: RequestValidationError) -> str:
    """`field.path: reason` for each problem, the way the services name fields in INVALID_ARGUMENT."""
    parts = []
    for problem in error.errors():
        # The first element says where the value came from (body, path, query string), the rest is the field.
        location = [str(p) for p in problem["loc"][1:]]
        parts.append(f"{'.'.join(location) or 'body'}: {problem['msg']}")
    return "; ".join(parts)


def _metadata(request: Request) -> list[tuple[str, str]]:
    """What the upstream call carries: the caller's credentials unchanged and this request's id."""
    metadata = [(REQUEST_ID_HEADER, request.state.request_id)]
    if authorization := request.headers.get("authorization"):
        metadata.append(("authorization", authorization))
    return metadata


def _refusal(request: Request, max_body_bytes: int) -> JSONResponse | None:
    """The answer to a request refused before it is read: an unusable request id, or a body over the limit."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and not REQUEST_ID.fullmatch(given):
        return _grpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, f"{REQUEST_ID_HEADER}: must be 1 to 128 letters, digits or '.', '_', ':', '-', got {given[:40]!r}"
        )
    length = request.headers.get("content-length", "0")
    if not length.isdigit():
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"content-length: must be a number of bytes, got {length[:40]!r}")
    if int(length) > max_body_bytes:
        return _grpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body of {length} bytes is larger than the gateway's limit of {max_body_bytes} (--max-body-bytes)"
        )
    return None


async def _read_unsized_body(request: Request, max_body_bytes: int) -> JSONResponse | None:
    """A chunked body (no Content-Length) is read here, stopping as soon as it passes the limit, so
    no request can make the gateway buffer more than --max-body-bytes. The handler then gets the
    bytes read (Starlette's middleware replays `request._body`)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            return _grpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request body is larger than the gateway's limit of {max_body_bytes} (--max-body-bytes); stopped reading at {size} bytes",
            )
        chunks.append(chunk)
    request._body = b"".join(chunks)
    return None


async def _client_gone(request: Request) -> None:
    """Returns once the HTTP client disconnects (the body is read by then: what is left to receive is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, call: Awaitable[T]) -> T | JSONResponse:
    """The upstream call's result; cancelled, with the upstream gRPC call, when the client hangs up first.

    uvicorn does not cancel a handler whose client left, so without this every abandoned request would
    still be computed by the ranker and hold one of its admission slots (32 HTTP callers that give up
    early would overload a ranker that 32 gRPC callers do not).
    """
    answer, gone = asyncio.ensure_future(call), asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not answer.done():
            answer.cancel()  # also when this handler itself is cancelled
            try:
                await answer  # the upstream call is cancelled by the time the handler answers
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise  # this handler itself was cancelled (shutdown): that goes on up
    if answer.cancelled():
        return _grpc_error(grpc.StatusCode.CANCELLED, "the client closed the request before the answer came")  # 499: no one reads it
    return answer.result()


def create_app(
    upstream: Upstream,
    store: JudgementStore,
    *,
    blind: bool = False,
    suggested_users: tuple[str, ...] = (),
    max_body_bytes: int = 64 * 1024 * 1024,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        # Runs once uvicorn has drained in-flight requests after SIGTERM.
        await upstream.close()
        store.close()

    app = FastAPI(
        lifespan=lifespan,
        title="WhisperLite gateway",
        summary="HTTP/JSON over the ranker's and catalog's gRPC contracts, and the relevance-judgement page.",
        version="v1",
    )

    @app.middleware("http")
    async def request_id_and_metrics(request: Request, call_next):
        started = time.perf_counter()
        refusal = _refusal(request, max_body_bytes)
        if refusal is None and "content-length" not in request.headers:
            refusal = await _read_unsized_body(request, max_body_bytes)
        if refusal is not None:
            response, request_id = refusal, uuid.uuid4().hex
        else:
            request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
            request.state.request_id = request_id
            response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = request_id
        route = request.scope.get("route")
        labels = (request.method, route.path if route is not None else "unmatched")
        LATENCY.labels(*labels).observe(time.perf_counter() - started)
        REQUESTS.labels(*labels, str(response.status_code)).inc()
        return response

    @app.exception_handler(grpc.aio.AioRpcError)
    async def upstream_failed(_: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        response = _grpc_error(error.code(), error.details() or error.code().name)
        retry_after = retry_after_seconds(error)
        if retry_after is not None:
            response.headers["Retry-After"] = str(math.ceil(retry_after))  # HTTP counts whole seconds
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path, "request_id": getattr(request.state, "request_id", "")})
        return _grpc_error(grpc.StatusCode.INTERNAL, f"the gateway failed: {type(error).__name__}; see its log")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        """Routing answers (no such route, wrong method) in the same error shape as everything else."""
        code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(error.status_code, grpc.StatusCode.UNKNOWN)
        return _error(error.status_code, code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, _validation_message(error))

    @app.exception_handler(json_format.ParseError)
    async def unrepresentable(_: Request, error: json_format.ParseError) -> JSONResponse:
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    # The /v1 answers are the upstream's proto as JSON, already the response model's shape: sent as is,
    # without FastAPI validating them again (response_model documents them in the OpenAPI schema).
    @app.post("/v1/recommend", response_model=RecommendResponse, tags=["ranker"], summary="RankerService/Recommend")
    async def recommend(body: RecommendRequest, request: Request):
        answer = await _unless_client_leaves(request, upstream.recommend(to_proto(body), _metadata(request)))
        return answer if isinstance(answer, JSONResponse) else JSONResponse(from_proto(answer))

    # `:path` lets an id hold "/" (ids are any 1 to 256 characters).
    @app.get("/v1/items/{item_id:path}", response_model=Item, tags=["catalog"], summary="CatalogService/GetItems for one id")
    async def get_item(item_id: str, request: Request, include_vectors: bool = False):
        item = await _unless_client_leaves(request, upstream.get_item(item_id, include_vectors, _metadata(request)))
        if isinstance(item, JSONResponse):
            return item
        if item is None:
            return _grpc_error(grpc.StatusCode.NOT_FOUND, f"item_id: {item_id!r} is not in the catalog")
        return JSONResponse(from_proto(item))

    @app.post("/v1/items", response_model=UpsertItemsResponse, tags=["catalog"], summary="CatalogService/UpsertItems (write scope)")
    async def upsert_items(body: UpsertItemsRequest, request: Request):
        return JSONResponse(from_proto(await upstream.upsert_items(to_proto(body), _metadata(request))))

    @app.get("/health", tags=["operations"], summary="SERVING only when the ranker and the catalog both are")
    async def health():
        upstreams = await upstream.health()
        serving = all(status == "SERVING" for status in upstreams.values())
        return JSONResponse({"status": "SERVING" if serving else "NOT_SERVING", "upstreams": upstreams}, status_code=200 if serving else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return Response(prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    @app.post("/v1/study/comparisons", tags=["study"], summary="answer a request personalized and non-personal, store what is shown")
    async def create_comparison(body: study.ComparisonRequest, request: Request):
        comparison_id = await _unless_client_leaves(request, study.compare(upstream, store, body, blind, _metadata(request)))
        if isinstance(comparison_id, JSONResponse):
            return comparison_id
        return await asyncio.to_thread(study.comparison_view, store, comparison_id)

    @app.get("/v1/study/comparisons/{comparison_id}", tags=["study"], summary="a stored comparison with its judgements")
    async def get_comparison(comparison_id: int):
        try:
            return await asyncio.to_thread(study.comparison_view, store, comparison_id)
        except UnknownComparison as error:
            return _grpc_error(grpc.StatusCode.NOT_FOUND, f"comparison_id: {error}")

    @app.put("/v1/study/comparisons/{comparison_id}/judgements", tags=["study"], summary="mark a shown item relevant or not")
    async def judge(comparison_id: int, body: study.JudgementRequest):
        if body.position not in POSITIONS:
            return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"position: must be left or right, got {body.position!r}")
        try:
            judgement = await asyncio.to_thread(store.judge, comparison_id, body.position, body.rank, body.relevant)
        except UnknownComparison as error:
            return _grpc_error(grpc.StatusCode.NOT_FOUND, f"comparison_id: {error}")
        except NotShown as error:
            return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return {"comparison_id": comparison_id, "position": judgement.position, "rank": judgement.rank, "relevant": judgement.relevant}

    @app.get("/v1/study/users", tags=["study"], summary="users to offer in the page's picker")
    async def users():
        judged = await asyncio.to_thread(store.judged_users)
        return {"users": list(dict.fromkeys([*suggested_users, *judged]))}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
