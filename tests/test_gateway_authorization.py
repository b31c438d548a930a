"""An Authorization header gRPC metadata cannot carry, sent over loopback to a real gateway: 401 saying what is wrong
with it (the first character at fault and where, or its length), never echoing it, since it is a credential.

The gateway has no upstreams (the fixture of tests/test_gateway_oversized_input.py): the header is refused before any
call would be made.
"""

import httpx
import pytest

from tests.test_gateway_oversized_input import gateway  # noqa: F401 (a real gateway without upstreams)

TOKEN = "shopper-token-0123456789abcdefghijklmnopqrstuvw"  # 47 characters: "Bearer " and it are 54


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        ("Bearer\t" + TOKEN, "authorization: a tab at position 7 of 54; must be printable ASCII (Bearer <token>)"),
        # UTF-8 on the wire; the gateway reads header bytes one character each, so "ö" is two.
        ("Bearer t\u00f6k\u00e9n" + TOKEN, "authorization: a non-ASCII character at position 9 of 61; must be printable ASCII (Bearer <token>)"),
        ("Bearer " + TOKEN + "\x7f", "authorization: a control character at position 55 of 55; must be printable ASCII (Bearer <token>)"),
        ("Bearer " + TOKEN * 200, "authorization: at most 7168 characters, got 9407"),
    ],
    ids=["tab", "non-ascii", "delete", "too-long"],
)
def test_an_unusable_authorization_is_401_saying_what_is_wrong_and_never_echoed(gateway, authorization, message):  # noqa: F811
    """Every such header was "must be 1 to 7168 printable ASCII characters (Bearer <token>), got 55 characters": the
    length, which was fine, named as the fault of a tab or an accented letter."""
    response = httpx.post(
        f"http://127.0.0.1:{gateway.port}/v1/recommend", json={"query": "boots", "top_k": 1},
        headers={"authorization": authorization.encode("utf-8")}, timeout=30,
    )  # fmt: skip
    assert response.status_code == 401, response.text
    assert response.json() == {"error": {"code": "UNAUTHENTICATED", "message": message}}
    assert TOKEN not in response.text and "Bearer\t" not in response.text
    assert response.headers["x-request-id"]
