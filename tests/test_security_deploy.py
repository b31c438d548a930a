"""The secure set-ups name what the services read: `whisperlite up --secure`'s environment and
docker-compose.secure.yml, checked against the real parsers and the files scripts/dev_certs.py writes."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from unittest import mock

from tests.test_deploy_compose import NON_SERVICE_ENV, _env_vars_read_by, compose_model
from whisperlite.core import client_security
from whisperlite.core.topology import CATALOG, GRPC_SERVICES, QUERY_ENCODER, RANKER
from whisperlite.services.common.config import downstream_security
from whisperlite.services.common.security import ServerSecurity
from whisperlite.shell.dev_certs import write_dev_pki
from whisperlite.shell.up import _secure_env

CLIENT_ENV = {client_security.ENV_CA_FILE, client_security.ENV_CERT_FILE, client_security.ENV_KEY_FILE, client_security.ENV_TOKEN_FILE}
CALLS_DOWNSTREAM = {CATALOG.name, RANKER.name}


def test_up_secure_gives_every_service_tls_tokens_and_its_service_token(tmp_path):
    pki = tmp_path / "security"
    env = _secure_env(pki)
    service_token = (pki / "service.token").read_text().strip()
    for spec in GRPC_SERVICES:
        with mock.patch.dict(os.environ, env, clear=True):
            args = importlib.import_module(spec.module).build_parser().parse_args([])
        security = ServerSecurity.from_args(args)
        assert security.tokens is not None and len(security.tokens) == 4, spec.name
        assert security.certificates is not None and security.certificates.files.cert_file == str(pki / f"{spec.name}.pem")
        if spec.name in CALLS_DOWNSTREAM:
            downstream = downstream_security(args)
            assert (downstream.ca_file, downstream.cert_file) == (str(pki / "ca.pem"), str(pki / f"{spec.name}.pem")), spec.name
            assert downstream.bearer_token() == service_token, spec.name
    # A second `up --secure` keeps what the first one made (running clients keep working).
    before = {path.name: path.read_bytes() for path in pki.iterdir()}
    _secure_env(pki)
    assert {path.name: path.read_bytes() for path in pki.iterdir()} == before


def test_secure_compose_override_names_only_what_services_read_and_dev_certs_writes(tmp_path):
    model = compose_model("docker-compose.yml", "docker-compose.secure.yml")
    written = {path.name for path in write_dev_pki(tmp_path / "secrets").iterdir()}
    secret_files = {name: Path(spec["file"]).name for name, spec in model["secrets"].items()}
    assert set(secret_files.values()) <= written
    for spec in GRPC_SERVICES:
        service = model["services"][spec.name]
        environment = service["environment"]
        unknown = set(environment) - _env_vars_read_by(spec.module) - CLIENT_ENV - NON_SERVICE_ENV
        assert not unknown, f"{spec.name} does not read {sorted(unknown)}"
        assert environment[f"{spec.env_prefix}_TLS_CERT_FILE"] == f"/certs/{spec.name}.pem"
        assert environment["WHISPERLITE_AUTH_TOKENS_FILE"] == "/run/secrets/whisperlite_tokens"
        certs = {mount["target"]: mount for mount in service["volumes"]}["/certs"]
        assert certs.get("read_only"), spec.name
        mounted = {secret["source"] for secret in service["secrets"]}
        for value in environment.values():
            if value.startswith("/certs/"):
                assert Path(value).name in written, value
            if value.startswith("/run/secrets/"):
                assert Path(value).name in mounted, value
        if spec.name in CALLS_DOWNSTREAM:
            assert environment[f"{spec.env_prefix}_DOWNSTREAM_TOKEN_FILE"] == "/run/secrets/whisperlite_service_token"
    # The encoder and the catalog take calls from services only: client certificates required.
    for spec in (QUERY_ENCODER, CATALOG):
        assert model["services"][spec.name]["environment"][f"{spec.env_prefix}_TLS_CLIENT_CA_FILE"] == "/certs/ca.pem"
    assert f"{RANKER.env_prefix}_TLS_CLIENT_CA_FILE" not in model["services"][RANKER.name]["environment"]
    bootstrap = model["services"]["bootstrap"]["environment"]
    assert bootstrap[client_security.ENV_TOKEN_FILE] == "/run/secrets/whisperlite_ingest_token"
    assert re.fullmatch(r"whisperlite_\w+", next(iter(secret_files)))
