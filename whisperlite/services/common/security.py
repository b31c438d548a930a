"""What a server needs to know about its callers: the tokens file, its certificates, reflection."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from dataclasses import dataclass

from whisperlite.services.common.auth import AuthInterceptor, TokenFileError, TokenStore
from whisperlite.services.common.tls import CertificateError, CertificateFiles, ReloadingCertificates

log = logging.getLogger("whisperlite.server")


@dataclass(frozen=True)
class ServerSecurity:
    tokens: TokenStore | None = None  # None: no authentication (local development)
    certificates: ReloadingCertificates | None = None  # None: plaintext
    reflection: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerSecurity:
        """From the flags of `add_security_flags`; unreadable or inconsistent files stop start-up."""
        if bool(args.tls_cert_file) != bool(args.tls_key_file):
            raise SystemExit("TLS needs both --tls-cert-file and --tls-key-file")
        if args.tls_client_ca_file and not args.tls_cert_file:
            raise SystemExit("--tls-client-ca-file (mTLS) needs --tls-cert-file and --tls-key-file")
        try:
            tokens = TokenStore(args.auth_tokens_file) if args.auth_tokens_file else None
            certificates = (
                ReloadingCertificates(
                    CertificateFiles(
                        args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file, getattr(args, "tls_ca_file", "")
                    )
                )
                if args.tls_cert_file
                else None
            )
        except (TokenFileError, CertificateError) as error:
            raise SystemExit(str(error)) from None
        return cls(tokens, certificates, args.reflection)

    def interceptors(self) -> list[AuthInterceptor]:
        return [AuthInterceptor(self.tokens)] if self.tokens is not None else []

    def reload(self) -> None:
        """SIGHUP: re-read the tokens now and the certificates at the next handshake."""
        if self.tokens is not None:
            self.tokens.reload()
        if self.certificates is not None:
            self.certificates.reload()

    def warn_if_exposed(self, name: str, host: str) -> None:
        if is_loopback(host):
            return
        if self.tokens is None:
            log.warning(
                "bound to a non-loopback address without authentication: anyone who reaches the port can call every "
                "method, writes included; give --auth-tokens-file (docs/security.md)",
                extra={"service": name, "host": host},
            )
        elif self.certificates is None:
            log.warning(
                "bearer tokens travel in plaintext on a non-loopback address; give --tls-cert-file and --tls-key-file",
                extra={"service": name, "host": host},
            )


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False
