"""`whisperlite catalog import|get|delete|count|export` and ListItems against a real catalog process
(real milvus-lite store, items embedded by the real MiniLM encoder)."""

import concurrent.futures
import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time

import grpc
import pyarrow.parquet as pq
import pytest

from tests.servers import REPO, start_catalog
from whisperlite.core.clients.catalog_admin import CatalogAdminClient

PAGE_LIMIT = 20  # the catalog's --max-batch: exports of more items take several ListItems pages


@pytest.fixture(scope="module")
def admin_catalog(tmp_path_factory, encoder_service):
    service = start_catalog(
        tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("store"), encoder_service.address, "--max-batch", str(PAGE_LIMIT)
    )
    yield service
    service.stop()


@pytest.fixture
def catalog(admin_catalog):
    with CatalogAdminClient(admin_catalog.address, timeout_seconds=120) as client:
        yield client
        ids = [item.item_id for item in client.iter_items()]
        for start in range(0, len(ids), PAGE_LIMIT):
            client.delete(ids[start : start + PAGE_LIMIT])


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "whisperlite", "catalog", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def shop_rows(count: int) -> list[dict]:
    colours = ("black", "red", "white")
    return [
        {"sku": f"sku-{n:04d}", "name": f"{colours[n % 3]} leather boots no. {n}", "desc": "Ankle boots.", "dept": "Shoes",
         "cost": f"{40 + n % 90}.5", "brand": "Acme", "colour": colours[n % 3]}
        for n in range(count)
    ]  # fmt: skip


def write_csv(path, rows: list[dict], extra_lines: list[str] = ()) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        handle.writelines(line + "\n" for line in extra_lines)


MAPPING = ["--id-column", "sku", "--title-column", "name", "--text-column", "desc", "--category-column", "dept",
           "--price-column", "cost", "--attribute-column", "brand,colour"]  # fmt: skip


def test_import_maps_columns_keeps_price_and_attributes_and_reports_bad_rows(catalog, admin_catalog, tmp_path):
    good = shop_rows(30)
    bad = [
        "sku-bad-price,Boots,,Shoes,cheap,Acme,black",  # row 31
        ",Nameless boots,,Shoes,10,Acme,black",  # row 32: no id
        "sku-negative,Boots,,Shoes,-3,Acme,black",  # row 33
        "sku-o'neil,Boots,,Shoes,10,Acme,black",  # row 34: the catalog refuses apostrophes in ids
        "sku-wide,Boots,,Shoes,10,Acme,black,surplus",  # row 35: a field more than the header
    ]
    source = tmp_path / "shop.csv"
    write_csv(source, good, bad)
    result = cli("import", str(source), "--catalog", admin_catalog.address, "--batch-size", "16", *MAPPING)
    assert "imported 30 items" in result.stdout and "5 rows refused" in result.stdout

    # Rows the catalog refuses are found when their batch is sent, after later rows the client refused.
    report = sorted((json.loads(line) for line in (tmp_path / "shop.csv.import-errors.jsonl").read_text().splitlines()), key=lambda e: e["row"])
    assert [entry["row"] for entry in report] == [31, 32, 33, 34, 35]
    assert "cost: not a number: 'cheap'" in report[0]["error"]
    assert "sku: missing or empty" in report[1]["error"]
    assert "must be a finite number >= 0" in report[2]["error"]
    assert report[3]["item_id"] == "sku-o'neil" and "apostrophe" in report[3]["error"]
    assert "more than the header" in report[4]["error"]
    assert not (tmp_path / "shop.csv.import-checkpoint.json").exists()  # complete

    assert cli("count", "--catalog", admin_catalog.address).stdout.strip() == "30"
    (item,) = [json.loads(line) for line in cli("get", "sku-0007", "--catalog", admin_catalog.address).stdout.splitlines()]
    assert item == {
        "item_id": "sku-0007", "title": "red leather boots no. 7", "text": "Ankle boots.", "category": "Shoes",
        "price": 47.5, "image_uri": "", "attributes": {"brand": "Acme", "colour": "red"},
    }  # fmt: skip
    # The price survives into search: the README's kind of filter finds these items.
    assert all(i.price is not None and i.attributes["brand"] == "Acme" for i in catalog.get(["sku-0001", "sku-0029"]).items)

    missing = cli("get", "sku-0001", "nope", "--catalog", admin_catalog.address, check=False)
    assert missing.returncode == 1 and "not in the catalog: nope" in missing.stderr
    deleted = cli("delete", "sku-0001", "sku-0002", "nope", "--catalog", admin_catalog.address)
    assert "deleted 2 of 3" in deleted.stdout
    assert catalog.stats().item_count == 28


