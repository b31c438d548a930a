"""Fixtures for the gateway tests: a gateway over its own real catalog and text-only ranker, and its items.

Its own catalog, so the items the gateway tests upsert never change what other tests count in the
session's shared one.
"""

import httpx
import pytest

from tests.servers import start_catalog, start_gateway, start_service

# Shop items of a few kinds, so a request and a user's recent items point at different ones.
TITLES = {
    "boots": ["Black leather ankle boots", "Brown suede chelsea boots", "Waterproof hiking boots", "Knee-high riding boots"],
    "dresses": ["Red floral summer dress", "Light linen wedding guest dress", "Black cocktail dress", "Blue maxi beach dress"],
    "watches": ["Steel automatic men's watch", "Gold quartz dress watch", "Digital sports watch", "Leather strap chronograph watch"],
    "coats": ["Warm down winter coat", "Wool camel overcoat", "Rain trench coat", "Quilted puffer jacket"],
    "shoes": ["White running shoes", "Canvas slip-on sneakers", "Patent leather heels", "Strappy summer sandals"],
}
ITEMS = [
    {"item_id": f"gw-{kind}-{n}", "title": title, "category": kind, "price": 20.0 + 10 * n}
    for kind, titles in TITLES.items()
    for n, title in enumerate(titles)
]
WATCH_IDS = [item["item_id"] for item in ITEMS if item["category"] == "watches"]


@pytest.fixture(scope="session")
def gateway_catalog(tmp_path_factory, encoder_service):
    service = start_catalog(tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("gateway-catalog"), encoder_service.address)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway_ranker(tmp_path_factory, encoder_service, gateway_catalog):
    """A ranker without a trained model over the gateway's catalog: text-only and recent-items paths."""
    service = start_service(
        "ranker", tmp_path_factory.mktemp("logs"), "--model-dir", str(tmp_path_factory.mktemp("no-model")),
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", gateway_catalog.address,
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, gateway_ranker, gateway_catalog):
    service = start_gateway(tmp_path_factory.mktemp("logs"), gateway_ranker.address, gateway_catalog.address, tmp_path_factory.mktemp("state"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway_url(gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


@pytest.fixture(scope="session")
def gateway_items(gateway_url) -> list[dict]:
    """ITEMS upserted through the gateway's own POST /v1/items."""
    response = httpx.post(f"{gateway_url}/v1/items", json={"items": ITEMS}, timeout=300)
    assert response.status_code == 200, response.text
    assert response.json() == {"upserted_count": len(ITEMS), "embedded_count": len(ITEMS)}
    return ITEMS
