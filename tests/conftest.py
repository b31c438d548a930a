"""Session-wide fixtures: the three real services on loopback over a real milvus-lite store."""

from pathlib import Path

import pytest

from tests.servers import start_catalog, start_service

# Fixture modules shared by several test files.
pytest_plugins = ["tests.fixtures_data", "tests.fixtures_encoder", "tests.fixtures_gateway"]

DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.is_dir():
        pytest.fail(f"{DATASETS} is missing: CI runs with ../shared beside the clone")
    return DATASETS


@pytest.fixture(scope="session")
def encoder_service(tmp_path_factory):
    service = start_service("query-encoder", tmp_path_factory.mktemp("logs"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def catalog_service(tmp_path_factory, encoder_service):
    service = start_catalog(tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("catalog"), encoder_service.address)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def text_only_ranker(tmp_path_factory, encoder_service, catalog_service):
    """A ranker without a trained model: every request takes the text-only (or recent-items) path."""
    service = start_service(
        "ranker",
        tmp_path_factory.mktemp("logs"),
        "--model-dir",
        str(tmp_path_factory.mktemp("no-model")),
        "--query-encoder-addr",
        encoder_service.address,
        "--catalog-addr",
        catalog_service.address,
    )
    yield service
    service.stop()


@pytest.fixture
def shared_catalog_items(catalog_service):
    """Ids a test upserts into the session catalog: deleted afterwards, so tests that count the
    catalog's items (tests/test_e2e_services.py) see only their own."""
    from whisperlite.core.clients.catalog_admin import CatalogAdminClient

    written: list[str] = []
    yield written
    if written:
        with CatalogAdminClient(catalog_service.address, timeout_seconds=60) as catalog:
            catalog.delete(written)