def test_export_pages_through_every_item_and_imports_back(catalog, admin_catalog, tmp_path):
    source = tmp_path / "shop.csv"
    write_csv(source, shop_rows(25))  # 25 items: two ListItems pages of 20
    cli("import", str(source), "--catalog", admin_catalog.address, *MAPPING)

    exported = {}
    for suffix in ("jsonl", "parquet", "csv"):
        path = tmp_path / f"export.{suffix}"
        assert "exported 25 items" in cli("export", str(path), "--catalog", admin_catalog.address).stdout
        exported[suffix] = path
    rows = [json.loads(line) for line in exported["jsonl"].read_text().splitlines()]
    assert [row["item_id"] for row in rows] == [f"sku-{n:04d}" for n in range(25)]  # every id once, in order
    table = pq.read_table(exported["parquet"]).to_pylist()
    assert [row["item_id"] for row in table] == [row["item_id"] for row in rows]
    assert dict(table[5]["attributes"]) == rows[5]["attributes"] == {"brand": "Acme", "colour": "white"}
    assert table[5]["price"] == rows[5]["price"] == 45.5
    with exported["csv"].open(newline="") as handle:
        assert [row["item_id"] for row in csv.DictReader(handle)] == [row["item_id"] for row in rows]

    for suffix in ("parquet", "jsonl"):
        assert catalog.delete([f"sku-{n:04d}" for n in range(0, 25, 3)]) == 9
        assert catalog.stats().item_count == 16
        result = cli("import", str(exported[suffix]), "--catalog", admin_catalog.address)
        assert "imported 25 items" in result.stdout and "0 rows refused" in result.stdout
        again = [json.loads(line) for line in cli("get", "sku-0005", "sku-0010", "--catalog", admin_catalog.address).stdout.splitlines()]
        assert again == [rows[5], rows[10]], suffix


def test_an_interrupted_import_resumes_after_the_last_complete_batch(catalog, admin_catalog, tmp_path):
    source = tmp_path / "big.csv"
    write_csv(source, shop_rows(60))
    checkpoint = tmp_path / "big.csv.import-checkpoint.json"
    command = [sys.executable, "-m", "whisperlite", "catalog", "import", str(source), "--catalog", admin_catalog.address,
               "--batch-size", "5", *MAPPING]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and json.loads(checkpoint.read_text())["rows_done"] >= 10:
            process.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    process.communicate(timeout=60)
    assert process.returncode != 0, "the import finished before it could be interrupted"
    done = json.loads(checkpoint.read_text())["rows_done"]
    assert 10 <= done < 60 and done % 5 == 0
    assert catalog.stats().item_count >= done

    result = cli("import", str(source), "--catalog", admin_catalog.address, "--batch-size", "50", *MAPPING)
    assert f"resumed after row {done}" in result.stdout and "imported 60 items" in result.stdout
    assert catalog.stats().item_count == 60 and not checkpoint.exists()

    write_csv(source, shop_rows(10))  # a checkpoint of another version of the file is refused
    checkpoint.write_text(json.dumps({"source": {"file": str(source), "size": 1, "mtime_ns": 1}, "rows_done": 5, "upserted": 5, "failed": 0}))
    stale = cli("import", str(source), "--catalog", admin_catalog.address, *MAPPING, check=False)
    assert stale.returncode != 0 and "--restart" in stale.stderr


def test_list_items_refuses_bad_pages_with_invalid_argument(catalog):
    for kwargs, message in (({"page_size": PAGE_LIMIT + 1}, "page_size"), ({"page_token": "x\ny"}, "page_token")):
        with pytest.raises(grpc.RpcError) as raised:
            catalog.list_page(**kwargs)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in raised.value.details()


