"""`whisperlite catalog import|get|delete|count|export` and ListItems against a real catalog process
(real milvus-lite store, items embedded by the real MiniLM encoder)."""

import concurrent.futures
import contextlib
import csv
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import grpc
import pyarrow.parquet as pq
import pytest

from tests.servers import REPO, serving_catalog, start_catalog
from whisperlite.core.clients.catalog_admin import CatalogAdminClient
from whisperlite.v1 import catalog_pb2_grpc

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
    # Like get, delete names the ids it did not find and exits 1 (it said "the others were not in the catalog", exit 0).
    deleted = cli("delete", "sku-0001", "sku-0002", "nope", "--catalog", admin_catalog.address, check=False)
    assert deleted.returncode == 1 and "deleted 2 of 3 ids" in deleted.stdout and deleted.stderr.strip() == "not in the catalog: nope"
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


def interrupted_import(source, *args: str, after_rows: int) -> int:
    """Runs `catalog import source *args` and interrupts it (Ctrl-C) once its checkpoint holds `after_rows` rows;
    returns the rows its checkpoint says are done."""
    checkpoint = source.with_name(source.name + ".import-checkpoint.json")
    command = [sys.executable, "-m", "whisperlite", "catalog", "import", str(source), *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and json.loads(checkpoint.read_text())["rows_done"] >= after_rows:
            process.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    process.communicate(timeout=60)
    assert process.returncode != 0, "the import finished before it could be interrupted"
    return json.loads(checkpoint.read_text())["rows_done"]


def test_an_interrupted_import_resumes_after_the_last_complete_batch(catalog, admin_catalog, tmp_path):
    source = tmp_path / "big.csv"
    write_csv(source, shop_rows(60))
    checkpoint = tmp_path / "big.csv.import-checkpoint.json"
    done = interrupted_import(source, "--catalog", admin_catalog.address, "--batch-size", "5", *MAPPING, after_rows=10)
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
    assert deleted.returncode == 1 and deleted.stderr.strip() == "not in the catalog: sku-gone"
    assert "deleted 45 of 46 ids" in deleted.stdout  # sku-0000 named twice counts once
    assert catalog.stats().item_count == 0
    nothing = cli("delete", "--catalog", admin_catalog.address, check=False)
    assert nothing.returncode == 2 and "name at least one item id" in nothing.stderr


def error_report(path) -> dict[int, dict]:
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len({entry["row"] for entry in entries}) == len(entries), "a row reported twice"
    return {entry["row"]: entry for entry in entries}


def test_rows_the_reader_cannot_take_or_of_wrong_json_types_are_row_errors_and_the_import_goes_on(catalog, admin_catalog, tmp_path):
    """Each of these rows stopped the whole import with a traceback (OverflowError, RecursionError) or a refusal of the
    file, or was stored coerced (true as price 1.0, an object as its Python repr, 42 as "42", 0.1e1 as id "1.0")."""
    lines = [
        '{"item_id": "j-1", "title": "Red dress", "price": 10}',
        '{"item_id": "j-big", "title": "Boots", "price": 1' + "0" * 400 + "}",  # 10**400 as an integer literal
        "[" * 100_000,
        '{"item_id": "j-\\ud800", "title": "Boots"}',  # a lone surrogate, in the id and in a title
        '{"item_id": "j-sur", "title": "Boots \\ud800"}',
        '{"item_id": "j-bool", "title": "Boots", "price": true}',
        '{"item_id": "j-obj", "title": "Boots", "text": {"a": 1}}',
        '{"item_id": "j-num", "title": 42}',
        '{"item_id": 0.1e1, "title": "Boots"}',
        '{"item_id": "j-str", "title": "Boots", "price": "12"}',
        '{"item_id": "j-twice", "title": "Boots", "title": "Shoes"}',
        '{"item_id": "j-2", "title": "Blue shirt", "price": 12.5, "attributes": {"size": 42, "tags": ["a"], "tiny": 1e-400}}',
        '{"item_id": "j-tiny", "title": "Boots", "price": 1e-400}',  # json.loads read it as 0.0: the item was stored free
    ]
    source = tmp_path / "odd.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = cli("import", str(source), "--catalog", admin_catalog.address, "--batch-size", "5")
    assert "imported 2 items" in result.stdout and "11 rows refused" in result.stdout and "Traceback" not in result.stderr
    report = error_report(tmp_path / "odd.jsonl.import-errors.jsonl")
    expected = {
        2: "price: must be a finite number >= 0", 3: "nested too deeply", 4: "item_id: must be Unicode text",
        5: "title: must be Unicode text", 6: "price: must be a number or null, got true/false",
        7: "text: must be a string, got an object", 8: "title: must be a string, got a number (42)",
        9: "item_id: must be a string, got a number", 10: "price: must be a number or null, got a string ('12')",
        11: "key 'title' appears twice", 13: "price: must be a finite number >= 0 that a float can hold",
    }  # fmt: skip
    assert sorted(report) == sorted(expected)
    for row, why in expected.items():
        assert why in report[row]["error"], (row, report[row])
    assert report[6]["item_id"] == "j-bool" and report[4]["item_id"] == "j-\ud800"
    assert sorted(item.item_id for item in catalog.iter_items()) == ["j-1", "j-2"]
    assert catalog.get(["j-2"]).items[0].attributes == {"size": "42", "tags": '["a"]', "tiny": "1E-400"}  # other JSON values as their JSON

    strict = cli("import", str(source), "--catalog", admin_catalog.address, "--strict", check=False)
    assert strict.returncode == 1 and "imported 2 items" in strict.stdout


def test_a_csv_field_past_the_csv_readers_limit_is_a_row_error_and_a_resumed_import_gets_past_it(catalog, admin_catalog, tmp_path):
    """A field over 131,072 characters stopped the import (_csv.Error) at the batch before it, every time it was run."""
    rows = shop_rows(311)
    rows[300]["desc"] = "x" * 140_000  # row 301: too long for an item's text
    rows[305]["brand"] = "y" * 140_000  # an attribute column is stored too: refused as attributes past 64 KiB
    source = tmp_path / "long.csv"
    write_csv(source, rows)
    args = ("--catalog", admin_catalog.address, "--batch-size", "20", *MAPPING)
    done = interrupted_import(source, *args, after_rows=20)
    assert done < 300
    result = cli("import", str(source), *args)
    assert f"resumed after row {done}" in result.stdout and "imported 309 items" in result.stdout and "2 rows refused" in result.stdout
    report = error_report(tmp_path / "long.csv.import-errors.jsonl")
    assert sorted(report) == [301, 306]
    assert report[301]["item_id"] == "sku-0300" and "desc: must be at most 16000 characters, got 140000" in report[301]["error"]
    assert "attributes: must encode to at most" in report[306]["error"]
    assert catalog.stats().item_count == 309 and catalog.get(["sku-0310"]).items

    unreadable = tmp_path / "runaway.csv"  # a quote left open: past any field the catalog stores, refused at its line
    unreadable.write_text('item_id,title\nr-1,"' + "z" * (1 << 24) + '\nr-2,Boots\n')
    partly = cli("import", str(unreadable), "--catalog", admin_catalog.address)
    assert "imported 1 items" in partly.stdout and "1 rows refused" in partly.stdout
    (entry,) = error_report(tmp_path / "runaway.csv.import-errors.jsonl").values()
    assert entry["row"] == 1 and "field larger than field limit" in entry["error"]


def test_csv_rows_of_the_wrong_width_repeated_ids_and_columns_and_spaces_around_ids(catalog, admin_catalog, tmp_path):
    source = tmp_path / "shape.csv"
    source.write_text(
        "item_id,title,category,price\n"
        "imp-11,Red dress,Dresses,10\n"
        "imp-12,short\n"  # row 2: fewer fields than the header (its fields used to be read as empty)
        " sp-1 ,Boots, Shoes , 12 \n"  # row 3: spaces around the id and the category go, as around the price
        "imp-11,Red dress again,Dresses,99\n"  # row 4: repeats row 1's id
        "sp-1,Boots again,Shoes,1\n"  # row 5: repeats row 3's id once the spaces are gone
        "imp-13,Green coat,Coats,30,surplus\n"
    )
    result = cli("import", str(source), "--catalog", admin_catalog.address)
    assert "imported 2 items" in result.stdout and "4 rows refused" in result.stdout  # distinct items, not rows sent
    report = error_report(tmp_path / "shape.csv.import-errors.jsonl")
    assert sorted(report) == [2, 4, 5, 6]
    assert "2 field(s) fewer than the header's 4" in report[2]["error"]
    assert report[4]["item_id"] == "imp-11" and "repeats row 1 (the first row of an id is imported)" in report[4]["error"]
    assert report[5]["item_id"] == "sp-1" and "repeats row 3" in report[5]["error"]
    assert "1 field(s) more than the header's 4" in report[6]["error"]
    first, spaced = catalog.get(["imp-11", "sp-1"]).items
    assert (first.title, first.price) == ("Red dress", 10.0)  # the first row of an id is kept
    assert (spaced.category, spaced.price) == ("Shoes", 12.0)

    twice = tmp_path / "twice.csv"
    twice.write_text("item_id,title,text,title\nt-1,Boots,Ankle boots,Shoes\n")
    refused = cli("import", str(twice), "--catalog", admin_catalog.address, check=False)
    assert refused.returncode == 1 and "the header names the column(s) 'title' more than once" in refused.stderr
    assert catalog.stats().item_count == 2  # refused before anything was written


def test_parquet_columns_of_the_wrong_type_are_refused_before_anything_is_written(catalog, admin_catalog, tmp_path):
    import pyarrow as pa

    for name, table, flag in (
        ("flags.parquet", pa.table({"item_id": ["p-1"], "title": ["Boots"], "price": [True]}), "'price' (--price-column) holds bool"),
        ("numbers.parquet", pa.table({"item_id": [1], "title": ["Boots"]}), "'item_id' (--id-column) holds int64"),
    ):
        pq.write_table(table, tmp_path / name)
        refused = cli("import", str(tmp_path / name), "--catalog", admin_catalog.address, check=False)
        assert refused.returncode == 1 and flag in refused.stderr and "Traceback" not in refused.stderr
    assert catalog.stats().item_count == 0


def test_an_import_that_imports_nothing_exits_1(catalog, admin_catalog, tmp_path):
    (tmp_path / "header.csv").write_text("item_id,title\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    for name in ("header.csv", "empty.jsonl"):
        result = cli("import", str(tmp_path / name), "--catalog", admin_catalog.address, check=False)
        assert result.returncode == 1 and "imported 0 items" in result.stdout and "no rows to import" in result.stderr


def test_a_resumed_import_refuses_other_column_flags_or_another_catalog(catalog, admin_catalog, tmp_path):
    """A run interrupted with --price-column '' was resumed with --price-column cost: its first rows kept no price."""
    source = tmp_path / "shop.csv"
    write_csv(source, shop_rows(80))
    no_price = [*MAPPING[:8], "--price-column", ""]
    done = interrupted_import(source, "--catalog", admin_catalog.address, "--batch-size", "5", *no_price, after_rows=5)
    assert done < 80

    changed = cli("import", str(source), "--catalog", admin_catalog.address, *MAPPING, check=False)
    assert changed.returncode == 1 and "--price-column was '', now 'cost'" in changed.stderr and "--restart" in changed.stderr
    elsewhere = cli("import", str(source), "--catalog", admin_catalog.address.replace("localhost", "127.0.0.1"), *no_price, check=False)
    assert elsewhere.returncode == 1 and "--catalog was" in elsewhere.stderr
    assert json.loads((tmp_path / "shop.csv.import-checkpoint.json").read_text())["rows_done"] == done  # left as it was

    again = cli("import", str(source), "--catalog", admin_catalog.address, "--restart", *MAPPING)
    assert "imported 80 items" in again.stdout and "resumed" not in again.stdout
    assert all(item.price is not None for item in catalog.get([f"sku-{n:04d}" for n in range(20)]).items)


def test_delete_names_the_ids_it_did_not_find_and_reads_an_ids_file_as_import_reads_ids(catalog, admin_catalog, tmp_path):
    write_csv(tmp_path / "shop.csv", shop_rows(4))
    cli("import", str(tmp_path / "shop.csv"), "--catalog", admin_catalog.address, *MAPPING)
    one = cli("delete", "sku-0000", "--catalog", admin_catalog.address)
    assert one.stdout.strip() == "deleted 1 of 1 ids" and one.stderr == ""
    (tmp_path / "ids.txt").write_text("  sku-0003  \nsku-0001\t\nsku-gone\n")
    before = {method: handled_calls(admin_catalog, method) for method in ("GetItems", "DeleteItems")}
    deleted = cli("delete", "--ids-file", str(tmp_path / "ids.txt"), "--catalog", admin_catalog.address, check=False)
    assert deleted.returncode == 1 and deleted.stdout.strip() == "deleted 2 of 3 ids"
    assert deleted.stderr.strip() == "not in the catalog: sku-gone"
    # The delete's answer names the ids it did not find: no GetItems of every id beforehand.
    assert {method: handled_calls(admin_catalog, method) - calls for method, calls in before.items()} == {
        "GetItems": Counter(), "DeleteItems": Counter(OK=1)}
    assert [item.item_id for item in catalog.iter_items()] == ["sku-0002"]


def handled_calls(service, method: str) -> Counter:
    """The catalog's calls of `method` so far, by status code (its grpc_server_handled_total)."""
    text = urllib.request.urlopen(service.metrics_url, timeout=10).read().decode()
    found = re.findall(rf'grpc_server_handled_total{{grpc_code="(\w+)",grpc_method="{method}",grpc_service="[\w.]+"}} (\S+)', text)
    return Counter({code: int(float(count)) for code, count in found})


def test_an_import_in_batches_over_the_catalogs_max_batch_goes_on_in_batches_of_that_limit(catalog, admin_catalog, tmp_path):
    """A batch over the catalog's --max-batch was refused and sent one item per call, and so was every later batch
    (the default --batch-size 256 against a catalog of --max-batch 100: 257 calls a batch instead of 3)."""
    rows = shop_rows(70)
    rows.insert(40, {**rows[0], "sku": "sku-blank", "name": "\u200b", "desc": ""})  # row 41: nothing the catalog can embed
    source = tmp_path / "shop.csv"
    write_csv(source, rows)
    before = handled_calls(admin_catalog, "UpsertItems")
    result = cli("import", str(source), "--catalog", admin_catalog.address, "--batch-size", "30", *MAPPING)
    assert "imported 70 items" in result.stdout and "1 rows refused" in result.stdout
    lowered = f"--batch-size 30 lowered to {PAGE_LIMIT}: the catalog at {admin_catalog.address} takes at most {PAGE_LIMIT} items per upsert"
    assert lowered in result.stderr and result.stderr.count("lowered") == 1, result.stderr
    # Rows 1-30: refused whole, then sent as 20 + 10. Rows 31-50 hold the bad row: refused whole, then one by one
    # (19 written, 1 refused). Rows 51-70 and 71: one call each.
    assert handled_calls(admin_catalog, "UpsertItems") - before == Counter(OK=2 + 19 + 2, INVALID_ARGUMENT=3)
    assert catalog.stats().item_count == 70
    (entry,) = error_report(tmp_path / "shop.csv.import-errors.jsonl").values()
    assert entry["row"] == 41 and "to embed" in entry["error"], entry


def test_an_import_interrupted_after_lowering_its_batch_size_resumes_without_losing_or_repeating_a_row(catalog, admin_catalog, tmp_path):
    rows = shop_rows(200)
    rows[57]["cost"] = "cheap"  # row 58: refused by the row checks, reported once
    source = tmp_path / "big.csv"
    write_csv(source, rows)
    args = ("--catalog", admin_catalog.address, "--batch-size", "50", *MAPPING)
    done = interrupted_import(source, *args, after_rows=50)
    # The checkpoint moves after the first batch of 50 (written as 20 + 20 + 10), then after each batch of 20.
    assert 50 <= done < 200 and (done - 50) % PAGE_LIMIT == 0, done
    result = cli("import", str(source), *args)
    assert f"resumed after row {done}" in result.stdout and "imported 199 items" in result.stdout and "1 rows refused" in result.stdout
    assert catalog.stats().item_count == 199 and not (tmp_path / "big.csv.import-checkpoint.json").exists()
    assert list(error_report(tmp_path / "big.csv.import-errors.jsonl")) == [58]


@contextlib.contextmanager
def older_catalog(address: str):
    """A catalog from before GetStatsResponse.max_batch and DeleteItemsResponse.missing_item_ids, played by a gRPC
    server that forwards to the real one and clears those fields; yields its address."""
    with grpc.insecure_channel(address) as channel:
        real = catalog_pb2_grpc.CatalogServiceStub(channel)

        def forward(method: str, added_later: str = ""):
            def handle(self, request, context):
                try:
                    response = getattr(real, method)(request, timeout=120)
                except grpc.RpcError as error:
                    context.abort(error.code(), error.details())
                if added_later:
                    response.ClearField(added_later)
                return response

            return handle

        older = type("Older", (catalog_pb2_grpc.CatalogServiceServicer,), {
            "UpsertItems": forward("UpsertItems"), "GetStats": forward("GetStats", "max_batch"),
            "DeleteItems": forward("DeleteItems", "missing_item_ids"),
        })  # fmt: skip
        with serving_catalog(older()) as stand_in:
            yield stand_in


def test_import_and_delete_still_work_against_a_catalog_older_than_the_fields_they_use(catalog, admin_catalog, tmp_path):
    write_csv(tmp_path / "shop.csv", shop_rows(25))
    with older_catalog(admin_catalog.address) as address:
        # It does not say its limit: the batch over it goes one item per call, as before.
        imported = cli("import", str(tmp_path / "shop.csv"), "--catalog", address, "--batch-size", "25", *MAPPING)
        assert "imported 25 items" in imported.stdout and "lowered" not in imported.stderr
        # It does not name the ids it did not find: delete says how many, and exits 1 as for named ones.
        deleted = cli("delete", "sku-0000", "sku-gone", "sku-0001", "sku-lost", "--catalog", address, check=False)
    assert deleted.returncode == 1 and deleted.stdout.strip() == "deleted 2 of 4 ids"
    assert deleted.stderr.startswith("not in the catalog: 2 more id(s)"), deleted.stderr
    assert catalog.stats().item_count == 23


def test_an_import_whose_first_batch_fails_does_not_point_at_a_checkpoint_it_never_wrote(tmp_path):
    source = tmp_path / "items.csv"
    write_csv(source, shop_rows(3))
    result = cli("import", str(source), "--id-column", "sku", "--catalog", "127.0.0.1:1", "--timeout", "3", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "stopped; no row was done yet: run the same command again" in result.stderr, result.stderr
    assert not list(tmp_path.glob("*checkpoint*"))


def test_a_csv_quote_never_closed_refuses_the_file_naming_its_line(catalog, admin_catalog, tmp_path):
    """It imported one item whose title held every line after the quote, and said "0 rows refused", exit 0."""
    source = tmp_path / "open.csv"
    source.write_text('item_id,title\nq-0,fine\nq-1,"oops an unclosed quote\nq-2,second item\nq-3,third item\n')
    refused = cli("import", str(source), "--catalog", admin_catalog.address, "--strict", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"{source} line 3: a quoted value starts in this row and is never closed (a stray double quote?)" in refused.stderr
    assert catalog.stats().item_count == 0  # refused before any row was sent


def vector_of(dimension: int, seed: int) -> list[float]:
    """A unit vector as float32 holds it: what the catalog stores and gives back."""
    import numpy as np

    vector = np.random.default_rng(seed).normal(size=dimension).astype(np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32).tolist()


def test_export_with_vectors_imports_back_the_vectors_the_caller_gave(catalog, admin_catalog, tmp_path):
    """An item upserted with its own vector and no text was refused on import ("without a vector it needs a title or
    text"), and one with text came back with its text's embedding instead of the vector it was given."""
    from whisperlite.core.clients.types import Item

    dimension = catalog.stats().dimension
    given = {"v-image": vector_of(dimension, 1), "v-text": vector_of(dimension, 2)}
    catalog.upsert([
        Item(item_id="v-image", image_uri="file:///boots.jpg", vector=tuple(given["v-image"])),
        Item(item_id="v-text", title="Red dress", attributes={"k": "v"}, vector=tuple(given["v-text"])),
        Item(item_id="v-embedded", title="Blue shirt"),
    ])  # fmt: skip
    embedded = list(catalog.get(["v-embedded"], include_vectors=True).items[0].vector)

    plain = tmp_path / "plain.jsonl"
    cli("export", str(plain), "--catalog", admin_catalog.address)
    assert all("vector" not in json.loads(line) for line in plain.read_text().splitlines())  # as before, without --vectors
    for suffix in ("csv", "jsonl", "parquet"):
        path = tmp_path / f"export.{suffix}"
        assert "exported 3 items" in cli("export", str(path), "--vectors", "--catalog", admin_catalog.address).stdout
        catalog.delete(["v-image", "v-text", "v-embedded"])
        result = cli("import", str(path), "--catalog", admin_catalog.address, "--strict")
        assert "imported 3 items" in result.stdout and "0 rows refused" in result.stdout, suffix
        back = {item.item_id: item for item in catalog.get(["v-image", "v-text", "v-embedded"], include_vectors=True).items}
        assert list(back["v-image"].vector) == given["v-image"] and list(back["v-text"].vector) == given["v-text"], suffix
        assert list(back["v-embedded"].vector) == embedded and back["v-text"].attributes == {"k": "v"}, suffix

    # --vector-column '' reads none: the text is embedded again, and an item with no text cannot be.
    again = cli("import", str(tmp_path / "export.jsonl"), "--vector-column", "", "--catalog", admin_catalog.address, check=False)
    assert "imported 2 items" in again.stdout and "1 rows refused" in again.stdout
    assert list(catalog.get(["v-text"], include_vectors=True).items[0].vector) != given["v-text"]


def test_a_vector_cell_that_is_no_array_of_finite_numbers_is_a_row_error(catalog, admin_catalog, tmp_path):
    dimension = catalog.stats().dimension
    good = json.dumps(vector_of(dimension, 3))
    source = tmp_path / "vectors.csv"
    source.write_text(
        "item_id,title,vector\n"
        f"w-1,Boots,\"{good}\"\n"  # a JSON array in a cell
        "w-2,Boots,\n"  # none: its title is embedded
        "w-3,Boots,\"[1.0, NaN]\"\n"
        "w-4,Boots,\"[1.0, 1e39]\"\n"
        "w-5,Boots,\"[1.0, \"\"x\"\"]\"\n"
        "w-6,Boots,not json\n"
        "w-7,Boots,\"[1.0, 2.0]\"\n"  # the catalog refuses its length
    )
    result = cli("import", str(source), "--catalog", admin_catalog.address, check=False)
    assert "imported 2 items" in result.stdout and "5 rows refused" in result.stdout, result.stdout + result.stderr
    report = error_report(tmp_path / "vectors.csv.import-errors.jsonl")
    assert "vector: values must be finite numbers within float32's range, got nan at position 1" in report[3]["error"]
    assert "got 1e+39 at position 1" in report[4]["error"]
    assert "vector: must hold only numbers, got 'x' at position 1" in report[5]["error"]
    assert "vector: not a JSON array of numbers: 'not json'" in report[6]["error"]
    assert f"must have {dimension} values (the catalog's dimension), got 2" in report[7]["error"]
    assert list(catalog.get(["w-1"], include_vectors=True).items[0].vector) == pytest.approx(json.loads(good), rel=1e-6)  # renormalized

    (tmp_path / "typed.jsonl").write_text(json.dumps({"item_id": "w-8", "title": "Boots", "vector": good}) + "\n")
    typed = cli("import", str(tmp_path / "typed.jsonl"), "--catalog", admin_catalog.address, check=False)
    assert typed.returncode == 1
    assert "vector: must be an array of numbers or null, got a string" in error_report(tmp_path / "typed.jsonl.import-errors.jsonl")[1]["error"]


def test_a_row_the_catalog_refuses_is_reported_by_its_column_not_its_index_in_the_call(catalog, admin_catalog, tmp_path):
    """The report's entry for row 3 said "items[0].vector: ...": the index of the item in the one-item call sent again,
    which is no row of the file. A price of -0.0 is stored as 0.0 (it came back -0.0)."""
    dimension = catalog.stats().dimension
    good = json.dumps(vector_of(dimension, 5))
    source = tmp_path / "embedded.csv"
    source.write_text(f'sku,name,cost,emb\ne-1,Boots,-0.0,"{good}"\ne-2,Shoes,5,"[1.0, 2.0]"\ne-3,Socks,2,"{good}"\n')
    result = cli(
        "import", str(source), "--catalog", admin_catalog.address, "--id-column", "sku", "--title-column", "name",
        "--price-column", "cost", "--vector-column", "emb", check=False,
    )
    assert "imported 2 items" in result.stdout and "1 rows refused" in result.stdout, result.stdout + result.stderr
    assert error_report(tmp_path / "embedded.csv.import-errors.jsonl") == {
        2: {"row": 2, "item_id": "e-2", "error": f"emb: must have {dimension} values (the catalog's dimension), got 2"},
    }
    price = catalog.get(["e-1"]).items[0].price
    assert price == 0.0 and math.copysign(1.0, price) == 1.0


def test_nul_in_an_attribute_is_refused_naming_the_attribute(catalog, admin_catalog, tmp_path):
    """Refused in title, text and category, NUL was stored in attribute names and values."""
    from whisperlite.core.clients.types import Item

    for attributes, message in (
        ({"\x00": "nul"}, "items[0].attributes: '\\x00': its name must not contain a NUL character (\\x00)"),
        ({"k": "x\x00y"}, "items[0].attributes: 'k': its value must not contain a NUL character (\\x00)"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            catalog.upsert([Item(item_id="n-1", title="Boots", attributes=attributes)])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.details()
    assert catalog.stats().item_count == 0


def test_a_parquet_attribute_map_holding_a_key_twice_is_a_row_error(catalog, admin_catalog, tmp_path):
    """JSON refused a repeated key; a Parquet map kept its last value, silently."""
    import pyarrow as pa

    attributes = pa.array([[("k", "v"), ("k", "w")], [("k", "v")]], type=pa.map_(pa.string(), pa.string()))
    pq.write_table(pa.table({"item_id": ["m-1", "m-2"], "title": ["Boots", "Shoes"], "attributes": attributes}), tmp_path / "map.parquet")
    result = cli("import", str(tmp_path / "map.parquet"), "--catalog", admin_catalog.address, check=False)
    assert "imported 1 items" in result.stdout and "1 rows refused" in result.stdout
    assert "attributes: key 'k' appears twice" in error_report(tmp_path / "map.parquet.import-errors.jsonl")[1]["error"]
    assert [item.item_id for item in catalog.iter_items()] == ["m-2"]


def test_import_and_delete_messages_name_the_thing_at_fault(catalog, admin_catalog, tmp_path):
    """A directory was "no such file"; an unwritable error report was blamed on the file imported; a refused id of
    --ids-file was named by its index in one call (item_ids[2]); a JSONL row's number skipped blank lines."""
    directory = cli("import", str(tmp_path), "--format", "csv", "--catalog", admin_catalog.address, check=False)
    assert directory.returncode == 1 and directory.stderr.strip() == f"{tmp_path}: a directory, not a file"

    source = tmp_path / "rows.jsonl"
    source.write_text('{"item_id": "l-1", "title": "Boots"}\n\n\n{"item_id": "l-2", "price": -1}\n')
    unwritable = cli("import", str(source), "--errors", "/proc/self/mem", "--catalog", admin_catalog.address, check=False)
    assert unwritable.returncode == 1 and unwritable.stderr.startswith("/proc/self/mem: cannot be written"), unwritable.stderr
    cli("import", str(source), "--catalog", admin_catalog.address, check=False)
    assert error_report(tmp_path / "rows.jsonl.import-errors.jsonl")[4]["item_id"] == "l-2"  # line 4, the second row

    (tmp_path / "ids.txt").write_text("l-1\n\n" + "x" * 300 + "\n")
    deleted = cli("delete", "--ids-file", str(tmp_path / "ids.txt"), "--catalog", admin_catalog.address, check=False)
    assert deleted.returncode == 1 and f"{tmp_path / 'ids.txt'} line 3 ('{'x' * 39}... (302 characters)): at most 256" in deleted.stderr
    got = cli("get", "l-1", "x" * 300, "--catalog", admin_catalog.address, check=False)
    assert got.returncode == 1 and "item id 2 of the command line (" in got.stderr and "item_ids[" not in got.stderr


def test_get_prints_a_titles_control_characters_escaped_in_json_that_reads_back_to_the_title(catalog, admin_catalog):
    """JSON escapes C0 but leaves DEL and C1 raw: U+009B is a terminal's CSI, so `get` printed a title that drove the
    terminal (here: recoloured it red)."""
    from whisperlite.core.clients.types import Item

    title = "Boots \x9b31mRED\x9b0m \x1b[2J\x7f café"
    catalog.upsert([Item(item_id="c1-1", title=title, attributes={"note\x85": "x\x9c"})])
    printed = cli("get", "c1-1", "--catalog", admin_catalog.address).stdout
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", printed), repr(printed)
    (item,) = [json.loads(line) for line in printed.splitlines()]
    assert item["title"] == title and item["attributes"] == {"note\x85": "x\x9c"}
    assert "café" in printed  # non-ASCII text stays readable
