"""The compose bootstrap job (deploy/bootstrap.sh) run as a plain process, as its container runs it.

On the smallest real dataset (amazon_fashion_5core_2018) against a fresh catalog: it prepares the
data, trains a model, ingests the catalog, and a ranker started on its model directory serves
personalized recommendations, as the ranker service of docker-compose.yml does after the job.
A second run finds everything done and changes nothing.
"""

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.servers import start_catalog, start_service
from whisperlite.core.clients.ranker import RankerClient
from whisperlite.shell.up import catalog_item_count
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "bootstrap.sh"
DATASET = "amazon_fashion_5core_2018"


def bootstrap(datasets: Path, data: Path, models: Path, catalog: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        # the image puts the project's console scripts on PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "WHISPERLITE_DATASET": DATASET,
        "DATASETS_DIR": str(datasets),
        "DATA_DIR": str(data),
        "MODELS_DIR": str(models),
        "CATALOG_ADDR": catalog,
        **env,
    }
    return subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, env=environment, timeout=900)


@pytest.fixture(scope="module")
def fresh_catalog(tmp_path_factory, encoder_service):
    service = start_catalog(
        tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("bootstrap-catalog"), encoder_service.address
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, datasets_dir, fresh_catalog):
    root = tmp_path_factory.mktemp("bootstrap")
    data, models = root / "data", root / "models"
    models.mkdir()
    result = bootstrap(datasets_dir, data, models, fresh_catalog.address)
    return result, data, models


def test_prepares_trains_and_ingests(first_run, fresh_catalog):
    result, data, models = first_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert (data / DATASET / "items.csv").is_file() and (data / DATASET / "dataset.json").is_file()
    (model_dir,) = models.glob(f"{DATASET}-*")
    assert (model_dir / "manifest.json").is_file()
    items = sum(1 for _ in (data / DATASET / "items.csv").open()) - 1
    assert items > 0 and catalog_item_count(fresh_catalog.address) == items
    assert "bootstrap: done" in result.stdout


def test_ranker_serves_the_bootstrapped_model(first_run, encoder_service, fresh_catalog, tmp_path):
    _, data, models = first_run
    user = (data / DATASET / "interactions.csv").read_text().splitlines()[1].split(",")[0]
    ranker = start_service(
        "ranker", tmp_path, "--model-dir", str(models),
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", fresh_catalog.address,
    )
    try:
        with RankerClient(ranker.address, timeout_seconds=60) as client:
            response = client.recommend(user_id=user, query="a comfortable summer dress", top_k=3)
    finally:
        ranker.stop()
    assert response.model_version.startswith(f"{DATASET}-")
    assert len(response.items) == 3


def test_second_run_finds_everything_done(first_run, fresh_catalog, datasets_dir):
    _, data, models = first_run
    items_before = catalog_item_count(fresh_catalog.address)
    models_before = sorted(p.name for p in models.iterdir())

    result = bootstrap(datasets_dir, data, models, fresh_catalog.address)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "prepared data present" in result.stdout
    assert "model present" in result.stdout
    assert "upserted 0 items" in result.stdout  # nothing lacking: nothing embedded again
    assert sorted(p.name for p in models.iterdir()) == models_before
    assert catalog_item_count(fresh_catalog.address) == items_before


def test_a_run_after_a_job_stopped_midway_upserts_the_items_the_catalog_lacks(first_run, fresh_catalog, datasets_dir):
    """The job only ingested an empty catalog: one stopped mid-ingest (and restarted by its Job or by compose) left
    the catalog partial for good. Some items deleted stand for the ones the stopped job never wrote."""
    _, data, models = first_run
    items_before = catalog_item_count(fresh_catalog.address)
    ids = [line.split(",")[0] for line in (data / DATASET / "items.csv").read_text().splitlines()[1:4]]
    with grpc.insecure_channel(fresh_catalog.address) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        assert stub.DeleteItems(catalog_pb2.DeleteItemsRequest(item_ids=ids), timeout=30).deleted_count == 3
    result = bootstrap(datasets_dir, data, models, fresh_catalog.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "upserted 3 items" in result.stdout, result.stdout
    assert catalog_item_count(fresh_catalog.address) == items_before
    result = bootstrap(datasets_dir, data, models, fresh_catalog.address, WHISPERLITE_INGEST="if-empty")
    assert f"already holds {items_before} items: not ingesting" in result.stdout


@pytest.mark.parametrize(("variable", "value"), [("WHISPERLITE_TRAIN", "sometimes"), ("WHISPERLITE_INGEST", "maybe")])
def test_bad_step_setting_is_refused(first_run, fresh_catalog, datasets_dir, variable, value):
    _, data, models = first_run
    result = bootstrap(datasets_dir, data, models, fresh_catalog.address, **{variable: value})
    assert result.returncode == 2
    assert f"{variable} must be" in result.stderr and value in result.stderr


def test_missing_raw_data_says_what_to_mount(tmp_path, fresh_catalog):
    result = bootstrap(tmp_path / "no-datasets", tmp_path / "data", tmp_path / "models", fresh_catalog.address)
    assert result.returncode == 1
    assert "not found: mount the datasets folder" in result.stderr
