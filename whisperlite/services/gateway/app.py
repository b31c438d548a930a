"""The gateway's HTTP routes (FastAPI): /v1 over the ranker and catalog, /health, /metrics, the study page."""

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
import urllib.parse
from http import HTTPStatus
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, TypeVar

import grpc
import prometheus_client
from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from whisperlite.core.item_fields import MAX_ID_CHARS
from whisperlite.core.request_context import REQUEST_ID_KEY as REQUEST_ID_HEADER
from whisperlite.core.request_context import request_id_problem
from whisperlite.core.topology import RANKER
from whisperlite.services.gateway import study
from whisperlite.services.gateway.browsers import (
    CORS_MAX_AGE_SECONDS, CORS_METHODS, CORS_REQUEST_HEADERS, CORS_RESPONSE_HEADERS, ObservedCORSMiddleware,
    add_security_headers,
)
from whisperlite.services.gateway.bodies import BodyBudget, BodyReader, Refused, invalid, validation_message
from whisperlite.services.gateway.connections import CONNECTION_ANSWER
from whisperlite.services.gateway.judgements import POSITIONS, JudgementStore, NotShown, UnknownComparison
from whisperlite.services.gateway.parameters import JsonInteger, check_query
from whisperlite.services.gateway.shutdown import SHUTTING_DOWN, Drain
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
from whisperlite.services.common.auth import RECOMMEND, TokenStore
from whisperlite.services.gateway.upstream import Upstream, UpstreamFailed

log = logging.getLogger("whisperlite.gateway")
# What gRPC metadata can carry of a caller's Authorization header: printable ASCII, under the services' metadata
# limit (MAX_METADATA_BYTES) with the rest of the call's metadata, tracestate and request id at their longest (past
# it gRPC answers RESOURCE_EXHAUSTED, which HTTP callers would retry as a 429).
MAX_AUTHORIZATION_CHARS = 7168
NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# W3C trace context, forwarded so that an HTTP request's trace goes on in the ranker and catalog.
TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")
MAX_INT64 = 2**63 - 1
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Every GET route answers HEAD too (RFC 9110): load balancers, uptime checkers and caches probe with it.
READ_METHODS = ["GET", "HEAD"]
# Routes still answered while the gateway drains: its health (which says NOT_SERVING) and what scrapers read.
ANSWERED_WHILE_DRAINING = frozenset({"/health", "/health/liveness", "/metrics"})
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


def _metadata(request: Request) -> list[tuple[str, str]]:
    """What the upstream call carries: the caller's credentials unchanged, this request's id and its trace context.

    An Authorization header gRPC metadata cannot carry is refused here: sent on, it failed the call inside gRPC (500).
    A trace context that is not W3C's is dropped, as a traced service would ignore it.
    """
    metadata = [(REQUEST_ID_HEADER, request.state.request_id)]
    if len(sent := request.headers.getlist("authorization")) > 1:  # gRPC refuses two as malformed: which one would count?
        raise Refused(401, grpc.StatusCode.UNAUTHENTICATED, f"authorization: sent {len(sent)} times; send one header")
    if authorization := request.headers.get("authorization"):  # an empty one says nothing: not sent on
        if (problem := _authorization_problem(authorization)) is not None:
            raise Refused(401, grpc.StatusCode.UNAUTHENTICATED, problem)
        metadata.append(("authorization", authorization))
    if (traceparent := request.headers.get("traceparent")) is not None and TRACEPARENT.fullmatch(traceparent):
        metadata.append(("traceparent", traceparent))
        if (tracestate := request.headers.get("tracestate")) is not None and TRACESTATE.fullmatch(tracestate):
            metadata.append(("tracestate", tracestate))
    return metadata


def _authorization_problem(authorization: str) -> str | None:
    """Why gRPC metadata cannot carry this Authorization header, or None: its length, or its first character that is
    not printable ASCII, by kind and position. The header is a credential: it is never echoed."""
    if len(authorization) > MAX_AUTHORIZATION_CHARS:
        return f"authorization: at most {MAX_AUTHORIZATION_CHARS} characters, got {len(authorization)}"
    if (unprintable := NOT_PRINTABLE_ASCII.search(authorization)) is None:
        return None
    # Starlette reads header bytes as Latin-1, one character each: all before this one are ASCII, so the position is
    # the same in bytes and in the characters the caller wrote.
    if unprintable[0] == "\t":
        kind = "a tab"
    elif CONTROL_CHARACTER.fullmatch(unprintable[0]):
        kind = "a control character"
    else:
        kind = "a non-ASCII character"
    return f"authorization: {kind} at position {unprintable.start() + 1} of {len(authorization)}; must be printable ASCII (Bearer <token>)"


