"""Flags shared by the commands that call a service: TLS roots, client certificate, bearer token
(every such command) and, for the typed clients, deadline, retries and the certificate name."""

from __future__ import annotations

import argparse
import os
import re

from whisperlite.core.client_security import ENV_CA_FILE, ENV_CERT_FILE, ENV_KEY_FILE, ENV_TOKEN, ENV_TOKEN_FILE, ClientSecurity
from whisperlite.core.clients.connection import ClientOptions, check_timeout
from whisperlite.core.topology import check_address

# The flags naming the service a command calls. Checked here, where every such command builds its security before
# any call: gRPC dialled a port past 65535 modulo 65536 (`catalog count --catalog localhost:116288` counted the
# catalog on 50752 and exited 0).
ADDRESS_FLAGS = ("catalog", "ranker")


def add_client_security_flags(parser: argparse.ArgumentParser, token: bool = True, defaults: bool = True) -> None:
    """TLS and token flags of every command that calls a service (docs/security.md). `defaults=False` adds them
    without defaults, for a sub-command that repeats its group's flags: a default there would overwrite the value
    given before the sub-command."""

    def default(env: str):
        return os.environ.get(env, "") if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("security (docs/security.md)")
    if token:
        group.add_argument("--token", default=default(ENV_TOKEN), help=f"bearer token sent as 'authorization' (env {ENV_TOKEN})")
        group.add_argument("--token-file", default=default(ENV_TOKEN_FILE), help=f"or a file holding it (env {ENV_TOKEN_FILE})")
    group.add_argument(
        "--tls-ca-file", default=default(ENV_CA_FILE), help=f"PEM CA of the server's certificate; set: TLS (env {ENV_CA_FILE})",
    )
    group.add_argument(
        "--tls-cert-file", default=default(ENV_CERT_FILE),
        help=f"client certificate for servers that require mTLS (env {ENV_CERT_FILE})",
    )
    group.add_argument("--tls-key-file", default=default(ENV_KEY_FILE), help=f"its private key (env {ENV_KEY_FILE})")


def client_security(args: argparse.Namespace) -> ClientSecurity:
    """The ClientSecurity those flags describe; unreadable files, and a service address that is no host:port, stop the
    command before any call."""
    for flag in ADDRESS_FLAGS:
        try:
            if hasattr(args, flag):
                check_address(getattr(args, flag))
        except ValueError as error:
            raise SystemExit(f"--{flag}: {error}") from None
    try:
        security = ClientSecurity(
            ca_file=args.tls_ca_file,
            cert_file=args.tls_cert_file,
            key_file=args.tls_key_file,
            token=getattr(args, "token", ""),
            token_file=getattr(args, "token_file", ""),
        )
        security.channel_credentials()  # unreadable files: say which, before any call
        security.bearer_token()
    except (OSError, ValueError) as error:
        raise SystemExit(str(error)) from None
    return security


def add_client_flags(parser: argparse.ArgumentParser, timeout_seconds: float) -> None:
    """The security flags plus what the typed clients also take: deadline, retries, certificate name."""
    group = parser.add_argument_group("connection")
    group.add_argument("--timeout", type=seconds, default=timeout_seconds, help=f"deadline of each call in seconds (default {timeout_seconds:g})")
    group.add_argument("--max-attempts", type=int, default=3, help="attempts per call while the service answers UNAVAILABLE (1-5, default 3)")
    group.add_argument("--tls-server-name", help="name the server's certificate must carry, when not the address' host")
    add_client_security_flags(parser)


def client_options(args: argparse.Namespace) -> ClientOptions:
    """The typed clients' options those flags describe; bad values stop the command before any call."""
    try:
        return ClientOptions(
            timeout_seconds=args.timeout,
            max_attempts=args.max_attempts,
            tls_server_name=args.tls_server_name,
            security=client_security(args),
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None


def seconds(text: str) -> float:
    """An argparse type: a deadline in seconds, positive and finite (0, -1 or nan failed every call with
    DEADLINE_EXCEEDED), refused by argparse naming the flag."""
    try:
        return check_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}") from None


def at_least(minimum: int, at_most: int | None = None):
    """An argparse type: a whole number no smaller than `minimum` (nor larger than `at_most`), refused by argparse
    naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most}, got {value}")
        return value

    return parse


def utf8_text(text: str) -> str:
    """An argparse type: text that is UTF-8, refused by argparse naming the flag. Python reads argv's other bytes as
    lone surrogates, which fail deep in the call ("'utf-8' codec can't encode character '\\udcff'"), naming nothing."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        byte = text[error.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(
            f"not UTF-8 text (byte 0x{byte.hex()} at character {error.start + 1}); set a UTF-8 locale or re-encode it"
        ) from None
    return text


# gRPC's words for a connection the server closed while it was set up ("connections to all backends failing; last
# error: UNAVAILABLE: ipv4:127.0.0.1:50052: Socket closed"; "failed to connect to all addresses; ..." with one
# address). A server that requires client certificates (mTLS) closes so the connection of a client that presents none,
# after a TLS 1.3 handshake the client took for done: no alert says why, and a server going away while a client
# connects reads the same, so such a failure is still retried (catalog import), with client_certificate_hint. A
# connection dropped during a call reads "Stream removed": no certificate's fault.
CLOSED_WHILE_CONNECTING = re.compile(r"last error: .*Socket closed")


def client_certificate_hint(error, security: ClientSecurity | None, service: str) -> str:
    """The likely cause of a call over TLS without a client certificate whose connection the server closed while it
    was set up (`CLOSED_WHILE_CONNECTING`), to append to gRPC's words; else ""."""
    import grpc

    if security is None or error.code() != grpc.StatusCode.UNAVAILABLE or not security.ca_file or security.cert_file:
        return ""
    if not CLOSED_WHILE_CONNECTING.search(error.details() or ""):
        return ""
    return f" (if the {service} requires client certificates (mTLS), pass --tls-cert-file and --tls-key-file)"


def call_failed(error, address: str, service: str, security: ClientSecurity | None = None) -> SystemExit:
    """A failed call as the command's one-line exit, with the likely cause where gRPC's own words name none; with the
    command's `security`, a client certificate the server may require is among the causes."""
    import grpc

    hint = ""
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        hint = f" ({address} does not serve the {service}'s API: is it another service's address?)"
    elif certificate := client_certificate_hint(error, security, service):
        hint = certificate
    elif error.code() == grpc.StatusCode.UNAVAILABLE and address not in (error.details() or ""):
        # gRPC's own words name no service ("Stream removed (Socket closed)", "failed to connect to all addresses").
        hint = f" (the {service} at {address} gave no answer: is it running, or restarting? run the command again once it serves)"
    return SystemExit(f"{error.code().name}: {error.details()}{hint}")
