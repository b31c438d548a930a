"""The checks a service's certificate files pass before they serve, read from real PEM files written here: bundles cut
short, and what a reloaded certificate must keep of the one in force (`check_successor`). The reload itself, on a
real TLS server, is tested in tests/test_security.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisperlite.services.common.tls import CertificateError, CertificateFiles, load_configuration, check_successor, pem_certificates
from whisperlite.shell.dev_certs import KeyPair, issue, new_ca

HOSTS = ["catalog", "localhost", "127.0.0.1"]


def _files(directory: Path, pair: KeyPair, stem: str, **ca_files: str) -> CertificateFiles:
    pair.write(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
    return CertificateFiles(str(directory / f"{stem}.pem"), str(directory / f"{stem}-key.pem"), **ca_files)


@pytest.fixture(scope="module")
def cas():
    return new_ca("old CA"), new_ca("new CA")


def test_a_ca_bundle_cut_short_is_refused_naming_the_file(tmp_path, cas):
    """The parser skips an incomplete last block: a bundle of the old CA and half the new one loaded as the old CA
    alone, and every client of the new CA was refused."""
    old, new = cas
    whole = tmp_path / "both.pem"
    whole.write_bytes(old.cert_pem + new.cert_pem)
    assert len(pem_certificates(whole.read_bytes(), str(whole))) == 2
    with pytest.raises(CertificateError, match=r"both-cut.pem: 2 certificates begin but 1 read whole"):
        pem_certificates(old.cert_pem + new.cert_pem[:400], str(tmp_path / "both-cut.pem"))
    server = issue(old, "catalog", HOSTS)
    (tmp_path / "client-ca.pem").write_bytes(old.cert_pem + new.cert_pem[:400])
    with pytest.raises(CertificateError, match="cut short"):
        load_configuration(_files(tmp_path, server, "server", client_ca_file=str(tmp_path / "client-ca.pem")))
    chain = issue(old, "catalog", HOSTS)  # a leaf and a damaged intermediate: only the leaf was read
    (tmp_path / "chain.pem").write_bytes(chain.cert_pem + new.cert_pem[:-80])
    (tmp_path / "chain-key.pem").write_bytes(chain.key_pem)
    with pytest.raises(CertificateError, match="chain.pem: 2 certificates begin but 1"):
        load_configuration(CertificateFiles(str(tmp_path / "chain.pem"), str(tmp_path / "chain-key.pem")))


def test_a_successor_may_add_names_and_keep_its_ca(tmp_path, cas):
    old, _ = cas
    in_force = load_configuration(_files(tmp_path, issue(old, "catalog", HOSTS), "in-force"))
    files = _files(tmp_path, issue(old, "catalog", [*HOSTS, "catalog.prod.internal"]), "next")
    check_successor(in_force, load_configuration(files), files)


def test_a_successor_that_drops_a_name_is_refused_naming_it(tmp_path, cas):
    old, _ = cas
    in_force = load_configuration(_files(tmp_path, issue(old, "catalog", HOSTS), "in-force"))
    files = _files(tmp_path, issue(old, "catalog", ["catalog", "localhost"]), "next")
    with pytest.raises(CertificateError, match=r"does not name 127\.0\.0\.1, which the certificate in force names"):
        check_successor(in_force, load_configuration(files), files)


def test_a_common_name_read_as_the_host_name_it_is(tmp_path, cas):
    """A certificate without alternative names is checked by its common name: the same name as a DNS entry is kept."""
    old, _ = cas
    in_force = load_configuration(_files(tmp_path, issue(old, "catalog", []), "in-force"))
    files = _files(tmp_path, issue(old, "whatever", ["Catalog"]), "next")
    check_successor(in_force, load_configuration(files), files)


def test_a_successor_of_a_new_ca_serves_only_once_a_ca_file_of_the_service_holds_that_ca(tmp_path, cas):
    old, new = cas
    in_force = load_configuration(_files(tmp_path, issue(old, "catalog", HOSTS), "in-force"))
    successor = issue(new, "catalog", HOSTS)
    (tmp_path / "old-ca.pem").write_bytes(old.cert_pem)
    (tmp_path / "both-cas.pem").write_bytes(old.cert_pem + new.cert_pem)
    for ca_files, refusal in [
        ({}, "by no CA in a CA file of this service"),
        ({"downstream_ca_file": str(tmp_path / "old-ca.pem")}, "by no CA in .*old-ca.pem"),
        ({"client_ca_file": str(tmp_path / "old-ca.pem")}, "by no CA in .*old-ca.pem"),
    ]:
        files = _files(tmp_path, successor, "next", **ca_files)
        with pytest.raises(CertificateError, match=f"is issued by CN=new CA,O=WhisperLite development, not by CN=old CA,O=WhisperLite development .*{refusal}"):
            check_successor(in_force, load_configuration(files), files)
    for ca_files in ({"downstream_ca_file": str(tmp_path / "both-cas.pem")}, {"client_ca_file": str(tmp_path / "both-cas.pem")}):
        files = _files(tmp_path, successor, "next", **ca_files)
        check_successor(in_force, load_configuration(files), files)
    # A CA that merely shares the new one's name does not vouch for it: the signature is checked.
    impostor = new_ca("new CA")
    (tmp_path / "impostor.pem").write_bytes(impostor.cert_pem)
    files = _files(tmp_path, successor, "next", downstream_ca_file=str(tmp_path / "impostor.pem"))
    with pytest.raises(CertificateError, match="is issued by CN=new CA"):
        check_successor(in_force, load_configuration(files), files)