def _origin_form(scope: dict) -> str | None:
    """An absolute-form target (`GET http://host/path`, which RFC 9112 has a server accept) read as its path: it was
    a 404 naming "http://host/path" as the path. Returns why a target is no URL (`http://[/health`), else None."""
    if scope["path"].startswith(("http://", "https://")):
        try:
            path, raw_path = (urllib.parse.urlsplit(target).path or "/" for target in (scope["path"], scope["raw_path"].decode("latin-1")))
        except ValueError as error:  # an unclosed IPv6 host: it was a 500 with a traceback, before the request had an id
            return f"request target: not a URL ({error}), got {scope['path'][:80]!r}"
        scope["path"], scope["raw_path"] = path, raw_path.encode("latin-1")
    return None


async def _in_the_error_shape(response: Response) -> Response:
    """A failure answered in plain text by the page's file serving (Starlette's Range errors: 400 "Malformed range
    header.", an empty 416) in the JSON error shape every other failure has, its headers (Content-Range) kept."""
    if response.status_code < 400 or response.headers.get("content-type", "").startswith("application/json"):
        return response
    text = b"".join([chunk async for chunk in response.body_iterator]).decode("utf-8", "replace").strip()
    code = grpc.StatusCode.OUT_OF_RANGE if response.status_code == 416 else grpc.StatusCode.INVALID_ARGUMENT
    if response.status_code >= 500:
        code = grpc.StatusCode.INTERNAL
    message = text or ("range: not within the file" if response.status_code == 416 else HTTPStatus(response.status_code).phrase)
    shaped = _error(response.status_code, code, message[:500])
    for name in ("content-range", "allow", "retry-after"):
        if name in response.headers:
            shaped.headers[name] = response.headers[name]
    return shaped


def _refusal(request: Request, max_body_bytes: int) -> JSONResponse | None:
    """The answer to a request refused before it is read: a target that is no URL, a path with control characters, a
    repeated header that says how to read the body, an unusable or repeated request id, or a body over the limit. An
    absolute-form target is read as its path first (`_origin_form`)."""
    if (problem := _origin_form(request.scope)) is not None:
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, problem)
    if CONTROL_CHARACTER.search(path := request.scope["path"]):
        # Starlette's route patterns end in `$`, which matches before a final newline: /v1/items/13306%0A was item 13306.
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"path: must not hold control characters, got {path[:80]!r}")
    try:
        urllib.parse.unquote_to_bytes(request.scope.get("raw_path", b"").decode("latin-1")).decode("utf-8")
    except UnicodeDecodeError as error:
        # uvicorn decodes such bytes to U+FFFD: /v1/items/a%ff and /v1/items/a%fe were the same item.
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"path: its %-escapes are not UTF-8 ({error.reason} at byte {error.start})")
    if "transfer-encoding" in request.headers and "content-length" in request.headers:
        # A proxy in front may frame the body by the other header, and read the rest as a second request (smuggling);
        # the connection is closed after this answer (RFC 9112, 6.1).
        refused = _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "send Content-Length or Transfer-Encoding, not both")
        refused.headers["Connection"] = "close"
        return refused
    for name in ("content-type", "content-encoding"):
        if len(given := request.headers.getlist(name)) > 1:
            # The gateway read the first, so a body declared gzip by the second was read as JSON; a proxy may take the other.
            return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: given {len(given)} times; send it once (it says how to read the body)")
    if (encoding := request.headers.get("content-encoding", "identity").strip().lower()) != "identity":
        return _error(415, grpc.StatusCode.INVALID_ARGUMENT, f"content-encoding: {encoding[:40]!r} is not accepted; send the body uncompressed")
    if (problem := request_id_problem(request.headers.getlist(REQUEST_ID_HEADER))) is not None:
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, problem)
    length = request.headers.get("content-length", "0")
    if not length.isdigit():
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"content-length: must be a number of bytes, got {length[:40]!r}")
    if int(length) > max_body_bytes:
        return _error(
            413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body of {length} bytes is larger than the gateway's limit of {max_body_bytes} (--max-body-bytes)"
        )  # 413, not 429: the same request never succeeds, and HTTP clients and proxies retry a 429
    return None


