"""The development tokens `scripts/dev_certs.py` and `whisperlite up --secure` write: given as `--token VALUE` to the
real command line, and to a real catalog over TLS that reads the tokens file written beside them."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.servers import REPO, start_catalog
from whisperlite.core.client_security import ClientSecurity
from whisperlite.shell.cli import build_parser
from whisperlite.shell.dev_certs import TOKENS, new_token, write_dev_pki

# One in 64 tokens started with "-" before: the chance that none of these would is (63/64)**4000, about 3e-28.
TOKENS_DRAWN = 4000
URL_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 random bytes in URL-safe base64


def test_tokens_never_start_with_a_dash_and_keep_their_alphabet_and_length():
    tokens = [new_token() for _ in range(TOKENS_DRAWN)]
    assert all(URL_SAFE_TOKEN.fullmatch(token) for token in tokens)
    assert not [token for token in tokens if token.startswith("-")]
    assert len(set(tokens)) == TOKENS_DRAWN
    # Every other character of the alphabet still starts one, and "-" still appears after the first.
    assert len({token[0] for token in tokens}) == 63
    assert any("-" in token for token in tokens)


def test_every_token_is_read_by_the_command_line_as_the_value_of_token():
    """`whisperlite recommend --token "$(cat shopper.token)"` failed "argument --token: expected one argument" for a
    token starting with "-", which argparse reads as a flag."""
    parser = build_parser(["recommend"])
    for _ in range(TOKENS_DRAWN):
        token = new_token()
        assert parser.parse_args(["recommend", "--query", "boots", "--token", token]).token == token


def test_a_written_token_file_given_as_token_is_accepted_by_a_catalog_over_tls(tmp_path):
    secrets = write_dev_pki(tmp_path / "secrets")
    catalog = start_catalog(
        tmp_path / "logs", tmp_path / "catalog", "", "--dimension", "4", "--encoder-model", "test-vectors",
        "--auth-tokens-file", str(secrets / "tokens.txt"),
        "--tls-cert-file", str(secrets / "catalog.pem"), "--tls-key-file", str(secrets / "catalog-key.pem"),
        security=ClientSecurity(ca_file=str(secrets / "ca.pem")),
    )  # fmt: skip
    try:
        for stem in TOKENS:
            assert not (secrets / f"{stem}.token").read_text().startswith("-")
        shopper = (secrets / "shopper.token").read_text().strip()
        counted = subprocess.run(
            [sys.executable, "-m", "whisperlite", "catalog", "count", "--catalog", catalog.address,
             "--tls-ca-file", str(secrets / "ca.pem"), "--token", shopper],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (counted.returncode, counted.stdout) == (0, "0\n"), counted.stderr
    finally:
        catalog.stop()
