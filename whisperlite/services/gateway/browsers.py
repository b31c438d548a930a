"""What the gateway tells browsers: security headers on every answer, and which other origins' pages may call
the API (CORS)."""

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# On every answer: the browser never guesses a type (a JSON error echoing a caller's text is not run as HTML), no
# page frames the gateway (the judgement buttons cannot be clickjacked), and no URL (a comparison id) leaks as a
# referrer. The study page loads only its own script and stylesheet and calls only this origin; answers that are
# not pages load nothing. /docs is Swagger UI, which runs an inline script and loads from a CDN.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
NOTHING_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
PAGE_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": PAGE_POLICY}
# Every answer that is no page: the app's, and those the connection writes below the app (connections.py).
API_ANSWER_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": NOTHING_POLICY}
SWAGGER_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
# A page on another origin (a shop's front end) calling /v1 from the browser: what it may send and read.
CORS_METHODS = ("GET", "HEAD", "POST", "PUT")
CORS_REQUEST_HEADERS = ("authorization", "content-type", "x-request-id", "traceparent", "tracestate")
CORS_RESPONSE_HEADERS = ("x-request-id", "retry-after")
CORS_MAX_AGE_SECONDS = 600


def add_security_headers(path: str, response: Response) -> None:
    if path in SWAGGER_PATHS:
        headers = SECURITY_HEADERS
    elif path == "/" or path.startswith("/static/"):
        headers = PAGE_HEADERS
    else:
        headers = API_ANSWER_HEADERS
    for name, value in headers.items():
        response.headers.setdefault(name, value)


def cors_origins(value: str) -> tuple[str, ...]:
    """The origins of --cors-origins: comma-separated `scheme://host[:port]` as a browser sends them in `Origin`, or
    `*` alone (any page; tokens still decide what a call may do). Empty: no other origin's page may call."""
    # Browsers send the scheme and host in lower case, and CORS compares the strings exactly.
    origins = tuple(origin.strip().lower() for origin in value.split(",") if origin.strip())
    if "*" in origins and len(origins) > 1:
        raise ValueError(f"cors-origins: '*' allows every origin and cannot be listed with others, got {value!r}")
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment or origin.endswith("/"):
            raise ValueError(f"cors-origins: {origin!r} is not an origin: write scheme://host[:port], as in https://shop.example")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"cors-origins: {origin!r} has no valid port") from None
    return origins


class ObservedCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, which answers a preflight itself: the app's middleware never sees it, so it is handed to
    `observe(scope, status, seconds)` to be counted with the app's requests."""

    def __init__(self, app: ASGIApp, *, observe: Callable[[Scope, int, float], None], **options) -> None:
        super().__init__(app, **options)
        self._observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_preflight(scope):
            await super().__call__(scope, receive, send)
            return
        started, status = time.perf_counter(), 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, send_observed)
        finally:
            self._observe(scope, status, time.perf_counter() - started)


def _is_preflight(scope: Scope) -> bool:
    """What CORSMiddleware answers without calling the app (its own test, read the same way)."""
    if scope["type"] != "http" or scope["method"] != "OPTIONS":
        return False
    headers = Headers(scope=scope)
    return "origin" in headers and "access-control-request-method" in headers
