"""Gateway entry point: `whisperlite serve gateway` (flags, env vars, wiring; uvicorn serves the app)."""

import argparse
import asyncio
import logging
import signal
import socket
from pathlib import Path

import uvicorn

from whisperlite.core.topology import CATALOG, DEFAULT_MAX_MESSAGE_BYTES, GATEWAY, RANKER
from whisperlite.services.common.auth import TokenFileError, TokenStore
from whisperlite.services.common.config import (
    add_probe_flags, env_bool, env_choice, env_float, env_int, env_port, env_str, port_number, probe_settings, service_address,
)
from whisperlite.services.common.logs import configure_logging
from whisperlite.services.common.security import is_loopback
from whisperlite.services.common.tls import check_certificate_file
from whisperlite.services.gateway.app import BodyLimits, create_app
from whisperlite.services.gateway.browsers import cors_origins
from whisperlite.services.gateway.connections import MAX_REQUEST_HEAD_BYTES, gateway_protocol
from whisperlite.services.gateway.judgements import JudgementStore
from whisperlite.services.gateway.shutdown import Drain, DrainingServer
from whisperlite.core.client_security import ENV_CA_FILE, ClientSecurity
from whisperlite.services.gateway.upstream import Upstream

log = logging.getLogger("whisperlite.gateway")
PREFIX = GATEWAY.env_prefix
STUDY_CHOICES = ("on", "off")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisperlite serve gateway", description="Serve the HTTP/JSON gateway and the judgement page.")
    # Not add_server_flags: those describe a gRPC server (its metrics port, and the gRPC security flags
    # issue 9 adds there), which the HTTP gateway is not.
    parser.add_argument(
        "--host",
        default=env_str(f"{PREFIX}_HOST", "127.0.0.1"),
        help=f"bind address; loopback by default, [::] or 0.0.0.0 to be reachable from other hosts (env {PREFIX}_HOST)",
    )
    parser.add_argument(
        "--port", type=port_number, default=env_port(f"{PREFIX}_PORT", GATEWAY.port), help=f"HTTP port of the API, the page and /metrics (env {PREFIX}_PORT)"
    )
    parser.add_argument("--ranker-addr", type=service_address, default=env_str(RANKER.address_env, RANKER.local_address), help=f"ranker address (env {RANKER.address_env})")
    parser.add_argument(
        "--catalog-addr", type=service_address, default=env_str(CATALOG.address_env, CATALOG.local_address), help=f"catalog address (env {CATALOG.address_env})"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env_str(f"{PREFIX}_STATE_DIR", "var")),
        help=f"folder of the judgement store judgements.sqlite, with --study on (env {PREFIX}_STATE_DIR)",
    )
    parser.add_argument(
        "--study",
        choices=STUDY_CHOICES,
        default=env_choice(f"{PREFIX}_STUDY", "on", STUDY_CHOICES),
        help="on: also serve the judgement page and its store (one replica: SQLite); off: the API only, no state, any "
        f"number of replicas (env {PREFIX}_STUDY)",
    )
    parser.add_argument(
        "--blind",
        action="store_true",
        default=env_bool(f"{PREFIX}_BLIND", False),
        help=f"study page shows the two lists in random order without side, path, score or affinity (env {PREFIX}_BLIND)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        default=env_bool(f"{PREFIX}_ACCESS_LOG", False),
        help="log one line per request (method, route, status, seconds, request id), the gateway's own refusals too; "
        f"off, a request the gateway refused left its request id in no log (env {PREFIX}_ACCESS_LOG)",
    )
    parser.add_argument(
        "--suggested-users",
        default=env_str(f"{PREFIX}_SUGGESTED_USERS", ""),
        help=f"comma-separated user ids the page offers to pick, beside those already judged (env {PREFIX}_SUGGESTED_USERS)",
    )
    parser.add_argument(
        "--deadline-seconds",
        type=float,
        default=env_float(f"{PREFIX}_DEADLINE_SECONDS", 10.0),
        help=f"deadline of each upstream gRPC call (env {PREFIX}_DEADLINE_SECONDS)",
    )
    add_probe_flags(
        parser, PREFIX, "upstream", "the ranker's and the catalog's health are",
        "checks of one in a row without an answer make its calls fail at once with 503 and Retry-After, and let go of "
        "those waiting on it, until it answers again", "an upstream",
    )  # fmt: skip
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=env_int(f"{PREFIX}_MAX_BODY_BYTES", 64 * 1024 * 1024),
        help=f"largest HTTP request body accepted; JSON spells numbers out, so it is above --max-message-bytes (env {PREFIX}_MAX_BODY_BYTES)",
    )
    parser.add_argument(
        "--max-buffered-body-bytes",
        type=int,
        default=env_int(f"{PREFIX}_MAX_BUFFERED_BODY_BYTES", BodyLimits.max_buffered_body_bytes),
        help="request bodies held at once, all callers together; past it a body is refused with 429 and Retry-After "
        f"(env {PREFIX}_MAX_BUFFERED_BODY_BYTES)",
    )
    parser.add_argument(
        "--body-timeout-seconds",
        type=float,
        default=env_float(f"{PREFIX}_BODY_TIMEOUT_SECONDS", BodyLimits.body_timeout_seconds),
        help=f"time a request's body may take to arrive, else 408 and the connection closed (env {PREFIX}_BODY_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--header-timeout-seconds",
        type=float,
        default=env_float(f"{PREFIX}_HEADER_TIMEOUT_SECONDS", 10.0),
        help="time a request's headers may take to arrive, from the connection's start or its previous answer, else 408 "
        f"and the connection closed (env {PREFIX}_HEADER_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=env_int(f"{PREFIX}_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES),
        help=f"largest gRPC message sent upstream or received (env {PREFIX}_MAX_MESSAGE_BYTES)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=env_float(f"{PREFIX}_GRACE_SECONDS", 10.0),
        help=f"how long in-flight requests may finish after SIGTERM (env {PREFIX}_GRACE_SECONDS)",
    )
    parser.add_argument(
        "--cors-origins",
        default=env_str(f"{PREFIX}_CORS_ORIGINS", ""),
        help="comma-separated origins (https://shop.example) whose pages may call the API from the browser, or *; empty: "
        f"only the gateway's own page (env {PREFIX}_CORS_ORIGINS)",
    )
    parser.add_argument("--log-level", default=env_str("LOG_LEVEL", "INFO"), help="log level (env LOG_LEVEL)")
    upstream = parser.add_argument_group("upstream TLS (docs/security.md); callers' tokens are forwarded as they came")
    upstream.add_argument(
        "--tls-ca-file", default=env_str(ENV_CA_FILE, ""),
        help=f"PEM CA of the ranker's and catalog's certificates; set: calls to them use TLS (env {ENV_CA_FILE})",
    )
    upstream.add_argument(
        "--tls-cert-file", default=env_str(f"{PREFIX}_TLS_CERT_FILE", ""),
        help=f"client certificate presented to upstreams that require mTLS (env {PREFIX}_TLS_CERT_FILE)",
    )
    upstream.add_argument("--tls-key-file", default=env_str(f"{PREFIX}_TLS_KEY_FILE", ""), help=f"its private key (env {PREFIX}_TLS_KEY_FILE)")
    parser.add_argument(
        "--auth-tokens-file", default=env_str("WHISPERLITE_AUTH_TOKENS_FILE", ""),
        help="bearer tokens checked on the routes the gateway answers from its own store (the study's comparisons and "
        "judgements: the 'recommend' scope, as creating one needs at the ranker), the ranker's file; re-read on SIGHUP. "
        "The API's routes are checked by the ranker and catalog. Empty: the study's routes are open "
        "(env WHISPERLITE_AUTH_TOKENS_FILE)",
    )
    return parser


