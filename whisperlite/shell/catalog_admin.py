"""`whisperlite catalog import|get|delete|count|export`: the catalog from the command line.

Import reads CSV, JSONL or Parquet row by row, maps columns to item fields, and upserts in batches
through the typed catalog client. A bad row is written to the error report (row number, id, why)
and the import goes on; after each batch a checkpoint records how many rows are done, so an
interrupted import resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from tqdm import tqdm

from whisperlite.core.progress import bar_disabled
from whisperlite.core.clients.catalog_admin import CatalogAdminClient
from whisperlite.core.clients.types import Item
from whisperlite.core.item_fields import parse_attributes, parse_price
from whisperlite.shell.client_flags import at_least, call_failed

FORMATS = ("csv", "jsonl", "parquet")
EXPORT_COLUMNS = ("item_id", "title", "text", "category", "price", "image_uri", "attributes")
DEFAULT_BATCH_SIZE = 256
DEFAULT_IDS_PER_CALL = 1000  # the catalog's default --max-batch


def detect_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower().lstrip(".")
    aliases = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl", "parquet": "parquet", "pq": "parquet"}
    if suffix not in aliases:
        raise SystemExit(f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass --format {'|'.join(FORMATS)}")
    return aliases[suffix]


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column fills which item field ('' leaves the field empty)."""

    item_id: str = "item_id"
    title: str = "title"
    text: str = "text"
    category: str = "category"
    price: str = "price"
    image_uri: str = "image_uri"
    attributes: str = "attributes"  # a JSON object (or a dict, in JSONL and Parquet)
    attribute_columns: tuple[str, ...] = ()  # each becomes one attribute named after its column


class RowError(ValueError):
    pass


def _text(row: dict, column: str) -> str:
    if not column or row.get(column) is None:
        return ""
    value = row[column]
    return value if isinstance(value, str) else str(value)


def _price(row: dict, column: str) -> float | None:
    try:
        return parse_price(row.get(column) if column else None)
    except ValueError as error:
        raise RowError(f"{column}: {error}") from None


def _attributes(row: dict, mapping: ColumnMapping) -> dict[str, str]:
    try:
        attributes = parse_attributes(row.get(mapping.attributes) if mapping.attributes else None)
    except ValueError as error:
        raise RowError(f"{mapping.attributes}: {error}") from None
    for column in mapping.attribute_columns:
        value = _text(row, column)
        if value:
            attributes[column] = value
    return attributes


def row_to_item(row: dict, mapping: ColumnMapping) -> Item:
    item_id = _text(row, mapping.item_id)  # exactly as written: an export's " sp1 " must come back as " sp1 ", not "sp1"
    if not item_id.strip():
        raise RowError(f"{mapping.item_id}: missing or empty (every item needs an id)")
    return Item(
        item_id=item_id,
        title=_text(row, mapping.title),
        text=_text(row, mapping.text),
        category=_text(row, mapping.category),
        price=_price(row, mapping.price),
        image_uri=_text(row, mapping.image_uri),
        attributes=_attributes(row, mapping),
    )


def read_rows(path: Path, file_format: str) -> Iterator[tuple[int, dict | RowError]]:
    """(row number from 1, the row as a dict) for every data row; a row that cannot be parsed comes
    as a RowError so the caller reports it and goes on."""
    if file_format == "csv":
        # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte order mark, which would otherwise stick to the first column's name
        with path.open(newline="", encoding="utf-8-sig", errors="strict") as handle:
            reader = csv.DictReader(handle)
            for number, row in enumerate(reader, 1):
                if None in row:  # more fields than the header names
                    yield number, RowError(f"{len(row[None])} field(s) more than the header's {len(reader.fieldnames or ())}")
                else:
                    yield number, row
    elif file_format == "jsonl":
        with path.open(encoding="utf-8") as handle:
            number = 0
            for line in handle:
                if not line.strip():
                    continue
                number += 1
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, RowError(f"not valid JSON: {error.msg} (column {error.colno})")
                    continue
                yield number, row if isinstance(row, dict) else RowError(f"must be a JSON object, got {type(row).__name__}")
    else:
        import pyarrow.parquet as pq  # only Parquet needs pyarrow

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row


