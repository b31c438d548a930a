"""Bearer-token authentication and per-method scopes, checked once for every service.

The tokens file (`--auth-tokens-file`) holds one `token scope[,scope]` per line (`#` comments and
blank lines are skipped); SIGHUP re-reads it, so a token is added or revoked without a restart.
Scopes are decided by the full method name: `recommend` reads (Recommend, Search, Embed, Get*),
`write` changes the catalog (Upsert, Delete) and exports it (ListItems), `admin` everything else, so a method added later is
closed until it is mapped (deny by default). Health checks stay open: orchestrators probe them
without credentials. Tokens never reach a log line or a metric label.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import Counter

from whisperlite.core.client_security import is_bearer_token
from whisperlite.services.common.interceptors import without_admission
from whisperlite.services.common.logs import ThrottledWarning

log = logging.getLogger("whisperlite.auth")

RECOMMEND, WRITE, ADMIN = "recommend", "write", "admin"
SCOPES = frozenset({RECOMMEND, WRITE, ADMIN})
# Shorter tokens are guessable; `python -c "import secrets; print(secrets.token_hex(32))"` makes a good one (hex: never a leading "-", which a --token flag would read as another flag).
MIN_TOKEN_CHARS = 16

# Services every caller may use without a token.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
# Reflection lists every method (write RPCs included): only authenticated callers may ask.
_REFLECTION = {
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": RECOMMEND,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": RECOMMEND,
}
METHOD_SCOPES = {
    "/whisperlite.v1.RankerService/Recommend": RECOMMEND,
    "/whisperlite.v1.QueryEncoderService/Embed": RECOMMEND,
    "/whisperlite.v1.QueryEncoderService/GetModelInfo": RECOMMEND,
    "/whisperlite.v1.CatalogService/Search": RECOMMEND,
    "/whisperlite.v1.CatalogService/SearchBatch": RECOMMEND,
    "/whisperlite.v1.CatalogService/GetItems": RECOMMEND,
    "/whisperlite.v1.CatalogService/GetStats": RECOMMEND,
    "/whisperlite.v1.CatalogService/UpsertItems": WRITE,
    "/whisperlite.v1.CatalogService/DeleteItems": WRITE,
    # Pages through the whole catalog (`whisperlite catalog export`): for those who load it, not for shoppers' callers.
    "/whisperlite.v1.CatalogService/ListItems": WRITE,
    **_REFLECTION,
}

REJECTED = Counter(
    "whisperlite_auth_rejected_total",
    "Calls refused by authentication (UNAUTHENTICATED) or scope (PERMISSION_DENIED).",
    ["grpc_service", "grpc_method", "grpc_code"],
)


def required_scope(full_method: str) -> str | None:
    """The scope a call needs; None for the open services."""
    service = full_method.lstrip("/").rpartition("/")[0]
    if service in OPEN_SERVICES:
        return None
    return METHOD_SCOPES.get(full_method, ADMIN)


class TokenFileError(ValueError):
    pass


@dataclass(frozen=True)
class _Grant:
    token: bytes
    scopes: frozenset[str]


def parse_tokens(text: str, source: str) -> tuple[_Grant, ...]:
    """Grants of a tokens file; errors name the line, never the token."""
    grants: list[_Grant] = []
    seen: set[bytes] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise TokenFileError(f"{source}:{number}: expected 'token scope[,scope]', got {len(fields)} fields")
        if not is_bearer_token(fields[0]):
            raise TokenFileError(f"{source}:{number}: the token must be printable ASCII: gRPC metadata cannot carry it otherwise")
        token, scope_list = fields[0].encode(), fields[1]
        if len(token) < MIN_TOKEN_CHARS:
            raise TokenFileError(f"{source}:{number}: the token is shorter than {MIN_TOKEN_CHARS} characters")
        scopes = frozenset(scope for scope in scope_list.split(",") if scope)
        unknown = scopes - SCOPES
        if unknown or not scopes:
            raise TokenFileError(f"{source}:{number}: unknown scope {sorted(unknown) or scope_list!r}; scopes are {sorted(SCOPES)}")
        if token in seen:
            raise TokenFileError(f"{source}:{number}: the same token is listed twice")
        seen.add(token)
        grants.append(_Grant(token, scopes))
    if not grants:  # a truncated write during a rotation: every caller would be locked out
        raise TokenFileError(f"{source}: holds no token; every call would be refused (list at least one 'token scope[,scope]')")
    return tuple(grants)


@dataclass(frozen=True)
class Denial:
    code: grpc.StatusCode
    message: str
    reason: str  # short, token-free label for logs


class TokenStore:
    """The grants of the tokens file; `reload()` swaps them in whole (a bad file keeps the old ones)."""

    def __init__(self, path: str):
        self.path = path
        self._grants = self._read()

    def _read(self) -> tuple[_Grant, ...]:
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except OSError as error:
            raise TokenFileError(f"cannot read the tokens file {self.path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise TokenFileError(f"the tokens file {self.path} is not UTF-8 text") from None
        return parse_tokens(text, self.path)

    def __len__(self) -> int:
        return len(self._grants)

    def reload(self) -> None:
        try:
            grants = self._read()
        except TokenFileError as error:
            log.error("tokens file not reloaded; the previous tokens stay in force", extra={"reason": str(error)})
            return
        self._grants = grants
        log.info("tokens file reloaded", extra={"path": self.path, "tokens": len(grants)})

    def _scopes_of(self, token: bytes) -> frozenset[str] | None:
        # Every grant is compared, each in constant time, so timing tells nothing about which
        # token (or how much of one) matched.
        found = None
        for grant in self._grants:
            if hmac.compare_digest(grant.token, token):
                found = grant.scopes
        return found

    def check(self, authorization: list[str], full_method: str, scope: str) -> Denial | None:
        """None when the `authorization` metadata values grant `scope`, else why not."""
        if not authorization:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization' metadata: send 'authorization: Bearer <token>'", "missing"
            )
        scheme, _, token = authorization[0].partition(" ")
        token = token.strip()
        if len(authorization) > 1 or scheme.lower() != "bearer" or not token or " " in token:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED, "malformed 'authorization' metadata: expected one 'Bearer <token>'", "malformed"
            )
        scopes = self._scopes_of(token.encode())
        if scopes is None:
            return Denial(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked bearer token", "unknown token")
        if scope not in scopes:
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{full_method.lstrip('/')} needs the '{scope}' scope; this token has {', '.join(sorted(scopes))}",
                "missing scope",
            )
        return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call before its handler runs (the request is not even parsed) unless its token grants the scope."""

    def __init__(self, tokens: TokenStore):
        self._tokens = tokens
        self._refusal_log = ThrottledWarning(log, "call refused")  # the counts by method and code: the metric

    async def intercept_service(self, continuation, handler_call_details):
        scope = required_scope(handler_call_details.method)
        handler = await continuation(handler_call_details)
        if scope is None or handler is None:  # open, or unknown to this server (UNIMPLEMENTED)
            return handler
        authorization = [value for key, value in handler_call_details.invocation_metadata or () if key == "authorization"]
        denial = self._tokens.check(authorization, handler_call_details.method, scope)
        if denial is None:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        REJECTED.labels(service, method, denial.code.name).inc()
        self._refusal_log.record(
            f"{denial.code.name}: {denial.reason}", grpc_method=handler_call_details.method, grpc_code=denial.code.name, reason=denial.reason
        )
        return _refusing(handler, denial)


def _refusing(handler: grpc.RpcMethodHandler, denial: Denial) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers `denial`; no deserializer, so untrusted bytes stay unparsed."""

    @without_admission
    async def refuse(_request, context: grpc.aio.ServicerContext):
        await context.abort(denial.code, denial.message)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)
