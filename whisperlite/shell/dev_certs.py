"""A development CA, a certificate per service, a client certificate and bearer tokens.

    .venv/bin/python scripts/dev_certs.py --out deploy/secrets [--host my.host.name] [--container-readable]

writes (files that exist are kept, so re-running never invalidates what is deployed):
    ca.pem ca-key.pem                   the CA every service and client trusts (keep ca-key.pem private)
    <service>.pem <service>-key.pem     one per service; names: the compose service, localhost, 127.0.0.1, ::1
    client.pem client-key.pem           a client certificate for mTLS callers (CLI, ingest, health probes)
    tokens.txt                          the services' --auth-tokens-file
    shopper.token ingest.token service.token admin.token   one bearer token each (recommend; recommend,write;
                                        recommend for service-to-service calls; admin)
For development and tests only: production certificates come from the organisation's CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from whisperlite.core.topology import SERVICES

# Bearer tokens `whisperlite up --secure` and docker-compose hand out: file stem -> scopes.
TOKENS = {"shopper": "recommend", "ingest": "recommend,write", "service": "recommend", "admin": "admin"}
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class KeyPair:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "WhisperLite development"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))


def new_ca(common_name: str = "WhisperLite development CA", days: int = 3650) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
    )
    return KeyPair(_validity(builder, days).sign(key, hashes.SHA256()), key)


def issue(ca: KeyPair, common_name: str, hosts: list[str], days: int = 825) -> KeyPair:
    """A leaf for `hosts` (DNS names or IPs) usable as server and as client certificate: services
    present theirs to downstream services that require mTLS."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return KeyPair(_validity(builder, days).sign(ca.key, hashes.SHA256()), key)


def new_token() -> str:
    """32 random bytes in URL-safe base64 (43 characters), never starting with "-": a command line reads such a token,
    given as `--token VALUE`, as a flag ("argument --token: expected one argument"). One that does (1 in 64) is drawn
    again, which leaves 255.98 of its 256 bits of entropy."""
    token = secrets.token_urlsafe(32)
    while token.startswith("-"):
        token = secrets.token_urlsafe(32)
    return token


def _load(cert_path: Path, key_path: Path) -> KeyPair:
    return KeyPair(x509.load_pem_x509_certificate(cert_path.read_bytes()), serialization.load_pem_private_key(key_path.read_bytes(), None))


def write_dev_pki(out: Path, extra_hosts: list[str] | tuple[str, ...] = (), container_readable: bool = False) -> Path:
    """Creates what is missing under `out` (see the module docstring); returns `out`. Keys and tokens
    are private to their owner unless `container_readable` (bind mounts keep host permissions, and
    the images run as uid 10001)."""
    out.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key = out / "ca.pem", out / "ca-key.pem"
    if not ca_pem.exists():
        new_ca().write(ca_pem, ca_key)
    ca = _load(ca_pem, ca_key)
    for name, hosts in [*((service.name, [service.name]) for service in SERVICES), ("client", [])]:
        cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
        if not cert_path.exists():
            issue(ca, name, [*hosts, *LOCAL_NAMES, *extra_hosts]).write(cert_path, key_path)
    tokens_file = out / "tokens.txt"
    if not tokens_file.exists():
        lines = ["# token scope[,scope]  (docs/security.md); SIGHUP makes the services re-read this file"]
        for stem, scopes in TOKENS.items():
            token = new_token()
            token_path = out / f"{stem}.token"
            token_path.touch(mode=0o600)
            token_path.write_text(token + "\n")
            lines.append(f"{token} {scopes}")
        tokens_file.touch(mode=0o600)
        tokens_file.write_text("\n".join(lines) + "\n")
    if container_readable:
        for path in out.iterdir():
            os.chmod(path, 0o644)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("deploy/secrets"), help="output directory (default deploy/secrets)")
    parser.add_argument("--host", action="append", default=[], help="another name or IP every certificate is valid for (repeatable)")
    parser.add_argument(
        "--container-readable", action="store_true",
        help="make keys and tokens readable by other users (docker-compose bind mounts them into containers running as uid 10001)",
    )
    args = parser.parse_args(argv)
    out = write_dev_pki(args.out, args.host, args.container_readable)
    print(f"development CA, certificates and tokens in {out}")