def count_rows(path: Path, file_format: str) -> int | None:
    """The row count for the progress bar, when it is cheap to know (Parquet's footer)."""
    if file_format != "parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


@dataclass
class Checkpoint:
    """Rows done so far, tied to the file's size and modification time so a changed file starts over."""

    path: Path
    source: dict
    rows_done: int = 0
    upserted: int = 0
    failed: int = 0

    @classmethod
    def load(cls, path: Path, source_file: Path, restart: bool) -> Checkpoint:
        stat = source_file.stat()
        source = {"file": str(source_file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if path.is_file() and not restart:
            try:
                saved = json.loads(path.read_text())
                rows_done, upserted, failed = saved["rows_done"], saved["upserted"], saved["failed"]
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"{path}: not a checkpoint this command wrote: pass --restart to import from the first row") from None
            if saved.get("source") != source:
                raise SystemExit(
                    f"{path} belongs to another version of {source_file} (size or modification time differ): "
                    "pass --restart to import from the first row"
                )
            return cls(path, source, rows_done, upserted, failed)
        return cls(path, source)

    def save(self) -> None:
        state = {"source": self.source, "rows_done": self.rows_done, "upserted": self.upserted, "failed": self.failed}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.path)  # a crash mid-write never leaves half a checkpoint


@dataclass
class ImportReport:
    upserted: int = 0
    failed: int = 0
    skipped_rows: int = 0  # done by an earlier, interrupted run
    errors_file: Path | None = None