@dataclasses.dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int = 64 * 1024 * 1024  # one body
    max_buffered_body_bytes: int = 128 * 1024 * 1024  # every body held at once
    body_timeout_seconds: float = 60.0  # from the request's headers to its body's last byte

    def __post_init__(self):
        if self.max_body_bytes < 1 or self.max_buffered_body_bytes < 1:
            raise ValueError(f"max_body_bytes and max_buffered_body_bytes: must be at least 1, got {self.max_body_bytes}, "
                             f"{self.max_buffered_body_bytes}")
        if not 0 < self.body_timeout_seconds <= 3600:  # NaN too
            raise ValueError(f"body_timeout_seconds: must be between 0 and 3600, got {self.body_timeout_seconds}")


async def _read_body(request: Request, limits: BodyLimits, budget: BodyBudget) -> tuple[JSONResponse | None, int]:
    """Reads the request's body before its handler runs (which gets the bytes read: Starlette's middleware replays
    `request._body`): (a refusal or None, the bytes taken from `budget`, to give back once the request is answered).

    A body must arrive within --body-timeout-seconds, and the bodies held at once stay within
    --max-buffered-body-bytes: slow or stalled uploads used to keep their connections and every byte sent so far
    (eight stalled 60 MB uploads held 490 MB for as long as their clients liked). A chunked body (no Content-Length)
    stops being read as soon as it passes --max-body-bytes. A client that hangs up mid-body is answered 499.
    """
    declared = int(request.headers.get("content-length", "0"))  # a number within --max-body-bytes: _refusal checked it
    held, chunks, size = 0, [], 0
    try:
        async with asyncio.timeout(limits.body_timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    budget.give(held)
                    return _error(
                        413, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"request body is larger than the gateway's limit of {limits.max_body_bytes} (--max-body-bytes); "
                        f"stopped reading at {size} bytes",
                    ), 0
                if not budget.take(len(chunk), held):
                    budget.give(held)
                    return _busy(budget), 0
                held = size
                chunks.append(chunk)
    except TimeoutError:
        budget.give(held)
        response = _error(
            408, grpc.StatusCode.DEADLINE_EXCEEDED,
            f"request body did not arrive within {limits.body_timeout_seconds:g} s (--body-timeout-seconds): {size} of "
            f"{declared or 'an unsized body'} bytes came",
        )
        response.headers["Connection"] = "close"
        return response, 0
    except ClientDisconnect:
        budget.give(held)
        return _grpc_error(grpc.StatusCode.CANCELLED, "the client closed the connection before sending the whole body"), 0
    except BaseException:  # cancelled (the server shutting down): the bytes go back all the same
        budget.give(held)
        raise
    request._body = b"".join(chunks)
    return None, held


def _labels(app: FastAPI, scope: dict) -> tuple[str, str]:
    """(method, route) of a request's metrics, read before it is routed (a mount such as /static rewrites the scope).

    The route is its path template: a request refused before routing (its body) is counted under its route too, and
    one whose method the route does not take (a CORS preflight, a 405) under the route its path names. The method is
    the caller's to choose: made-up ones share one label, or each would add series to /metrics.
    """
    route = None
    for candidate in app.router.routes:
        match = candidate.matches(scope)[0]
        if match == Match.FULL:
            route = candidate
            break
        if match == Match.PARTIAL and route is None:
            route = candidate
    return scope["method"] if scope["method"] in HTTP_METHODS else "other", route.path if route is not None else "unmatched"


def _count(labels: tuple[str, str], status: int, seconds: float) -> None:
    LATENCY.labels(*labels).observe(seconds)
    REQUESTS.labels(*labels, str(status)).inc()


def _busy(budget: BodyBudget) -> JSONResponse:
    response = _error(
        429, grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the gateway holds {budget.held_bytes} bytes of request bodies, its limit (--max-buffered-body-bytes "
        f"{budget.limit_bytes}); retry",
    )
    response.headers["Retry-After"] = "1"
    return response


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
    store: JudgementStore | None,
    *,
    blind: bool = False,
    suggested_users: tuple[str, ...] = (),
    body_limits: BodyLimits = BodyLimits(),
    max_message_bytes: int = 16 * 1024 * 1024,
    cors_origins: tuple[str, ...] = (),
    tokens: TokenStore | None = None,
    drain: Drain | None = None,
    access_log: bool = False,
) -> FastAPI:
    """`tokens` guard the routes the gateway answers from its own store (the study's); the API's routes are guarded by
    the ranker and the catalog, which get the caller's token as it came."""
    bodies = BodyReader(max_message_bytes)
    budget = BodyBudget(body_limits.max_buffered_body_bytes)
    drain = drain or Drain()

    def check_token(request: Request) -> None:
        """Refuses a caller whose token does not grant `recommend` (the scope that creates comparisons at the ranker)."""
        if tokens is None:
            return
        denial = tokens.check(request.headers.getlist("authorization"), f"{request.method} {_labels(app, request.scope)[1]}", RECOMMEND)
        if denial is not None:
            raise Refused(401 if denial.code == grpc.StatusCode.UNAUTHENTICATED else 403, denial.code, denial.message)

    async def body(request: Request, model: type[BaseModel], convert: Callable[[Any], Any] | None = None) -> Any:
        return await bodies.read(await request.body(), request.headers.get("content-type"), model, convert)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        watch = asyncio.ensure_future(upstream.watch())
        yield
        watch.cancel()
        # Runs once uvicorn has drained in-flight requests after SIGTERM.
        await upstream.close()
        if store is not None:
            store.close()

    app = FastAPI(
        lifespan=lifespan,
        title="WhisperLite gateway",
        summary="HTTP/JSON over the ranker's and catalog's gRPC contracts, and the relevance-judgement page.",
        version="v1",
        redirect_slashes=False,  # "/v1/recommend/" is a 404 naming the path, not an empty 307
        dependencies=[Depends(check_query)],  # query strings as strict as bodies: an unknown, repeated or lax one is a 400
    )

    @app.middleware("http")
    async def request_id_and_metrics(request: Request, call_next):
        started = time.perf_counter()
        refusal, held = _refusal(request, body_limits.max_body_bytes), 0
        labels = _labels(app, request.scope)  # after _refusal, which reads an absolute-form target as its path
        if refusal is None and drain.draining and labels[1] not in ANSWERED_WHILE_DRAINING:
            refusal = _error(503, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            refusal.headers["Retry-After"] = "1"
        if refusal is None:
            refusal, held = await _read_body(request, body_limits, budget)
        if refusal is not None:
            response, request_id = refusal, uuid.uuid4().hex
        else:
            request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
            request.state.request_id = request_id
            try:
                with drain.request():
                    response = await _in_the_error_shape(await call_next(request))
            except Exception as error:  # answered here, not by the server's last resort: with its request id, counted
                log.exception("unexpected error", extra={"path": request.url.path, "request_id": request_id})
                response = _grpc_error(grpc.StatusCode.INTERNAL, f"the gateway failed: {type(error).__name__}; see its log")
            finally:
                budget.give(held)
        if (answered := request.scope.get(CONNECTION_ANSWER)) is not None:
            # connections.py answered this request while it was being read (a head or a body chunk over a limit): this
            # answer goes nowhere, and the count and the log line carry the one the client got.
            response, request_id = Response(status_code=answered[0]), answered[1]
        response.headers[REQUEST_ID_HEADER] = request_id
        if drain.draining:  # a connection kept alive past the drain would carry a request into uvicorn's close
            response.headers["Connection"] = "close"
        add_security_headers(request.url.path, response)
        seconds = time.perf_counter() - started
        _count(labels, response.status_code, seconds)
        if access_log:
            log.info("request", extra={"method": labels[0], "route": labels[1], "status": response.status_code,
                                       "seconds": round(seconds, 4), "request_id": request_id})
        return response

    if cors_origins:  # added last, so outermost: a refusal above (413, 429) reaches the calling page readable too
        app.add_middleware(
            ObservedCORSMiddleware, observe=lambda scope, status, seconds: _count(_labels(app, scope), status, seconds),
            allow_origins=list(cors_origins), allow_methods=CORS_METHODS, allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS, max_age=CORS_MAX_AGE_SECONDS,
        )

    @app.exception_handler(UpstreamFailed)
    async def upstream_failed(_: Request, failure: UpstreamFailed) -> JSONResponse:
        retry_after = failure.retry_after
        if failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is None:
            # Not a busy service (that one says when to retry): an answer over a message limit. 413, not 429, which
            # HTTP clients and proxies retry, and the same request never succeeds.
            response = _error(413, failure.code, failure.message)
        else:
            response = _grpc_error(failure.code, failure.message)
        if retry_after is not None:
            response.headers["Retry-After"] = str(math.ceil(retry_after))  # HTTP counts whole seconds
        return response

    @app.exception_handler(Refused)
    async def refused(_: Request, refusal: Refused) -> JSONResponse:
        return _error(refusal.status, refusal.code, refusal.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        """Routing answers (no such route, wrong method, with its Allow header) in the same error shape as everything else."""
        code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(error.status_code, grpc.StatusCode.UNKNOWN)
        message = str(error.detail)
        if error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:200]}; use {(error.headers or {}).get('Allow', 'another method')}"
        elif error.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path[:200]} (the routes: /docs)"
        response = _error(error.status_code, code, message)
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_: Request, error: RequestValidationError) -> JSONResponse:
        return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, validation_message(error.errors(), skip=1))

    # The /v1 answers are the upstream's proto as JSON, already the response model's shape: sent as is,
    # without FastAPI validating them again (response_model documents them in the OpenAPI schema).
    # Bodies are read by `body` (bodies.py), not by FastAPI: `json_body` documents them in the OpenAPI schema.
    @app.post("/v1/recommend", response_model=RecommendResponse, tags=["ranker"], summary="RankerService/Recommend",
              openapi_extra=json_body(RecommendRequest))  # fmt: skip
    async def recommend(request: Request):
        message = await body(request, RecommendRequest, to_proto)
        answer = await _unless_client_leaves(request, upstream.recommend(message, _metadata(request)))
        return answer if isinstance(answer, JSONResponse) else JSONResponse(from_proto(answer))

    # `:path` lets an id hold "/" (ids are any 1 to 256 characters).
    @app.api_route("/v1/items/{item_id:path}", methods=READ_METHODS, response_model=Item, tags=["catalog"], summary="CatalogService/GetItems for one id")
    async def get_item(item_id: str, request: Request, include_vectors: bool = False):
        if len(item_id) > MAX_ID_CHARS:
            raise invalid(f"item_id: at most {MAX_ID_CHARS} characters, got {len(item_id)}")
        item = await _unless_client_leaves(request, upstream.get_item(item_id, include_vectors, _metadata(request)))
        if isinstance(item, JSONResponse):
            return item
        if item is None:
            return _grpc_error(grpc.StatusCode.NOT_FOUND, f"item_id: {item_id!r} is not in the catalog")
        return JSONResponse(from_proto(item))

    @app.post("/v1/items", response_model=UpsertItemsResponse, tags=["catalog"], summary="CatalogService/UpsertItems (write scope)",
              openapi_extra=json_body(UpsertItemsRequest))  # fmt: skip
    async def upsert_items(request: Request):
        message = await body(request, UpsertItemsRequest, to_proto)
        return JSONResponse(from_proto(await upstream.upsert_items(message, _metadata(request))))

    @app.api_route("/health", methods=READ_METHODS, tags=["operations"], summary="SERVING only when the ranker and the catalog both are")
    async def health():
        if drain.draining:
            return JSONResponse({"status": "NOT_SERVING", "reason": SHUTTING_DOWN}, status_code=503)
        upstreams, down = await upstream.health()
        serving = all(status == "SERVING" for status in upstreams.values())
        report = {"status": "SERVING" if serving else "NOT_SERVING", "upstreams": upstreams}
        if down:
            report["down"] = down
        if upstreams[RANKER.name] == "NOT_SERVING":  # it answered: say which of its dependencies it waits for
            dependencies = await upstream.ranker_dependencies()
            if dependencies:
                report["ranker_dependencies"] = dependencies
        return JSONResponse(report, status_code=200 if serving else 503)

    # The process alone, as the services' gRPC `liveness` name: an orchestrator's liveness probe must not restart the
    # gateway for an upstream's outage, which /health reports.
    @app.api_route("/health/liveness", methods=READ_METHODS, tags=["operations"], summary="SERVING while the gateway answers, whatever its upstreams")
    async def liveness():
        return JSONResponse({"status": "SERVING"})

    @app.api_route("/metrics", methods=READ_METHODS, include_in_schema=False)
    async def metrics():
        return Response(prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    if store is None:
        # An API-only gateway (--study off) scales to many replicas: it keeps no state. The study is another gateway's.
        @app.api_route("/", methods=READ_METHODS, include_in_schema=False)
        @app.api_route("/v1/study/{rest:path}", methods=sorted(HTTP_METHODS), include_in_schema=False)
        async def study_off():
            return _grpc_error(grpc.StatusCode.NOT_FOUND, STUDY_OFF)
    else:
        @app.post("/v1/study/comparisons", tags=["study"], summary="answer a request personalized and non-personal, store what is shown",
                  openapi_extra=json_body(study.ComparisonRequest))  # fmt: skip
        async def create_comparison(request: Request):
            check_token(request)
            asked = await body(request, study.ComparisonRequest, study.read_comparison)
            comparison_id = await _unless_client_leaves(request, study.compare(upstream, store, asked, blind, _metadata(request)))
            if isinstance(comparison_id, JSONResponse):
                return comparison_id
            return await asyncio.to_thread(study.comparison_view, store, comparison_id)

        @app.api_route("/v1/study/comparisons/{comparison_id}", methods=READ_METHODS, tags=["study"], summary="a stored comparison with its judgements")
        async def get_comparison(comparison_id: ComparisonId, request: Request):
            check_token(request)
            try:
                return await asyncio.to_thread(study.comparison_view, store, comparison_id)
            except UnknownComparison as error:
                return _grpc_error(grpc.StatusCode.NOT_FOUND, f"comparison_id: {error}")

        @app.put("/v1/study/comparisons/{comparison_id}/judgements", tags=["study"], summary="mark a shown item relevant or not",
                 openapi_extra=json_body(study.JudgementRequest))  # fmt: skip
        async def judge(comparison_id: ComparisonId, request: Request):
            check_token(request)
            asked = await body(request, study.JudgementRequest)
            if asked.position not in POSITIONS:
                return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"position: must be left or right, got {asked.position!r}")
            try:
                judgement = await asyncio.to_thread(store.judge, comparison_id, asked.position, asked.rank, asked.relevant)
            except UnknownComparison as error:
                return _grpc_error(grpc.StatusCode.NOT_FOUND, f"comparison_id: {error}")
            except NotShown as error:
                return _grpc_error(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            return {"comparison_id": comparison_id, "position": judgement.position, "rank": judgement.rank, "relevant": judgement.relevant}

        @app.api_route("/v1/study/users", methods=READ_METHODS, tags=["study"], summary="users to offer in the page's picker")
        async def users(request: Request):
            check_token(request)
            judged = await asyncio.to_thread(store.judged_users)
            return {"users": list(dict.fromkeys([*suggested_users, *judged]))}

        @app.api_route("/", methods=READ_METHODS, include_in_schema=False)
        async def page():
            return FileResponse(STATIC / "index.html")

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def openapi() -> dict:
        """FastAPI's schema, plus the body models the routes read themselves (bodies.py), under components."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in BODY_MODELS if store is not None else API_BODY_MODELS:
                model_schema = model.model_json_schema(ref_template=COMPONENT_REF)
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


COMPONENT_REF = "#/components/schemas/{model}"
API_BODY_MODELS = (RecommendRequest, UpsertItemsRequest)
BODY_MODELS = (*API_BODY_MODELS, study.ComparisonRequest, study.JudgementRequest)
STUDY_OFF = (
    "this gateway serves the API only (--study off): the study page and its judgements are served by a gateway "
    "started with --study on"
)
# Comparison ids are SQLite rowids: a larger number is refused as a parameter instead of overflowing the store.
ComparisonId = Annotated[JsonInteger, PathParameter(ge=1, le=MAX_INT64)]


def json_body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": COMPONENT_REF.format(model=model.__name__)}}}}}
