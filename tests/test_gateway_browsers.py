"""--cors-origins as the operator writes it: what is accepted, normalized and refused (the browser tests use it live)."""

import pytest

from whisperlite.services.gateway.browsers import cors_origins


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("", ()),
        (" , ", ()),
        ("https://shop.example", ("https://shop.example",)),
        ("https://Shop.Example:8443, http://localhost:3000", ("https://shop.example:8443", "http://localhost:3000")),
        ("*", ("*",)),
    ],
)
def test_origins_are_read_as_a_browser_sends_them(value, origins):
    assert cors_origins(value) == origins


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("shop.example", "'shop.example' is not an origin"),
        ("https://shop.example/", "'https://shop.example/' is not an origin"),
        ("https://shop.example/app", "is not an origin"),
        ("https://shop.example?x=1", "is not an origin"),
        ("ftp://shop.example", "is not an origin"),
        ("https://", "is not an origin"),
        ("https://shop.example:99999", "has no valid port"),
        ("*, https://shop.example", "'*' allows every origin and cannot be listed with others"),
    ],
)
def test_what_is_not_an_origin_is_refused_saying_how_to_write_one(value, message):
    with pytest.raises(ValueError, match="cors-origins: ") as refused:
        cors_origins(value)
    assert message in str(refused.value)
