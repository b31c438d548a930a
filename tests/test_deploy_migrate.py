"""deploy/migrate_store.py copies collections between real milvus-lite stores, vectors and index included,
and a real catalog serves the copy exactly as it served the original."""

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus import DataType, MilvusClient

from tests.servers import start_catalog
from whisperlite.shell.ingest import ingest
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "migrate_store.py"
ROWS = 2500  # more than two of the script's 1,000-row batches
DIM = 16


@contextmanager
def open_store(path: Path):
    """A client on a milvus-lite file that gives up the file's lock on exit (pymilvus alone keeps it
    for the life of the process), so that the script under test can open it."""
    client = MilvusClient(str(path))
    try:
        yield client
    finally:
        client.close()
        server_manager_instance.release_server(str(path))


def migrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "store.db"
    with open_store(path) as client:
        fill(client)
    return path


def fill(client: MilvusClient) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True, description="catalog items")
    schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field("title", DataType.VARCHAR, max_length=512)
    schema.add_field("price", DataType.FLOAT)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="IVF_FLAT", metric_type="COSINE", params={"nlist": 32})
    client.create_collection("items", schema=schema, index_params=index)
    vectors = np.random.default_rng(0).normal(size=(ROWS, DIM)).astype(np.float32)
    rows = [
        {"item_id": f"item-{i}", "title": f"title {i} ä\"'", "price": float(i) / 4, "vector": vectors[i].tolist(), "brand": f"b{i % 7}"}
        for i in range(ROWS)
    ]
    for start in range(0, ROWS, 1000):
        client.insert("items", rows[start : start + 1000])


def rows_by_id(client: MilvusClient) -> dict[str, dict]:
    iterator = client.query_iterator("items", batch_size=1000, output_fields=["*"])
    found = {}
    while batch := iterator.next():
        found.update({row["item_id"]: row for row in batch})
    iterator.close()
    return found


def test_copies_every_row_vector_and_the_index(source, tmp_path):
    target = tmp_path / "target.db"
    result = migrate("--source", str(source), "--target", str(target))
    assert result.returncode == 0, result.stderr
    assert f"items: {ROWS} rows copied" in result.stdout

    with open_store(source) as src, open_store(target) as dst:
        before, after = rows_by_id(src), rows_by_id(dst)
        assert before.keys() == after.keys() and len(after) == ROWS
        for item_id in ("item-0", "item-1234", f"item-{ROWS - 1}"):
            assert after[item_id]["title"] == before[item_id]["title"]
            assert after[item_id]["price"] == before[item_id]["price"]
            assert after[item_id]["brand"] == before[item_id]["brand"]  # dynamic field
            np.testing.assert_array_equal(after[item_id]["vector"], before[item_id]["vector"])
        index = dst.describe_index("items", "vector")
        assert (index["index_type"], index["metric_type"]) == ("IVF_FLAT", "COSINE")
        assert dst.describe_collection("items")["enable_dynamic_field"]
        query = [before["item-42"]["vector"]]
        hits = dst.search("items", data=query, limit=3, output_fields=["item_id"])[0]
        assert hits[0]["entity"]["item_id"] == "item-42"


def test_index_type_can_change_on_the_target(source, tmp_path):
    target = tmp_path / "target.db"
    result = migrate("--source", str(source), "--target", str(target), "--index-type", "FLAT")
    assert result.returncode == 0, result.stderr
    with open_store(target) as dst:
        index = dst.describe_index("items", "vector")
    assert (index["index_type"], index["metric_type"]) == ("FLAT", "COSINE")


def test_an_existing_target_collection_is_left_untouched(source, tmp_path):
    target = tmp_path / "target.db"
    with open_store(target) as client:
        client.create_collection("items", dimension=DIM)
        client.insert("items", [{"id": 1, "vector": [0.5] * DIM}])

    result = migrate("--source", str(source), "--target", str(target))

    assert result.returncode == 1
    assert "already exists on the target, left untouched" in result.stderr
    with open_store(target) as client:
        assert client.query("items", filter="", output_fields=["count(*)"])[0]["count(*)"] == 1


def test_unknown_collection_is_a_usage_error(source, tmp_path):
    result = migrate("--source", str(source), "--target", str(tmp_path / "t.db"), "--collection", "nope")
    assert result.returncode == 2
    assert "--collection: nope not in" in result.stderr


def test_a_real_catalog_store_moves_and_serves_the_same(tmp_path, encoder_service, datasets_dir):
    """The documented move: stop the catalog, copy its store, start a catalog on the copy."""
    def catalog_on(data_dir: Path):
        return start_catalog(tmp_path / "logs", data_dir, encoder_service.address)

    def stats_and_search(address: str):
        with grpc.insecure_channel(address) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            stats = stub.GetStats(catalog_pb2.GetStatsRequest(), timeout=30)
            first = stub.GetItems(catalog_pb2.GetItemsRequest(item_ids=[first_id], include_vectors=True), timeout=30).items[0]
            hits = stub.Search(catalog_pb2.SearchRequest(vector=first.vector, top_k=5), timeout=30).hits
        return stats, first, [hit.item.item_id for hit in hits]

    prepared = tmp_path / "prepared"
    subprocess.run(
        [sys.executable, "-m", "whisperlite", "data", "prepare", "--source", "amazon_fashion_5core_2018",
         "--raw", str(datasets_dir / "amazon_fashion_5core_2018" / "raw"), "--out", str(prepared), "--quiet"],
        check=True, capture_output=True, timeout=300,
    )
    first_id = (prepared / "items.csv").read_text().splitlines()[1].split(",")[0]
    old = catalog_on(tmp_path / "old")
    try:
        ingest(prepared, old.address)
        before = stats_and_search(old.address)
    finally:
        assert old.stop() == 0

    result = migrate("--source", str(tmp_path / "old" / "catalog.db"), "--target", str(tmp_path / "new" / "catalog.db"))
    assert result.returncode == 0, result.stderr

    new = catalog_on(tmp_path / "new")
    try:
        after = stats_and_search(new.address)
    finally:
        new.stop()
    (stats_before, item_before, hits_before), (stats_after, item_after, hits_after) = before, after
    assert stats_before.item_count > 0
    assert stats_after == stats_before  # count, dimension, encoder model, collection
    assert item_after == item_before
    assert hits_after == hits_before and hits_after[0] == first_id


def test_missing_source_file_is_a_usage_error(tmp_path):
    result = migrate("--source", str(tmp_path / "absent.db"), "--target", str(tmp_path / "t.db"))
    assert result.returncode == 2
    assert "is neither a milvus-lite file nor a server URI" in result.stderr
    assert not (tmp_path / "absent.db").exists()
