"""Server TLS (and mTLS) whose certificate files are re-read when they change or on SIGHUP.

gRPC asks `_fetch` for the certificate configuration at every new connection's handshake; it
answers None (keep the current one) unless a file changed on disk or SIGHUP asked for a reload.
Established connections keep their session, so a rotation drops no call. A half-written rotation
(a key that does not match the certificate, a truncated PEM, a CA bundle cut short) or a certificate
outside its validity dates (a stale file copied in) is refused and the previous pair stays in force
until the files are right again. So is one that the clients of the certificate in force would refuse
at every handshake (`check_successor`): one that drops a name the previous one covered, or one of
another CA that no CA file of this service holds.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("whisperlite.tls")


class CertificateError(ValueError):
    pass


@dataclass(frozen=True)
class CertificateFiles:
    cert_file: str
    key_file: str
    client_ca_file: str = ""  # set: clients must present a certificate signed by it (mTLS)
    # The CA file of this service's own downstream calls: a CA its peers trust, so a reloaded certificate of a new CA
    # may serve once it is there (the CA rotation of docs/security.md puts the new CA in every CA file first).
    downstream_ca_file: str = ""

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path in (self.cert_file, self.key_file, self.client_ca_file) if path)

    @property
    def ca_files(self) -> tuple[str, ...]:
        return tuple(path for path in (self.client_ca_file, self.downstream_ca_file) if path)


@dataclass(frozen=True)
class LoadedCertificates:
    configuration: grpc.ServerCertificateConfiguration
    certificate: x509.Certificate  # the one served: the first of the certificate file
    chain: tuple[x509.Certificate, ...]  # the certificate file's others (intermediates)


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


def pem_certificates(data: bytes, path: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file. The parser skips a last block that is cut short, so a CA bundle truncated
    mid-rotation loaded without the CA it lost (and every client of that CA was refused): a block that begins and
    does not parse refuses the file."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path} holds no PEM certificate") from None
    if len(certificates) != (begun := data.count(b"-----BEGIN CERTIFICATE-----")):
        raise CertificateError(f"{path}: {begun} certificates begin but {len(certificates)} read whole: the file is cut short or damaged")
    return certificates


def check_certificate_file(path: str) -> None:
    """`check_dates` of a PEM certificate file (a client certificate presented to mTLS servers)."""
    check_dates(pem_certificates(_read(path, "certificate"), path)[0], path)


def _names(certificate: x509.Certificate) -> set[str]:
    """The host names and addresses a client may check the certificate against: its subject alternative names (TLS
    clients ignore the common name when there are any), else its common name, read as a host name."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {str(name.value).lower() for name in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
    return {name.lower() for name in names.get_values_for_type(x509.DNSName)} | {
        str(address) for address in names.get_values_for_type(x509.IPAddress)
    }


def _issued_by(certificate: x509.Certificate, candidates: list[x509.Certificate]) -> bool:
    for issuer in candidates:
        try:
            certificate.verify_directly_issued_by(issuer)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def check_successor(in_force: LoadedCertificates, new: LoadedCertificates, files: CertificateFiles) -> None:
    """Refuses a reloaded certificate that the clients of the one in force would refuse at every handshake, which the
    reload logged as a success while every new connection failed: one that drops a name they connect by (a
    certificate of another host copied in), or one issued by another CA unless a CA file of this service holds that
    CA (step one of a CA rotation). A restart takes any valid certificate."""
    if dropped := _names(in_force.certificate) - _names(new.certificate):
        raise CertificateError(
            f"the certificate {files.cert_file} does not name {', '.join(sorted(dropped))}, which the certificate in force "
            "names: clients that connect by it would refuse every handshake (restart the service to drop a name)"
        )
    if new.certificate.issuer == in_force.certificate.issuer:
        return
    known = list(new.chain) + [ca for path in files.ca_files for ca in pem_certificates(_read(path, "CA file"), path)]
    if not _issued_by(new.certificate, known):
        where = f"in {', '.join(files.ca_files)}" if files.ca_files else "in a CA file of this service (it reads none)"
        raise CertificateError(
            f"the certificate {files.cert_file} is issued by {new.certificate.issuer.rfc4514_string()}, not by "
            f"{in_force.certificate.issuer.rfc4514_string()} as the certificate in force, and by no CA {where}: clients "
            "that trust only the old CA would refuse every handshake (put the new CA in the CA files first, or restart)"
        )


def load_configuration(files: CertificateFiles) -> LoadedCertificates:
    """Reads and checks the files: the key must be the certificate's, the client CA a certificate."""
    cert_pem, key_pem = _read(files.cert_file, "certificate"), _read(files.key_file, "private key")
    certificate, *chain = pem_certificates(cert_pem, files.cert_file)
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
        pem_certificates(client_ca, files.client_ca_file)
    configuration = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=client_ca)
    return LoadedCertificates(configuration, certificate, tuple(chain))


class ReloadingCertificates:
    """Dynamic server credentials over `files`; `reload()` (SIGHUP) forces a re-read at the next handshake."""

    def __init__(self, files: CertificateFiles):
        self.files = files
        self._stamp = _stamp(files.paths)
        self._in_force = load_configuration(files)  # start-up refuses bad files outright
        self._forced = False
        self._refused_stamp: tuple | None = None  # files already found inconsistent: not re-read (nor logged) each handshake

    @property
    def requires_client_certificates(self) -> bool:
        return bool(self.files.client_ca_file)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._in_force.configuration, self._fetch, require_client_authentication=self.requires_client_certificates
        )

    def reload(self) -> None:
        self._forced = True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = _stamp(self.files.paths)
        if stamp in (self._stamp, self._refused_stamp) and not self._forced:
            return None
        self._forced = False
        try:
            loaded = load_configuration(self.files)
            check_successor(self._in_force, loaded, self.files)
        except CertificateError as error:
            self._refused_stamp = stamp
            log.error("certificates not reloaded; the previous ones stay in force", extra={"reason": str(error)})
            return None
        self._stamp, self._in_force = stamp, loaded
        log.info("certificates reloaded", extra={"cert_file": self.files.cert_file})
        return loaded.configuration
