"""How a client proves who it is and checks whom it talks to: TLS roots, an optional client
certificate (for mTLS servers) and a bearer token sent as `authorization: Bearer <token>`.

One value describes it for every kind of caller: the services' downstream channels (ranker ->
encoder/catalog, catalog -> encoder), `RankerClient`, the CLI, `whisperlite ingest` and health probes.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

# Where the CLI, `whisperlite ingest` and the image health checks read their defaults from.
ENV_CA_FILE, ENV_CERT_FILE, ENV_KEY_FILE = "WHISPERLITE_TLS_CA_FILE", "WHISPERLITE_TLS_CERT_FILE", "WHISPERLITE_TLS_KEY_FILE"
ENV_TOKEN, ENV_TOKEN_FILE = "WHISPERLITE_TOKEN", "WHISPERLITE_TOKEN_FILE"

log = logging.getLogger("whisperlite.security")


@dataclass(frozen=True)
class ClientSecurity:
    ca_file: str = ""  # PEM roots the server's certificate must chain to; set: the channel uses TLS
    cert_file: str = ""  # client certificate and key, presented to servers that require mTLS
    key_file: str = ""
    token: str = ""  # bearer token sent with every call
    token_file: str = ""  # or a file holding it (a Docker secret), re-read whenever it changes

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs both --tls-cert-file and --tls-key-file")
        if (self.cert_file or self.key_file) and not self.ca_file:
            raise ValueError("a client certificate is only sent over TLS: give --tls-ca-file as well")
        if self.token and self.token_file:
            raise ValueError("give a token or a token file, not both")
        if self.token and not is_bearer_token(self.token):
            raise ValueError("--token: must be printable ASCII without spaces (gRPC metadata cannot carry it otherwise)")

    @classmethod
    def from_env(cls) -> ClientSecurity:
        """From the WHISPERLITE_TLS_* and WHISPERLITE_TOKEN[_FILE] variables (unset: plaintext, no token)."""
        env = os.environ.get
        return cls(env(ENV_CA_FILE, ""), env(ENV_CERT_FILE, ""), env(ENV_KEY_FILE, ""), env(ENV_TOKEN, ""), env(ENV_TOKEN_FILE, ""))

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel (local development)."""
        if not self.ca_file:
            return None
        certificate_chain = _read_bytes(self.cert_file) if self.cert_file else None
        private_key = _read_bytes(self.key_file) if self.key_file else None
        roots = _read_bytes(self.ca_file)
        if b"-----BEGIN CERTIFICATE-----" not in roots:  # else every handshake fails naming nothing
            raise ValueError(f"{self.ca_file}: not a PEM certificate (-----BEGIN CERTIFICATE-----)")
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=private_key, certificate_chain=certificate_chain)

    @property
    def sends_token(self) -> bool:
        return bool(self.token or self.token_file)

    def bearer_token(self) -> str:
        """The token; from a token file, as it is now. A file that cannot be read (deleted, emptied: a secret being
        rotated) gives the last token read from it, logged once per state of the file; with none read yet it raises."""
        if not self.token_file:
            return self.token
        try:
            stat = os.stat(self.token_file)
            token = _read_token(self.token_file, stat.st_mtime_ns, stat.st_size)
        except (OSError, ValueError) as error:
            last = _LAST_GOOD_TOKENS.get(self.token_file)
            if last is None:
                raise ValueError(f"token file {self.token_file}: {getattr(error, 'strerror', None) or error}") from None
            if _UNREADABLE.get(self.token_file) != str(error):
                _UNREADABLE[self.token_file] = str(error)
                log.error("token file unreadable: calls keep its last token", extra={"token_file": self.token_file, "reason": str(error)})
            return last
        _LAST_GOOD_TOKENS[self.token_file] = token
        _UNREADABLE.pop(self.token_file, None)
        return token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the token (empty without one)."""
        token = self.bearer_token()
        return (("authorization", f"Bearer {token}"),) if token else ()


PLAINTEXT = ClientSecurity()
# token file -> the last token read from it, and the error it gave since (logged once)
_LAST_GOOD_TOKENS: dict[str, str] = {}
_UNREADABLE: dict[str, str] = {}


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None


@functools.lru_cache(maxsize=16)
def _read_token(path: str, _mtime_ns: int, _size: int) -> str:
    """The token in `path`; cached per (mtime, size), so a rotated secret is picked up on the next call."""
    token = _read_bytes(path).decode(errors="replace").strip()
    if not is_bearer_token(token):
        raise ValueError(f"token file {path} must hold one token of printable ASCII without spaces")
    return token


def is_bearer_token(token: str) -> bool:
    """What gRPC metadata carries as a token: printable ASCII without spaces (the services' tokens files hold the same)."""
    return bool(token) and token.isascii() and token.isprintable() and not any(char.isspace() for char in token)


class BearerTokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` to every unary call of an asyncio channel."""

    def __init__(self, security: ClientSecurity):
        self._security = security

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), *self._security.metadata())
        return await continuation(client_call_details._replace(metadata=metadata), request)