class _ErrorLog:
    """The per-row error report: one JSON object per line {"row", "item_id", "error"}."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        if not append:
            path.unlink(missing_ok=True)  # an earlier run's report would be read as this one's
        self._handle = None  # opened at the first refused row: a clean import leaves no empty report behind

    def write(self, row: int, item_id: str, error: str) -> None:
        if self._handle is None:
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps({"row": row, "item_id": item_id, "error": error}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _upsert_batch(client: CatalogAdminClient, batch: list[tuple[int, Item]], errors: _ErrorLog) -> tuple[int, int]:
    """Upserts a batch whole; when the catalog refuses it (INVALID_ARGUMENT: it validates the whole
    request before writing), item by item, so only the bad rows are reported and the rest are
    written. Any other failure (the catalog down past the client's retries) stops the import with
    the checkpoint at the last complete batch. Returns (upserted, failed)."""
    try:
        return client.upsert([item for _, item in batch]).upserted, 0
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        if len(batch) == 1:
            number, item = batch[0]
            errors.write(number, item.item_id, error.details())
            return 0, 1
    upserted = failed = 0
    for number, item in batch:
        try:
            upserted += client.upsert([item]).upserted
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            errors.write(number, item.item_id, error.details())
            failed += 1
    return upserted, failed


def import_file(
    client: CatalogAdminClient,
    path: Path,
    *,
    file_format: str,
    mapping: ColumnMapping,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint_path: Path,
    errors_path: Path,
    restart: bool = False,
    progress: bool = True,
) -> ImportReport:
    checkpoint = Checkpoint.load(checkpoint_path, path, restart)
    resuming = checkpoint.rows_done > 0
    errors = _ErrorLog(errors_path, append=resuming)
    report = ImportReport(upserted=checkpoint.upserted, failed=checkpoint.failed, skipped_rows=checkpoint.rows_done, errors_file=errors_path)
    batch: list[tuple[int, Item]] = []
    seen_in_batch: set[str] = set()
    last_row = checkpoint.rows_done

    def flush() -> None:
        upserted, failed = _upsert_batch(client, batch, errors)
        checkpoint.upserted += upserted
        checkpoint.failed += failed
        checkpoint.rows_done = last_row
        checkpoint.save()
        batch.clear()
        seen_in_batch.clear()

    bar = tqdm(total=count_rows(path, file_format), initial=checkpoint.rows_done, desc="import", unit="row", disable=bar_disabled(progress))
    try:
        for number, row in read_rows(path, file_format):
            if number <= checkpoint.rows_done:
                continue
            try:
                if isinstance(row, RowError):
                    raise row
                item = row_to_item(row, mapping)
            except RowError as error:
                errors.write(number, _text(row, mapping.item_id) if isinstance(row, dict) else "", str(error))
                checkpoint.failed += 1
            else:
                # A later row with the same id replaces the earlier one, as upserts do; within one
                # request the catalog refuses duplicates, so the batch is sent first.
                if item.item_id in seen_in_batch:
                    flush()
                batch.append((number, item))
                seen_in_batch.add(item.item_id)
            last_row = number
            bar.update(1)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    finally:
        bar.close()
        errors.close()
    report.upserted, report.failed = checkpoint.upserted, checkpoint.failed
    checkpoint_path.unlink(missing_ok=True)  # complete: a re-run imports the file again
    return report


def _export_row(item: Item) -> dict:
    return {
        "item_id": item.item_id,
        "title": item.title,
        "text": item.text,
        "category": item.category,
        "price": item.price,
        "image_uri": item.image_uri,
        "attributes": dict(sorted(item.attributes.items())),  # one order: two exports of the same items are byte-identical
    }


def export_file(client: CatalogAdminClient, path: Path, file_format: str, page_size: int = 0, progress: bool = True) -> int:
    """Writes every item in id order, in a form `catalog import` reads back with its default mapping.

    The items go to a temporary file beside `path`, which replaces `path` only once every item is written: an export
    that fails or is interrupted leaves the previous export as it was, never a partial file that looks complete.
    A pipe or a device (`>(gzip > items.csv.gz)`, /dev/stdout) is written directly: it holds no previous export."""
    if path.exists() and not path.is_file():
        return _export_to(client, path, file_format, page_size, progress)
    partial = path.with_name(f".{path.name}.partial")
    try:
        written = _export_to(client, partial, file_format, page_size, progress)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return written


def _export_to(client: CatalogAdminClient, path: Path, file_format: str, page_size: int, progress: bool) -> int:
    total = client.stats().item_count
    written = 0
    with tqdm(total=total, desc="export", unit="item", disable=bar_disabled(progress)) as bar:
        items = (_export_row(item) for item in client.iter_items(page_size))
        if file_format == "parquet":
            written = _write_parquet(path, items, bar)
        else:
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS) if file_format == "csv" else None
                if writer:
                    writer.writeheader()
                for row in items:
                    if writer:
                        writer.writerow({**row, "price": "" if row["price"] is None else row["price"], "attributes": json.dumps(row["attributes"])})
                    else:
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    written += 1
                    bar.update(1)
    return written


def _write_parquet(path: Path, rows: Iterator[dict], bar: tqdm, rows_per_group: int = 10_000) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [(name, pa.string()) for name in ("item_id", "title", "text", "category")]
        + [("price", pa.float64()), ("image_uri", pa.string()), ("attributes", pa.map_(pa.string(), pa.string()))]
    )
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
        group: list[dict] = []
        for row in rows:
            group.append({**row, "attributes": list(row["attributes"].items())})
            if len(group) == rows_per_group:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                written += len(group)
                bar.update(len(group))
                group = []
        if group or not written:
            writer.write_table(pa.Table.from_pylist(group, schema=schema))
            written += len(group)
            bar.update(len(group))
    return written


# ---- command line ----------------------------------------------------------------------------------


def _not_utf8(path: Path, error: UnicodeDecodeError) -> SystemExit:
    return SystemExit(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8 and import again")


def _client(args) -> CatalogAdminClient:
    from whisperlite.shell.client_flags import client_options

    return CatalogAdminClient(args.catalog, client_options(args))


def _import(args) -> None:
    path: Path = args.file
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    mapping = ColumnMapping(
        item_id=args.id_column,
        title=args.title_column,
        text=args.text_column,
        category=args.category_column,
        price=args.price_column,
        image_uri=args.image_column,
        attributes=args.attributes_column,
        attribute_columns=tuple(column for value in args.attribute_column or () for column in value.split(",") if column),
    )
    checkpoint = args.checkpoint or path.with_name(path.name + ".import-checkpoint.json")
    errors = args.errors or path.with_name(path.name + ".import-errors.jsonl")
    for what, written in (("--checkpoint", checkpoint), ("--errors", errors)):  # before anything is written to the catalog
        if written.is_dir() or not written.parent.is_dir():
            raise SystemExit(f"{what} {written}: not a file in an existing directory")
    file_format = detect_format(path, args.format)
    _check_columns(path, file_format, mapping)
    with _client(args) as client:
        try:
            report = import_file(
                client, path, file_format=file_format, mapping=mapping, batch_size=args.batch_size,
                checkpoint_path=checkpoint, errors_path=errors, restart=args.restart,
            )  # fmt: skip
        except grpc.RpcError as error:
            raise SystemExit(
                f"{error.code().name}: {error.details()}\nstopped; the rows done so far are in {checkpoint}: "
                "run the same command again to resume"
            ) from None
        except UnicodeDecodeError as error:
            raise _not_utf8(path, error) from None
        except (ValueError, OSError) as error:  # a file that is not of its --format, an unreadable checkpoint
            raise SystemExit(f"{path}: cannot be read as {file_format}: {error}") from None
    resumed = f" (resumed after row {report.skipped_rows})" if report.skipped_rows else ""
    print(f"imported {report.upserted} items into the catalog at {args.catalog}{resumed}; {report.failed} rows refused")
    if report.failed:
        print(f"refused rows and why: {errors}")
        # Nothing imported at all is a failure whatever --strict says: a wrong mapping refuses every row.
        sys.exit(1 if args.strict or not report.upserted else 0)


def _check_columns(path: Path, file_format: str, mapping: ColumnMapping) -> None:
    """A CSV whose header lacks the id column would refuse every row, one by one: said once, before any write."""
    if file_format != "csv":
        return
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None
    if mapping.item_id not in header:
        raise SystemExit(f"{path}: no column {mapping.item_id!r} (--id-column); its columns are {', '.join(header)[:300]}")


def _item_ids(args) -> list[str]:
    """The ids named on the command line, then those of --ids-file (one per line, '-' for stdin), in order, each once."""
    ids = list(args.item_ids)
    if args.ids_file is not None:
        try:
            text = sys.stdin.read() if str(args.ids_file) == "-" else args.ids_file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise SystemExit(f"{args.ids_file}: cannot read ids: {getattr(error, 'strerror', None) or error}") from None
        ids += [line for line in text.splitlines() if line.strip()]  # ids kept exactly, as import keeps them
    if not ids:  # a usage error, as argparse's own (exit 2)
        print("error: name at least one item id, as arguments or in --ids-file", file=sys.stderr)
        sys.exit(2)
    return list(dict.fromkeys(ids))  # the catalog answers an id once per call: once in all, across calls too


def _batches(ids: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _get(args) -> None:
    ids, missing = _item_ids(args), []
    with _client(args) as client:
        for batch in _batches(ids, args.batch_size):
            try:
                found = client.get(batch, include_vectors=args.vectors)
            except grpc.RpcError as error:
                raise call_failed(error, args.catalog, "catalog") from None
            for item in found.items:
                row = _export_row(item)
                if args.vectors:
                    row["vector"] = list(item.vector)
                print(json.dumps(row, ensure_ascii=False))
            missing += found.missing_item_ids
    if missing:
        print(f"not in the catalog: {', '.join(missing)}", file=sys.stderr)
        sys.exit(1)


def _delete(args) -> None:
    ids, deleted = _item_ids(args), 0
    with _client(args) as client:
        for batch in _batches(ids, args.batch_size):
            try:
                deleted += client.delete(batch)
            except grpc.RpcError as error:
                done = f" ({deleted} deleted before this call)" if deleted else ""
                raise SystemExit(str(call_failed(error, args.catalog, "catalog")) + done) from None
    print(f"deleted {deleted} of {len(ids)} ids (the others were not in the catalog)")


def _count(args) -> None:
    with _client(args) as client:
        try:
            print(client.stats().item_count)
        except grpc.RpcError as error:
            raise call_failed(error, args.catalog, "catalog") from None


def _export(args) -> None:
    path: Path = args.file
    if path.is_dir() or not path.exists() and not path.parent.is_dir():
        raise SystemExit(f"{path}: not a file in an existing directory")
    with _client(args) as client:
        try:
            written = export_file(client, path, detect_format(path, args.format), args.page_size)
        except grpc.RpcError as error:
            raise SystemExit(f"{error.code().name}: {error.details()}\nexport stopped; {path} is unchanged") from None
        except OSError as error:
            raise SystemExit(f"{path}: cannot write: {error.strerror}") from None
    print(f"exported {written} items to {args.file}")


def register(commands) -> None:
    from whisperlite.core.topology import CATALOG
    from whisperlite.shell.client_flags import add_client_flags

    catalog = commands.add_parser("catalog", help="import, export, get, delete and count catalog items")
    actions = catalog.add_subparsers(dest="action", required=True)

    def action(name: str, help: str, func, timeout_seconds: float = 30.0):
        parser = actions.add_parser(name, help=help)
        parser.add_argument("--catalog", default=CATALOG.local_address, help=f"catalog address (default {CATALOG.local_address})")
        add_client_flags(parser, timeout_seconds)
        parser.set_defaults(func=func)
        return parser

    # An upsert embeds the items without vectors in the same call: give a batch time to be encoded.
    importer = action("import", "upsert the items of a CSV, JSONL or Parquet file", _import, timeout_seconds=300.0)
    importer.add_argument("file", type=Path, help="items file (.csv, .jsonl/.ndjson, .parquet)")
    importer.add_argument("--format", choices=FORMATS, help="file format (default: from the suffix)")
    for name, default in (("id", "item_id"), ("title", "title"), ("text", "text"), ("category", "category"), ("price", "price"), ("image", "image_uri")):
        importer.add_argument(f"--{name}-column", default=default, help=f"source column of the item's {name} (default {default}; '' for none)")
    importer.add_argument("--attributes-column", default="attributes", help="column holding a JSON object of attributes (default attributes)")
    importer.add_argument("--attribute-column", action="append", help="a column stored as the attribute of its name (repeatable, or comma-separated)")
    importer.add_argument("--batch-size", type=at_least(1), default=DEFAULT_BATCH_SIZE, help=f"items per upsert (default {DEFAULT_BATCH_SIZE})")
    importer.add_argument("--checkpoint", type=Path, help="where rows done are recorded (default FILE.import-checkpoint.json)")
    importer.add_argument("--errors", type=Path, help="per-row error report, JSON lines (default FILE.import-errors.jsonl)")
    importer.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and import from the first row")
    importer.add_argument("--strict", action="store_true", help="exit 1 when any row was refused")

    getter = action("get", "print items by id as JSON lines", _get)
    getter.add_argument("--vectors", action="store_true", help="include each item's vector")
    deleter = action("delete", "delete items by id", _delete)
    for parser in (getter, deleter):
        parser.add_argument("item_ids", nargs="*", help="item ids")
        parser.add_argument("--ids-file", type=Path, help="more ids, one per line ('-': standard input)")
        parser.add_argument(
            "--batch-size", type=at_least(1), default=DEFAULT_IDS_PER_CALL,
            help=f"ids per call, at most the catalog's --max-batch (default {DEFAULT_IDS_PER_CALL})",
        )

    action("count", "print the number of items", _count)

    exporter = action("export", "write every item to a CSV, JSONL or Parquet file that `catalog import` reads back", _export, 120.0)
    exporter.add_argument("file", type=Path)
    exporter.add_argument("--format", choices=FORMATS, help="file format (default: from the suffix)")
    exporter.add_argument("--page-size", type=int, default=0, help="items per ListItems call (default: the catalog's limit)")
