"""Server TLS (and mTLS) whose certificate files are re-read when they change or on SIGHUP.

gRPC asks `_fetch` for the certificate configuration at every new connection's handshake; it
answers None (keep the current one) unless a file changed on disk or SIGHUP asked for a reload.
Established connections keep their session, so a rotation drops no call. A half-written rotation
(a key that does not match the certificate, a truncated PEM) or a certificate outside its validity
dates (a stale file copied in) is refused and the previous pair stays in force until the files are
right again.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("whisperlite.tls")


class CertificateError(ValueError):
    pass


@dataclass(frozen=True)
class CertificateFiles:
    cert_file: str
    key_file: str
    client_ca_file: str = ""  # set: clients must present a certificate signed by it (mTLS)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path in (self.cert_file, self.key_file, self.client_ca_file) if path)


def _stamp(paths: tuple[str, ...]) -> tuple:
    stamps = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(stamps)


def _read(path: str, what: str) -> bytes:
    try:
        return open(path, "rb").read()
    except OSError as error:
        raise CertificateError(f"cannot read the {what} {path}: {error.strerror}") from None


# A certificate this close to its end is logged at WARNING each time it is loaded: time to rotate it.
EXPIRY_WARNING = datetime.timedelta(days=14)


def check_dates(certificate: x509.Certificate, path: str) -> None:
    """Refuses a certificate outside its validity (peers would refuse every handshake); warns near its end."""
    now = datetime.datetime.now(datetime.timezone.utc)
    starts, ends = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < starts:
        raise CertificateError(f"the certificate {path} is not valid before {starts:%Y-%m-%d %H:%M} UTC: peers would refuse it")
    if now > ends:
        raise CertificateError(f"the certificate {path} expired on {ends:%Y-%m-%d %H:%M} UTC: peers would refuse it")
    if ends - now < EXPIRY_WARNING:
        log.warning("certificate expires soon: rotate it", extra={"cert_file": path, "expires": ends.isoformat()})


def check_certificate_file(path: str) -> None:
    """`check_dates` of a PEM certificate file (a client certificate presented to mTLS servers)."""
    try:
        check_dates(x509.load_pem_x509_certificate(_read(path, "certificate")), path)
    except ValueError as error:
        raise CertificateError(str(error) if isinstance(error, CertificateError) else f"{path} is not a PEM certificate") from None


def load_configuration(files: CertificateFiles) -> grpc.ServerCertificateConfiguration:
    """Reads and checks the files: the key must be the certificate's, the client CA a certificate."""
    cert_pem, key_pem = _read(files.cert_file, "certificate"), _read(files.key_file, "private key")
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CertificateError(f"{files.cert_file} is not a PEM certificate") from None
    check_dates(certificate, files.cert_file)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError(f"{files.key_file} is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != certificate.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        raise CertificateError(f"the private key {files.key_file} does not belong to the certificate {files.cert_file}")
    client_ca = None
    if files.client_ca_file:
        client_ca = _read(files.client_ca_file, "client CA")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise CertificateError(f"{files.client_ca_file} holds no PEM certificate") from None
    return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=client_ca)


class ReloadingCertificates:
    """Dynamic server credentials over `files`; `reload()` (SIGHUP) forces a re-read at the next handshake."""

    def __init__(self, files: CertificateFiles):
        self.files = files
        self._stamp = _stamp(files.paths)
        self._initial = load_configuration(files)  # start-up refuses bad files outright
        self._forced = False
        self._refused_stamp: tuple | None = None  # files already found inconsistent: not re-read (nor logged) each handshake

    @property
    def requires_client_certificates(self) -> bool:
        return bool(self.files.client_ca_file)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=self.requires_client_certificates
        )

    def reload(self) -> None:
        self._forced = True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = _stamp(self.files.paths)
        if stamp in (self._stamp, self._refused_stamp) and not self._forced:
            return None
        self._forced = False
        try:
            configuration = load_configuration(self.files)
        except CertificateError as error:
            self._refused_stamp = stamp
            log.error("certificates not reloaded; the previous ones stay in force", extra={"reason": str(error)})
            return None
        self._stamp = stamp
        log.info("certificates reloaded", extra={"cert_file": self.files.cert_file})
        return configuration