def study_tokens(args: argparse.Namespace) -> TokenStore | None:
    if not args.auth_tokens_file:
        if args.study == "on" and (args.tls_ca_file or not is_loopback(args.host)):
            log.warning(
                "the study's comparisons and judgements are open to any caller: no --auth-tokens-file",
                extra={"host": args.host},
            )
        return None
    try:
        return TokenStore(args.auth_tokens_file)
    except TokenFileError as error:
        raise SystemExit(f"{GATEWAY.name}: {error}") from None


def upstream_security(args: argparse.Namespace) -> ClientSecurity:
    """TLS towards the ranker and catalog, without a token of the gateway's own: each call carries its caller's."""
    try:
        security = ClientSecurity(ca_file=args.tls_ca_file, cert_file=args.tls_cert_file, key_file=args.tls_key_file)
        security.channel_credentials()  # unreadable files stop start-up here, not at the first call
        if security.cert_file:
            check_certificate_file(security.cert_file)
    except (OSError, ValueError) as error:
        raise SystemExit(f"{GATEWAY.name}: upstream TLS: {error}") from None
    return security


def listening_socket(host: str, port: int) -> socket.socket:
    """Binds the way the gRPC services do: "[::]" takes IPv6 and IPv4 connections alike.

    uvicorn (asyncio) would open an IPv6 socket as IPv6-only, so a browser at 127.0.0.1 would be refused.
    """
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    # Accepted connections inherit it. Without it a response leaves in two writes and the second waits
    # for the client's delayed ACK: measured 44 ms instead of 5 ms per call (benchmarks/gateway_overhead.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"{GATEWAY.name}: cannot bind HTTP port {host}:{port}: {error.strerror}") from None
    return sock


