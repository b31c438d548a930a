"""How the public clients connect: address, deadline, retries, TLS, bearer token, request ids.

Imports only grpc and the standard library, so `pip install whisperlite[client]` (grpcio + protobuf)
is all a caller needs.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from whisperlite.core.client_security import ClientSecurity
from whisperlite.core.request_context import REQUEST_ID, REQUEST_ID_KEY, REQUEST_ID_RULE
from whisperlite.core.topology import DEFAULT_MAX_MESSAGE_BYTES

# gRPC caps a retry policy at 5 attempts whatever the service config says.
MAX_ATTEMPTS_CAP = 5


@dataclass(frozen=True)
class ClientOptions:
    """Everything but the address a client needs to reach a WhisperLite service.

    - timeout_seconds: deadline of each call (retries included).
    - max_attempts: calls answered UNAVAILABLE (a replica restarting, a connection dropped) are
      retried by gRPC itself, with exponential backoff, up to this many attempts in all (1: never).
    - tls / root_certificates: TLS with the system's roots, or with these PEM roots (a private CA).
    - certificate_chain / private_key: PEM client certificate and key, for servers that require
      mutual TLS.
    - tls_server_name: the name to check the server's certificate against, when it differs from
      the address' host (an IP address, a tunnel).
    - token: sent as `authorization: Bearer <token>` on every call.
    - security: instead of the TLS and token fields, a ClientSecurity (files: a CA, a client
      certificate, a token file re-read when it changes), as the CLI and the services use.
    """

    timeout_seconds: float = 10.0
    max_attempts: int = 3
    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    tls_server_name: str | None = None
    token: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    security: ClientSecurity | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_CAP:
            raise ValueError(f"max_attempts: must be between 1 and {MAX_ATTEMPTS_CAP}, got {self.max_attempts}")
        check_timeout(self.timeout_seconds)
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs both certificate_chain and private_key")
        own_fields = self.tls or self.root_certificates or self.certificate_chain or self.token
        if self.security is not None and own_fields:
            raise ValueError("give either security or the tls/root_certificates/certificate_chain/token fields, not both")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if self.security is not None:
            return self.security.channel_credentials()
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    @property
    def secure(self) -> bool:
        if self.security is not None:
            return bool(self.security.ca_file)
        return self.tls or self.root_certificates is not None or self.certificate_chain is not None

    def token_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.security is not None:
            return self.security.metadata()
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def service_config(grpc_services: Sequence[str], max_attempts: int) -> str:
    """round_robin over every address the name resolves to, and gRPC's own retries of UNAVAILABLE."""
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": name} for name in grpc_services],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def _target(address: str) -> str:
    # The dns resolver returns every replica behind a name, which round_robin needs.
    return address if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:")) else f"dns:///{address}"


def _channel_arguments(options: ClientOptions, grpc_services: Sequence[str]) -> list[tuple[str, object]]:
    arguments: list[tuple[str, object]] = [
        ("grpc.service_config", service_config(grpc_services, options.max_attempts)),
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if options.tls_server_name:
        arguments.append(("grpc.ssl_target_name_override", options.tls_server_name))
    return arguments


def sync_channel(address: str, options: ClientOptions, grpc_services: Sequence[str]) -> grpc.Channel:
    arguments = _channel_arguments(options, grpc_services)
    if options.secure:
        return grpc.secure_channel(_target(address), options.channel_credentials(), arguments)
    return grpc.insecure_channel(_target(address), arguments)


def async_channel(address: str, options: ClientOptions, grpc_services: Sequence[str]) -> grpc.aio.Channel:
    arguments = _channel_arguments(options, grpc_services)
    if options.secure:
        return grpc.aio.secure_channel(_target(address), options.channel_credentials(), arguments)
    return grpc.aio.insecure_channel(_target(address), arguments)


def check_timeout(seconds: float) -> float:
    """A deadline in seconds: positive and finite (NaN or infinity would fail every call at once)."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"timeout_seconds: must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


def call_metadata(options: ClientOptions, request_id: str | None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The call's request id (the caller's, or a new one) and the metadata that carries it."""
    if request_id is None:
        request_id = uuid.uuid4().hex
    elif not REQUEST_ID.fullmatch(request_id):
        raise ValueError(f"request_id: {REQUEST_ID_RULE}, got {request_id[:40]!r}")
    return request_id, ((REQUEST_ID_KEY, request_id), *options.token_metadata())


class _Client:
    GRPC_SERVICE = ""  # full protobuf service name, set by each client (retry policy scope)

    def __init__(self, address: str, options: ClientOptions | None = None, **option_fields):
        """`options`, or ClientOptions' fields as keywords (timeout_seconds=30, token=...)."""
        self.address = address
        self.options = options or ClientOptions(**option_fields)

    def _call_kwargs(self, request_id: str | None, timeout_seconds: float | None) -> tuple[str, dict]:
        request_id, metadata = call_metadata(self.options, request_id)
        timeout = self.options.timeout_seconds if timeout_seconds is None else check_timeout(timeout_seconds)
        return request_id, {"metadata": metadata, "timeout": timeout}


class SyncClient(_Client):
    """A blocking client of one WhisperLite service; use as a context manager or call close()."""

    def __init__(self, address: str, options: ClientOptions | None = None, **option_fields):
        super().__init__(address, options, **option_fields)
        self._channel = sync_channel(address, self.options, [self.GRPC_SERVICE])

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Client):
    """An asyncio client of one WhisperLite service; use with `async with` or await close()."""

    def __init__(self, address: str, options: ClientOptions | None = None, **option_fields):
        super().__init__(address, options, **option_fields)
        self._channel = async_channel(address, self.options, [self.GRPC_SERVICE])

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
