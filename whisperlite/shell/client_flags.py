"""Connection flags shared by the commands that call a service (recommend, catalog ...)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from whisperlite.core.clients.connection import ClientOptions


def add_client_flags(parser: argparse.ArgumentParser, timeout_seconds: float) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--timeout", type=float, default=timeout_seconds, help=f"deadline of each call in seconds (default {timeout_seconds:g})")
    group.add_argument("--max-attempts", type=int, default=3, help="attempts per call while the service answers UNAVAILABLE (1-5, default 3)")
    group.add_argument("--tls", action="store_true", help="connect over TLS, trusting the system's root certificates")
    group.add_argument("--ca", type=Path, help="PEM file of the root certificates to trust (implies --tls)")
    group.add_argument("--tls-server-name", help="name the server's certificate must carry, when not the address' host")
    group.add_argument(
        "--token", default=os.environ.get("WHISPERLITE_TOKEN"), help="bearer token sent as `authorization: Bearer` (env WHISPERLITE_TOKEN)"
    )


def client_options(args: argparse.Namespace) -> ClientOptions:
    try:
        root_certificates = args.ca.read_bytes() if args.ca else None
    except OSError as error:
        raise SystemExit(f"--ca: cannot read {args.ca}: {error.strerror}") from None
    try:
        return ClientOptions(
            timeout_seconds=args.timeout,
            max_attempts=args.max_attempts,
            tls=args.tls,
            root_certificates=root_certificates,
            tls_server_name=args.tls_server_name,
            token=args.token or None,
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