async def run(args: argparse.Namespace) -> None:
    try:
        body_limits = BodyLimits(args.max_body_bytes, args.max_buffered_body_bytes, args.body_timeout_seconds)
        origins = cors_origins(args.cors_origins)
        protocol = gateway_protocol(args.header_timeout_seconds, body_limits.max_body_bytes)
        probes = probe_settings(args, "upstream")
    except ValueError as error:
        raise SystemExit(f"{GATEWAY.name}: {error}") from None
    upstream = Upstream(
        args.ranker_addr, args.catalog_addr, deadline_seconds=args.deadline_seconds, max_message_bytes=args.max_message_bytes,
        security=upstream_security(args), probes=probes,
    )
    tokens = study_tokens(args)

    def reload_tokens() -> None:
        if tokens is not None:
            tokens.reload()
        else:
            log.info("SIGHUP: no --auth-tokens-file to re-read")

    # Always handled: SIGHUP's default action ends the process, and a token rotation signals every service of a stack
    # (`docker compose kill -s HUP`); the gateway without a token file died of it, dropping the requests in flight.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_tokens)
    store = JudgementStore.in_folder(args.state_dir) if args.study == "on" else None
    drain = Drain()
    suggested = tuple(user.strip() for user in args.suggested_users.split(",") if user.strip())
    app = create_app(
        upstream, store, blind=args.blind, suggested_users=suggested, body_limits=body_limits, max_message_bytes=args.max_message_bytes,
        cors_origins=origins, tokens=tokens, drain=drain, access_log=args.access_log,
    )
    sock = listening_socket(args.host, args.port)
    config = uvicorn.Config(
        app, http=protocol, log_config=None, access_log=False, timeout_graceful_shutdown=args.grace_seconds,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,  # the head limit the protocol's 414 and 431 name
    )
    judgements = str(store.path) if store is not None else "none (--study off)"
    log.info("listening", extra={"service": GATEWAY.name, "http_port": args.port, "judgements": judgements, "blind": args.blind})
    # SIGTERM/SIGINT: new requests get 503 while those in flight finish (within --grace-seconds), then uvicorn stops
    # accepting, ends what is left and runs the app's shutdown (closes the channels and the store); exit 0.
    await DrainingServer(config, drain, args.grace_seconds).serve(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, service=GATEWAY.name)
    asyncio.run(run(args))