def test_a_failed_export_leaves_the_previous_one_unchanged(catalog, admin_catalog, tmp_path):
    """The file used to be opened before the first page: a refused or interrupted export left a header-only CSV, or a
    valid-looking Parquet file of 0 rows, in place of the last good export."""
    write_csv(tmp_path / "shop.csv", shop_rows(5))
    cli("import", str(tmp_path / "shop.csv"), "--catalog", admin_catalog.address, *MAPPING)
    for suffix in ("csv", "parquet"):
        backup = tmp_path / f"backup.{suffix}"
        cli("export", str(backup), "--catalog", admin_catalog.address)
        good = backup.read_bytes()
        failed = cli("export", str(backup), "--catalog", admin_catalog.address, "--page-size", "5000", check=False)
        assert failed.returncode == 1 and f"export stopped; {backup} is unchanged" in failed.stderr, failed.stderr
        assert backup.read_bytes() == good
        assert [path.name for path in tmp_path.iterdir() if "partial" in path.name] == []
    pipe = tmp_path / "items.csv"  # a pipe holds no previous export: written directly, and stays a pipe
    os.mkfifo(pipe)
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        read = reader.submit(pipe.read_text)
        cli("export", str(pipe), "--catalog", admin_catalog.address, "--format", "csv")
        assert len(read.result(timeout=60).splitlines()) == 6 and stat.S_ISFIFO(os.stat(pipe).st_mode)
    nowhere = cli("export", str(tmp_path / "missing-dir" / "x.csv"), "--catalog", admin_catalog.address, check=False)
    assert nowhere.returncode == 1 and "not a file in an existing directory" in nowhere.stderr and "Traceback" not in nowhere.stderr


def test_import_reads_a_spreadsheets_bom_and_refuses_a_missing_id_column_before_writing(catalog, admin_catalog, tmp_path):
    excel = tmp_path / "excel.csv"  # "CSV UTF-8" as spreadsheets save it: a byte order mark and CRLF line ends
    excel.write_bytes("\ufeffitem_id,title\r\nbom-1,Red dress\r\nbom-2,Blue shirt\r\n".encode())
    assert "imported 2 items" in cli("import", str(excel), "--catalog", admin_catalog.address).stdout
    assert not (tmp_path / "excel.csv.import-errors.jsonl").exists()  # a clean import leaves no empty report
    wrong = cli("import", str(excel), "--catalog", admin_catalog.address, "--id-column", "sku", check=False)
    assert wrong.returncode == 1 and f"{excel}: no column 'sku' (--id-column); its columns are item_id, title" in wrong.stderr
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("item_id,title\nl-1,Caf\xe9 dress\n".encode("latin-1"))
    refused = cli("import", str(latin1), "--catalog", admin_catalog.address, check=False)
    assert refused.returncode == 1 and "not UTF-8 text" in refused.stderr and "Traceback" not in refused.stderr
    bad_list = tmp_path / "bad.jsonl"
    bad_list.write_text('{"item_id": "j-1", "title": "a", "attributes": [1, 2]}\n{"item_id": "j-2", "title": "b"}\n')
    partly = cli("import", str(bad_list), "--catalog", admin_catalog.address, check=False)  # one bad row: reported, the rest imported
    assert "imported 1 items" in partly.stdout and "1 rows refused" in partly.stdout and "Traceback" not in partly.stderr
    assert sorted(item.item_id for item in catalog.iter_items()) == ["bom-1", "bom-2", "j-2"]


def test_get_and_delete_take_more_ids_than_one_call_from_a_file_or_stdin(catalog, admin_catalog, tmp_path):
    """Ids past the catalog's --max-batch used to be one refused call; now they go in calls of --batch-size."""
    write_csv(tmp_path / "shop.csv", shop_rows(45))
    cli("import", str(tmp_path / "shop.csv"), "--catalog", admin_catalog.address, *MAPPING)
    ids = [f"sku-{n:04d}" for n in range(45)]
    (tmp_path / "ids.txt").write_text("\n".join([*ids, "", "sku-gone"]) + "\n")
    target = ("--catalog", admin_catalog.address, "--batch-size", str(PAGE_LIMIT))

    one_call = cli("get", "--ids-file", str(tmp_path / "ids.txt"), "--catalog", admin_catalog.address, check=False)
    assert one_call.returncode == 1 and "INVALID_ARGUMENT" in one_call.stderr and str(PAGE_LIMIT) in one_call.stderr
    found = cli("get", "sku-0044", "--ids-file", str(tmp_path / "ids.txt"), *target, check=False)  # sku-0044 named twice
    assert found.returncode == 1 and found.stderr.strip() == "not in the catalog: sku-gone"
    assert [json.loads(line)["item_id"] for line in found.stdout.splitlines()] == ["sku-0044", *ids[:-1]]  # each once

    deleted = subprocess.run(
        [sys.executable, "-m", "whisperlite", "catalog", "delete", "sku-0000", "--ids-file", "-", *target],
        cwd=REPO, input=(tmp_path / "ids.txt").read_text(), capture_output=True, text=True, timeout=300,
    )
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted 45 of 46 ids" in deleted.stdout  # sku-0000 named twice counts once
    assert catalog.stats().item_count == 0
    nothing = cli("delete", "--catalog", admin_catalog.address, check=False)
    assert nothing.returncode == 2 and "name at least one item id" in nothing.stderr
