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
    group.add_argument(
        "--tls-ca-file", type=Path, default=os.environ.get("WHISPERLITE_TLS_CA_FILE") or None,
        help="PEM roots the server's certificate must chain to; implies TLS (env WHISPERLITE_TLS_CA_FILE)",
    )  # fmt: skip
    group.add_argument(
        "--tls-cert-file", type=Path, default=os.environ.get("WHISPERLITE_TLS_CERT_FILE") or None,
        help="client certificate for servers that require mTLS (env WHISPERLITE_TLS_CERT_FILE)",
    )  # fmt: skip
    group.add_argument(
        "--tls-key-file", type=Path, default=os.environ.get("WHISPERLITE_TLS_KEY_FILE") or None,
        help="its private key (env WHISPERLITE_TLS_KEY_FILE)",
    )  # fmt: skip
    group.add_argument("--tls-server-name", help="name the server's certificate must carry, when not the address' host")
    group.add_argument(
        "--token", default=os.environ.get("WHISPERLITE_TOKEN"), help="bearer token sent as `authorization: Bearer` (env WHISPERLITE_TOKEN)"
    )


def _read(flag: str, path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path else None
    except OSError as error:
        raise SystemExit(f"{flag}: cannot read {path}: {error.strerror}") from None


def client_options(args: argparse.Namespace) -> ClientOptions:
    """The options those flags describe; unreadable files stop the command before any call."""
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise SystemExit("--tls-cert-file and --tls-key-file go together (a client certificate and its key)")
    try:
        return ClientOptions(
            timeout_seconds=args.timeout,
            max_attempts=args.max_attempts,
            tls=args.tls,
            root_certificates=_read("--tls-ca-file", args.tls_ca_file),
            certificate_chain=_read("--tls-cert-file", args.tls_cert_file),
            private_key=_read("--tls-key-file", args.tls_key_file),
            tls_server_name=args.tls_server_name,
            token=args.token or None,
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
