"""`whisperlite catalog import|get|delete|count|export`: the catalog from the command line.

Import reads CSV, JSONL or Parquet row by row, maps columns to item fields, and upserts in batches
through the typed catalog client. A bad row (anything the reader or the row checks cannot take, or an
id an earlier row gave) is written to the error report (row number, id, why) and the import goes on;
after each batch a checkpoint records how many rows are done and the settings that decide what they
became, so an interrupted import resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
from tqdm import tqdm

from whisperlite.core.progress import bar_disabled
from whisperlite.core.clients.catalog_admin import CatalogAdminClient
from whisperlite.core.clients.errors import DEFAULT_RETRIES, RetrySchedule, downstream_error, is_transient
from whisperlite.core.clients.types import Item
from whisperlite.core.item_fields import (
    RepeatedKey, attribute_value, field_problem, item_id_problem, object_without_repeated_keys, parse_attributes, parse_price,
    parse_vector, repeated_columns_problem, shown,
)
from whisperlite.shell.client_flags import at_least, call_failed, client_certificate_hint
from whisperlite.shell.terminal import terminal_json

FORMATS = ("csv", "jsonl", "parquet")
EXPORT_COLUMNS = ("item_id", "title", "text", "category", "price", "image_uri", "attributes")
VECTOR_COLUMN = "vector"  # written by `export --vectors`, read by `import` (--vector-column)
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
    # The item's own vector (an array of numbers; a JSON array in CSV), upserted as is instead of embedding its text:
    # an exported image vector comes back as it was. No column by default: a dataset's items.csv has no vectors.
    vector: str = ""


class RowError(ValueError):
    pass


def _kind(value: object) -> str:
    """A value's type as a JSON file would name it, for messages."""
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, (int, float, Decimal)):
        return f"a number ({shown(value)})"
    if isinstance(value, str):
        return f"a string ({shown(value)})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def _string(row: dict, column: str, *, trim: bool = False) -> str:
    """A text field's value: a string, or none (absent, null) read as empty; any other type is refused, as a number or
    an object turned into text would store something the file never said (0.1e1 as "1.0", {"a": 1} as "{'a': 1}")."""
    value = row.get(column) if column else None
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f"{column}: must be a string, got {_kind(value)}")
    return value.strip() if trim else value


def _price(row: dict, column: str, typed: bool) -> float | None:
    value = row.get(column) if column else None
    if typed and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, Decimal))):
        raise RowError(f"{column}: must be a number or null, got {_kind(value)}")
    try:
        return parse_price(value)
    except ValueError as error:
        raise RowError(f"{column}: {error}") from None


def _vector(row: dict, column: str, typed: bool) -> tuple[float, ...]:
    value = row.get(column) if column else None
    if typed and isinstance(value, str):  # as a price: JSONL and Parquet say an array as one
        raise RowError(f"{column}: must be an array of numbers or null, got {_kind(value)}")
    try:
        return parse_vector(value)
    except ValueError as error:
        raise RowError(f"{column}: {error}") from None


def _attributes(row: dict, mapping: ColumnMapping) -> dict[str, str]:
    try:
        attributes = parse_attributes(row.get(mapping.attributes) if mapping.attributes else None)
    except ValueError as error:
        raise RowError(f"{mapping.attributes}: {error}") from None
    for column in mapping.attribute_columns:
        value = row.get(column)
        if value is None or value == "":
            continue
        try:
            attributes[column] = attribute_value(value)
        except ValueError as error:
            raise RowError(f"{column}: {error}") from None
    return attributes


def row_to_item(row: dict, mapping: ColumnMapping, *, typed: bool = False, trim: bool = False) -> Item:
    """The item a row describes, or RowError naming the column the catalog could not store.

    typed: the values carry JSON or Parquet types (a price must then be a number; a CSV's cells are all text).
    trim: the id and the category lose surrounding whitespace, as `catalog import` documents (a spreadsheet's
    " Shoes " would miss a filter on "Shoes"); `ingest` keeps a dataset's ids exactly, as the model trained on them."""
    item_id = _string(row, mapping.item_id, trim=trim)
    if not item_id.strip():
        raise RowError(f"{mapping.item_id}: missing or empty (every item needs an id)")
    if (problem := item_id_problem(item_id)) is not None:
        raise RowError(f"{mapping.item_id}: {problem}")
    item = Item(
        item_id=item_id,
        title=_string(row, mapping.title),
        text=_string(row, mapping.text),
        category=_string(row, mapping.category, trim=trim),
        price=_price(row, mapping.price, typed),
        image_uri=_string(row, mapping.image_uri),
        attributes=_attributes(row, mapping),
        vector=_vector(row, mapping.vector, typed),
    )
    if (found := field_problem(item.title, item.text, item.category, item.image_uri, item.attributes)) is not None:
        field, why = found
        raise RowError(f"{getattr(mapping, field) or field}: {why}")
    return item


# Characters in one CSV field: past every field the catalog stores (a text is at most 16,000), so a long cell is
# refused by the row checks, naming its column; only a quote left open runs into it. (csv's own default, 131,072,
# stopped the whole import at the first longer cell.)
CSV_FIELD_CHARS = 1 << 24


def read_rows(path: Path, file_format: str) -> Iterator[tuple[int, dict | RowError]]:
    """(row number from 1, in JSONL its line; the row as a dict) for every data row; a row that cannot be read (a CSV
    row of the wrong width, a field past CSV_FIELD_CHARS, a JSONL line that is not a JSON object) comes as a RowError,
    so the caller reports it and goes on. ValueError for a file that cannot be read at all."""
    if file_format == "csv":
        yield from _csv_rows(path)
    elif file_format == "jsonl":
        yield from _jsonl_rows(path)
    else:
        import pyarrow.parquet as pq  # only Parquet needs pyarrow

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row


def _csv_reader(handle) -> Iterator[list[str]]:
    # strict: a quote left open at the end of the file is an error; without it the reader silently took every line
    # after the quote as part of that one cell (and a value such as `"a"b` is refused, not read as `ab`).
    return csv.reader(handle, strict=True)


# What csv's strict reader says when the file ends inside a quoted value.
_CSV_UNCLOSED_QUOTE = "unexpected end of data"


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    """ValueError, naming its line, for a quoted value never closed: every line after it would be one cell."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_CHARS))
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte order mark, which would otherwise stick to the first column's name
    with path.open(newline="", encoding="utf-8-sig", errors="strict") as handle:
        reader = _csv_reader(handle)
        header = next(reader, [])
        if (problem := repeated_columns_problem(header)) is not None:
            raise ValueError(problem)
        number = 0
        while True:
            start = reader.line_num + 1  # the line the next record starts on
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as error:  # the reader goes on at the next line
                if str(error) == _CSV_UNCLOSED_QUOTE:
                    raise ValueError(f"line {start}: a quoted value starts in this row and is never closed (a stray double quote?)") from None
                number += 1
                yield number, RowError(f"cannot be read as CSV: {error} (line {reader.line_num})")
                continue
            if not record:  # a blank line
                continue
            number += 1
            if len(record) != len(header):
                difference = f"{len(record) - len(header)} field(s) more" if len(record) > len(header) else f"{len(header) - len(record)} field(s) fewer"
                yield number, RowError(f"{difference} than the header's {len(header)}")
            else:
                yield number, dict(zip(header, record))


def _json_number(text: str) -> float | Decimal:
    """A JSON number as a float, unless it is written non-zero and reads as 0.0 ("1e-400"): then its exact value, so
    that the price check refuses it as it refuses the same text in a CSV cell instead of storing the item free."""
    number = float(text)
    return Decimal(text) if number == 0.0 and Decimal(text) != 0 else number


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    """A row's number is its line: counting only the lines that hold a row, the error report's row 17 was line 19."""
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=object_without_repeated_keys, parse_float=_json_number)
            except json.JSONDecodeError as error:
                yield number, RowError(f"not valid JSON: {error.msg} (column {error.colno})")
                continue
            except RepeatedKey as error:
                yield number, RowError(str(error))
                continue
            except (ValueError, RecursionError):  # an integer of more than 4,300 digits, arrays nested past the parser's depth
                yield number, RowError("not JSON this reader can take (nested too deeply, or a number too long)")
                continue
            yield number, row if isinstance(row, dict) else RowError(f"must be a JSON object, got {_kind(row)}")


@dataclass(frozen=True)
class RowOutcome:
    number: int
    item_id: str  # as far as it could be read, for the error report
    item: Item | None
    error: str = ""


def rows_to_items(path: Path, file_format: str, mapping: ColumnMapping) -> Iterator[RowOutcome]:
    """Each row's item, or why it is refused: what the reader or the row checks cannot take (any of it: an
    unreadable row never stops the file), or an id an earlier row of the file already gave (the first row of an id
    is imported)."""
    first_row: dict[str, int] = {}
    for number, row in read_rows(path, file_format):
        try:
            if isinstance(row, RowError):
                raise row
            item = row_to_item(row, mapping, typed=file_format != "csv", trim=True)
        except (ValueError, TypeError, ArithmeticError, RecursionError) as error:
            raw_id = row.get(mapping.item_id) if isinstance(row, dict) else None
            why = str(error) if isinstance(error, RowError) else f"cannot be read: {type(error).__name__}: {error}"
            yield RowOutcome(number, raw_id if isinstance(raw_id, str) else "", None, why)
            continue
        first = first_row.setdefault(item.item_id, number)
        if first != number:
            yield RowOutcome(number, item.item_id, None, f"{mapping.item_id}: {shown(item.item_id)} repeats row {first} (the first row of an id is imported)")
        else:
            yield RowOutcome(number, item.item_id, item)


def count_rows(path: Path, file_format: str) -> int | None:
    """The row count for the progress bar, when it is cheap to know (Parquet's footer)."""
    if file_format != "parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


@dataclass
class Checkpoint:
    """Rows done so far, tied to the file's size and modification time (a changed file starts over) and to the
    settings that decide what its rows become (format, column flags, catalog)."""

    path: Path
    source: dict
    settings: dict
    rows_done: int = 0
    upserted: int = 0
    failed: int = 0

    @classmethod
    def load(cls, path: Path, source_file: Path, settings: dict, restart: bool) -> Checkpoint:
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
            if (before := saved.get("settings")) != settings:
                changed = (
                    "; ".join(f"{flag} was {before.get(flag)!r}, now {value!r}" for flag, value in settings.items() if before.get(flag) != value)
                    if isinstance(before, dict) else "its settings were not recorded"
                )  # fmt: skip
                raise SystemExit(
                    f"{path}: the interrupted import ran with other settings ({changed}): run it with those to resume "
                    "it, or pass --restart to import every row with these"
                )
            return cls(path, source, settings, rows_done, upserted, failed)
        return cls(path, source, settings)

    def save(self) -> None:
        state = {"source": self.source, "settings": self.settings, "rows_done": self.rows_done, "upserted": self.upserted, "failed": self.failed}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.path)  # a crash mid-write never leaves half a checkpoint


def import_settings(file_format: str, mapping: ColumnMapping, catalog: str) -> dict[str, str]:
    """What decides the items a file's rows become, by the flag that sets it: a resumed import must use the same."""
    return {
        "--format": file_format, "--catalog": catalog, "--id-column": mapping.item_id, "--title-column": mapping.title,
        "--text-column": mapping.text, "--category-column": mapping.category, "--price-column": mapping.price,
        "--image-column": mapping.image_uri, "--attributes-column": mapping.attributes,
        "--attribute-column": ",".join(mapping.attribute_columns), "--vector-column": mapping.vector,
    }  # fmt: skip


@dataclass
class ImportReport:
    upserted: int = 0
    failed: int = 0
    skipped_rows: int = 0  # done by an earlier, interrupted run
    rows: int = 0  # the last row's number: 0 for a file without rows
    errors_file: Path | None = None


class _ErrorLog:
    """The per-row error report: one JSON object per line {"row", "item_id", "error"}."""

    def __init__(self, path: Path, rows_done: int):
        """Keeps the entries of the rows an interrupted run finished (rows_done) and drops the others: the rows after
        them are read again, and would be reported twice."""
        self.path = path
        entries = path.read_text(encoding="utf-8").splitlines(keepends=True) if rows_done and path.is_file() else []
        kept = [entry for entry in entries if _entry_row(entry) <= rows_done]
        path.unlink(missing_ok=True)  # a clean import leaves no empty report behind
        self._handle = None  # opened at the first refused row
        if kept:
            self._open().writelines(kept)

    def _open(self):
        if self._handle is None:
            self._handle = self.path.open("a", encoding="utf-8")
        return self._handle

    def write(self, row: int, item_id: str, error: str) -> None:
        handle = self._open()
        handle.write(json.dumps({"row": row, "item_id": item_id, "error": error}) + "\n")  # ASCII: a lone surrogate fits
        handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _entry_row(entry: str) -> float:
    try:
        return json.loads(entry)["row"]
    except (ValueError, KeyError, TypeError):
        return math.inf


# How the catalog names an item of an upsert: by its index in the call, and the field at fault.
ITEM_IN_CALL = re.compile(r"items\[\d+\](?:\.(\w+))?: ")


def _refusal(error: Exception, mapping: ColumnMapping) -> str | None:
    """Why the catalog (INVALID_ARGUMENT: it validates the whole request before writing) or the client (an item
    that cannot be put in a message) refused an upsert; None for a failure that is not the items' fault.

    The catalog's "items[0].vector: ..." named the item's index in the call that was refused, which is no row of the
    file: written as the rows' own errors are, naming the column ("vector: ..."), beside the entry's row."""
    if isinstance(error, grpc.RpcError):
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            return None
        details = error.details()
        if (found := ITEM_IN_CALL.match(details)) is None:
            return details
        field = found[1]
        column = (getattr(mapping, field, "") or field) if field else ""
        return f"{column}: {details[found.end():]}" if column else details[found.end():]
    return f"cannot be sent: {error}"


def _upsert(client: CatalogAdminClient, items: list[Item], address: str, retries: int) -> int:
    """Upserts `items`, again after a transient failure (`is_transient`, waits of `RetrySchedule`: as `whisperlite
    ingest` retries a batch), each retry said on stderr: the import gave up at the first UNAVAILABLE of a catalog
    restarting, with gRPC's words alone ("Stream removed"). Upserts replace items by id, so a batch written twice is
    written once."""
    schedule = RetrySchedule(retries)
    while True:
        try:
            upserted = client.upsert(items).upserted
        except grpc.RpcError as error:
            failure = downstream_error(f"catalog at {address}", "UpsertItems", error)
            if not is_transient(failure) or (wait := schedule.next_wait(failure)) is None:
                raise
            hint = client_certificate_hint(error, client.options.security, "catalog")
            tqdm.write(
                f"catalog at {address}: {error.code().name}: {error.details()}{hint}; retry {schedule.retried}/{schedule.retries} in {wait:g} s",
                file=sys.stderr,
            )  # fmt: skip
            time.sleep(wait)
            continue
        if schedule.retried:
            tqdm.write(
                f"catalog at {address}: answered again after {schedule.retried} retr{'y' if schedule.retried == 1 else 'ies'}", file=sys.stderr,
            )  # fmt: skip
        return upserted


@dataclass
class _BatchSize:
    """Items per upsert: --batch-size, until the catalog refuses a batch over its own --max-batch. That refusal used to
    send the batch, and every later one, one item per call (a 256-row batch to a catalog of --max-batch 100: 257 calls
    instead of 4); now the import asks the catalog its limit and goes on in batches of that size."""

    size: int
    catalog: str

    def over_limit(self, client: CatalogAdminClient, refused: int) -> int | None:
        """The catalog's --max-batch when a refused batch of `refused` items was over it (the batch size is then
        lowered to it, said once on stderr), else None: the refusal was an item's fault."""
        limit = client.stats().max_batch  # 0: a catalog older than GetStatsResponse.max_batch, which does not say
        if not 0 < limit < refused:
            return None
        if limit < self.size:
            tqdm.write(
                f"--batch-size {self.size} lowered to {limit}: the catalog at {self.catalog} takes at most {limit} items per upsert "
                "(its --max-batch)", file=sys.stderr,
            )  # fmt: skip
            self.size = limit
        return limit


def _upsert_batch(
    client: CatalogAdminClient, batch: list[tuple[int, Item]], errors: _ErrorLog, size: _BatchSize, mapping: ColumnMapping, retries: int,
) -> tuple[int, int]:
    """Upserts a batch whole; when it is refused for its length, in parts the catalog takes; when it is refused
    otherwise, item by item, so only the bad rows are reported and the rest are written. A transient failure is
    retried (_upsert); any other, or one past the retries, stops the import with the checkpoint at the last complete
    batch.
    Returns (upserted, failed)."""
    try:
        return _upsert(client, [item for _, item in batch], size.catalog, retries), 0
    except (grpc.RpcError, ValueError, TypeError) as error:
        if (why := _refusal(error, mapping)) is None:
            raise
        if len(batch) == 1:
            number, item = batch[0]
            errors.write(number, item.item_id, why)
            return 0, 1
        if isinstance(error, grpc.RpcError) and (limit := size.over_limit(client, len(batch))) is not None:
            parts = [_upsert_batch(client, batch[start : start + limit], errors, size, mapping, retries) for start in range(0, len(batch), limit)]
            return sum(upserted for upserted, _ in parts), sum(failed for _, failed in parts)
    upserted = failed = 0
    for number, item in batch:
        try:
            upserted += _upsert(client, [item], size.catalog, retries)
        except (grpc.RpcError, ValueError, TypeError) as error:
            if (why := _refusal(error, mapping)) is None:
                raise
            errors.write(number, item.item_id, why)
            failed += 1
    return upserted, failed


def import_file(
    client: CatalogAdminClient,
    path: Path,
    *,
    file_format: str,
    mapping: ColumnMapping,
    catalog: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint_path: Path,
    errors_path: Path,
    restart: bool = False,
    progress: bool = True,
    retries: int = DEFAULT_RETRIES,
) -> ImportReport:
    """Imports every row after the checkpoint's; `catalog` is the address the client calls (a checkpoint is kept for
    one catalog)."""
    checkpoint = Checkpoint.load(checkpoint_path, path, import_settings(file_format, mapping, catalog), restart)
    errors = _ErrorLog(errors_path, checkpoint.rows_done)
    report = ImportReport(skipped_rows=checkpoint.rows_done, errors_file=errors_path)
    batch: list[tuple[int, Item]] = []
    last_row = checkpoint.rows_done
    size = _BatchSize(batch_size, catalog)

    def flush() -> None:
        upserted, failed = _upsert_batch(client, batch, errors, size, mapping, retries)
        checkpoint.upserted += upserted
        checkpoint.failed += failed
        checkpoint.rows_done = last_row
        checkpoint.save()
        batch.clear()

    bar = tqdm(total=count_rows(path, file_format), initial=checkpoint.rows_done, desc="import", unit="row", disable=bar_disabled(progress))
    try:
        # Rows an interrupted run finished are read again but not sent: their ids must be known to find repeats.
        for outcome in rows_to_items(path, file_format, mapping):
            report.rows = outcome.number
            if outcome.number <= checkpoint.rows_done:
                continue
            if outcome.item is None:
                errors.write(outcome.number, outcome.item_id, outcome.error)
                checkpoint.failed += 1
            else:
                batch.append((outcome.number, outcome.item))
            last_row = outcome.number
            bar.update(1)
            if len(batch) >= size.size:
                flush()
        if batch:
            flush()
    finally:
        bar.close()
        errors.close()
    report.upserted, report.failed = checkpoint.upserted, checkpoint.failed
    checkpoint_path.unlink(missing_ok=True)  # complete: a re-run imports the file again
    return report


def _export_row(item: Item, vector: bool = False) -> dict:
    """An item as `export` writes it and `get` prints it; `vector`: with its vector (the item must carry it)."""
    row = {
        "item_id": item.item_id,
        "title": item.title,
        "text": item.text,
        "category": item.category,
        "price": item.price,
        "image_uri": item.image_uri,
        "attributes": dict(sorted(item.attributes.items())),  # one order: two exports of the same items are byte-identical
    }
    if vector:
        row[VECTOR_COLUMN] = list(item.vector)
    return row


def export_file(
    client: CatalogAdminClient, path: Path, file_format: str, page_size: int = 0, progress: bool = True, vectors: bool = False
) -> int:
    """Writes every item in id order, in a form `catalog import` reads back with its default mapping; `vectors`: with
    each item's vector, which the import then upserts as is (without, the catalog embeds each item's text again).

    The items go to a temporary file beside `path`, which replaces `path` only once every item is written: an export
    that fails or is interrupted leaves the previous export as it was, never a partial file that looks complete.
    A pipe or a device (`>(gzip > items.csv.gz)`, /dev/stdout) is written directly: it holds no previous export."""
    if path.exists() and not path.is_file():
        return _export_to(client, path, file_format, page_size, progress, vectors)
    partial = path.with_name(f".{path.name}.partial")
    try:
        written = _export_to(client, partial, file_format, page_size, progress, vectors)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return written


def _export_to(client: CatalogAdminClient, path: Path, file_format: str, page_size: int, progress: bool, vectors: bool) -> int:
    total = client.stats().item_count
    written = 0
    with tqdm(total=total, desc="export", unit="item", disable=bar_disabled(progress)) as bar:
        items = (_export_row(item, vectors) for item in client.iter_items(page_size, include_vectors=vectors))
        if file_format == "parquet":
            written = _write_parquet(path, items, bar, vectors)
        else:
            with path.open("w", newline="", encoding="utf-8") as handle:
                columns = EXPORT_COLUMNS + ((VECTOR_COLUMN,) if vectors else ())
                writer = csv.DictWriter(handle, fieldnames=columns) if file_format == "csv" else None
                if writer:
                    writer.writeheader()
                for row in items:
                    if writer:
                        writer.writerow({
                            **row, "price": "" if row["price"] is None else row["price"], "attributes": json.dumps(row["attributes"]),
                            **({VECTOR_COLUMN: json.dumps(row[VECTOR_COLUMN])} if vectors else {}),
                        })  # fmt: skip
                    else:
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    written += 1
                    bar.update(1)
    return written


def _write_parquet(path: Path, rows: Iterator[dict], bar: tqdm, vectors: bool, rows_per_group: int = 10_000) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [(name, pa.string()) for name in ("item_id", "title", "text", "category")]
        + [("price", pa.float64()), ("image_uri", pa.string()), ("attributes", pa.map_(pa.string(), pa.string()))]
        + ([(VECTOR_COLUMN, pa.list_(pa.float32()))] if vectors else [])  # float32: the catalog's own values, exactly
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


def _not_utf8(path: Path, line: int, error: UnicodeDecodeError) -> SystemExit:
    return SystemExit(f"{path}: not UTF-8 text (line {line}, byte {error.start + 1} of it: {error.reason}); save it as UTF-8 and import again")


def _client(args) -> CatalogAdminClient:
    from whisperlite.shell.client_flags import client_options

    return CatalogAdminClient(args.catalog, client_options(args))


def _import(args) -> None:
    path: Path = args.file
    if not path.is_file():
        raise SystemExit(f"{path}: {'a directory, not a file' if path.is_dir() else 'no such file'}")
    mapping = ColumnMapping(
        item_id=args.id_column,
        title=args.title_column,
        text=args.text_column,
        category=args.category_column,
        price=args.price_column,
        image_uri=args.image_column,
        attributes=args.attributes_column,
        attribute_columns=tuple(column for value in args.attribute_column or () for column in value.split(",") if column),
        vector=args.vector_column,
    )
    checkpoint = args.checkpoint or path.with_name(path.name + ".import-checkpoint.json")
    errors = args.errors or path.with_name(path.name + ".import-errors.jsonl")
    for what, written in (("--checkpoint", checkpoint), ("--errors", errors)):  # before anything is written to the catalog
        if written.is_dir() or not written.parent.is_dir():
            raise SystemExit(f"{what} {written}: not a file in an existing directory")
    file_format = detect_format(path, args.format)
    _check_file(path, file_format, mapping)
    with _client(args) as client:
        try:
            report = import_file(
                client, path, file_format=file_format, mapping=mapping, catalog=args.catalog, batch_size=args.batch_size,
                checkpoint_path=checkpoint, errors_path=errors, restart=args.restart, retries=args.retries,
            )  # fmt: skip
        except grpc.RpcError as error:
            again = (  # a refused token fails the same way until it is changed
                "run the same command again with a token the catalog accepts"
                if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
                else "run the same command again"
            )
            done = (
                f"the rows done so far are in {checkpoint}: {again} to resume" if checkpoint.is_file()
                else f"no row was done yet: {again}"
            )  # it said a checkpoint held them when the first batch had failed and none was written
            hint = client_certificate_hint(error, client.options.security, "catalog")
            raise SystemExit(f"{error.code().name}: {error.details()}{hint}\nstopped; {done}") from None
        except (ValueError, OSError) as error:  # a file that is not of its --format, or changed since it was checked
            if isinstance(error, OSError) and error.filename is not None and Path(error.filename) != path:
                # the error report or the checkpoint: it was blamed on the file being imported
                raise SystemExit(f"{error.filename}: cannot be written: {error.strerror}") from None
            raise SystemExit(f"{path}: cannot be read as {file_format}: {error}") from None
    resumed = f" (resumed after row {report.skipped_rows})" if report.skipped_rows else ""
    print(f"imported {report.upserted} items into the catalog at {args.catalog}{resumed}; {report.failed} rows refused")
    if report.failed:
        print(f"refused rows and why: {errors}")
    if not report.upserted:  # a wrong mapping refuses every row; an empty file imports nothing: failures whatever --strict says
        print(f"{path}: {'no rows to import' if not report.rows else 'no row imported'}", file=sys.stderr)
        sys.exit(1)
    if report.failed and args.strict:
        sys.exit(1)


def _check_file(path: Path, file_format: str, mapping: ColumnMapping) -> None:
    """What would refuse every row, or leave the file half imported, said once before anything is written: text that
    is not UTF-8 (a file saved in another encoding would import only the rows that happen to be ASCII), a header
    naming a column twice, no id column, a CSV quote never closed."""
    if file_format == "parquet":
        _check_parquet(path, mapping)
        return
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _not_utf8(path, line, error) from None
    if file_format != "csv":
        return
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(_csv_reader(handle), [])
    except csv.Error as error:
        raise SystemExit(f"{path}: cannot read the header: {error}") from None
    _check_names(path, header, mapping)
    try:
        for _ in _csv_rows(path):  # a quote left open makes the rest of the file one cell: refused before any row is sent
            pass
    except ValueError as error:
        raise SystemExit(f"{path} {error}; nothing was imported") from None


def _check_names(path: Path, names: list[str], mapping: ColumnMapping) -> None:
    if (problem := repeated_columns_problem(names)) is not None:
        raise SystemExit(f"{path}: {problem}")
    if mapping.item_id not in names:
        raise SystemExit(f"{path}: no column {mapping.item_id!r} (--id-column); its columns are {', '.join(names)[:300]}")


def _check_parquet(path: Path, mapping: ColumnMapping) -> None:
    """A Parquet file states its columns' types: one that no row of it could pass is refused at once, not row by row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise SystemExit(f"{path}: cannot be read as parquet: {error}") from None
    _check_names(path, schema.names, mapping)

    def is_text(kind: pa.DataType) -> bool:
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind) or pa.types.is_null(kind)

    def is_number(kind: pa.DataType) -> bool:
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind) or pa.types.is_null(kind)

    columns = [(flag, column, is_text, "strings") for flag, column in (
        ("--id-column", mapping.item_id), ("--title-column", mapping.title), ("--text-column", mapping.text),
        ("--category-column", mapping.category), ("--image-column", mapping.image_uri),
    )] + [("--price-column", mapping.price, is_number, "numbers")]  # fmt: skip
    def is_numbers(kind: pa.DataType) -> bool:
        lists = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
        return pa.types.is_null(kind) or lists and is_number(kind.value_type)

    columns.append(("--vector-column", mapping.vector, is_numbers, "lists of numbers"))
    for flag, column, fits, wanted in columns:
        if column in schema.names and not fits(kind := schema.field(column).type):
            raise SystemExit(f"{path}: column {column!r} ({flag}) holds {kind}, but its values must be {wanted}: cast the column")


def _item_ids(args) -> dict[str, str]:
    """The ids named on the command line (exactly as given), then those of --ids-file (one per line, '-' for stdin,
    without surrounding whitespace, as `import` reads ids), in order, each once (the catalog answers an id once per
    call: once in all, across calls too), each with where it was given, for the catalog's refusals."""
    ids: dict[str, str] = {}
    for number, item_id in enumerate(args.item_ids, 1):
        ids.setdefault(item_id, f"item id {number} of the command line")
    if args.ids_file is not None:
        try:
            text = sys.stdin.read() if str(args.ids_file) == "-" else args.ids_file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise SystemExit(f"{args.ids_file}: cannot read ids: {getattr(error, 'strerror', None) or error}") from None
        source = "standard input" if str(args.ids_file) == "-" else str(args.ids_file)
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                ids.setdefault(line.strip(), f"{source} line {number}")
    if not ids:  # a usage error, as argparse's own (exit 2)
        print("error: name at least one item id, as arguments or in --ids-file", file=sys.stderr)
        sys.exit(2)
    return ids


# How the catalog names an id it refuses: by its index in the call.
_REFUSED_ID = re.compile(r"^item_ids\[(\d+)\]")


def _ids_call_failed(error: grpc.RpcError, batch: list[str], given: dict[str, str], client: CatalogAdminClient) -> SystemExit:
    """call_failed, with an id the catalog refused named by where it was given ("ids.txt line 7"): its index in one
    call of a batch ("item_ids[2]") was no line of anything."""
    failed = call_failed(error, client.address, "catalog", client.options.security)
    refused = _REFUSED_ID.match(error.details() or "")
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT or refused is None or int(refused[1]) >= len(batch):
        return failed
    item_id = batch[int(refused[1])]
    return SystemExit(str(failed).replace(refused[0], f"{given[item_id]} ({shown(item_id, 40)})", 1))


def _batches(ids: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _not_found(missing: list[str], unnamed: int = 0) -> None:
    if missing:
        print(f"not in the catalog: {', '.join(missing)}", file=sys.stderr)
    if unnamed:
        print(f"not in the catalog: {unnamed} more id(s), which a catalog older than DeleteItemsResponse.missing_item_ids does not name", file=sys.stderr)
    if missing or unnamed:
        sys.exit(1)


def _get(args) -> None:
    given, missing = _item_ids(args), []
    with _client(args) as client:
        for batch in _batches(list(given), args.batch_size):
            try:
                found = client.get(batch, include_vectors=args.vectors)
            except grpc.RpcError as error:
                raise _ids_call_failed(error, batch, given, client) from None
            for item in found.items:
                row = _export_row(item, args.vectors)
                print(terminal_json(row))
            missing += found.missing_item_ids
    _not_found(missing)


def _delete(args) -> None:
    """One DeleteItems per batch: its answer names the ids it did not find (before DeleteItemsResponse.missing_item_ids,
    a GetItems of the batch came first to learn them)."""
    given, deleted, missing, unnamed = _item_ids(args), 0, [], 0
    with _client(args) as client:
        for batch in _batches(list(given), args.batch_size):
            try:
                result = client.delete_items(batch)
            except grpc.RpcError as error:
                done = f" ({deleted} deleted before this call)" if deleted else ""
                raise SystemExit(str(_ids_call_failed(error, batch, given, client)) + done) from None
            deleted += result.deleted_count
            missing += result.missing_item_ids
            # The batch's ids are distinct: what neither count covers, a catalog older than the field did not name.
            unnamed += len(batch) - result.deleted_count - len(result.missing_item_ids)
    print(f"deleted {deleted} of {len(given)} ids")
    _not_found(missing, unnamed)


def _count(args) -> None:
    with _client(args) as client:
        try:
            print(client.stats().item_count)
        except grpc.RpcError as error:
            raise call_failed(error, args.catalog, "catalog", client.options.security) from None


def _export(args) -> None:
    path: Path = args.file
    if path.is_dir() or not path.exists() and not path.parent.is_dir():
        raise SystemExit(f"{path}: not a file in an existing directory")
    with _client(args) as client:
        try:
            written = export_file(client, path, detect_format(path, args.format), args.page_size, vectors=args.vectors)
        except grpc.RpcError as error:
            hint = client_certificate_hint(error, client.options.security, "catalog")
            raise SystemExit(f"{error.code().name}: {error.details()}{hint}\nexport stopped; {path} is unchanged") from None
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
    importer.add_argument(
        "--vector-column", default=VECTOR_COLUMN,
        help=f"column holding the item's vector, upserted as is instead of embedding its text (default {VECTOR_COLUMN}, as "
        "`export --vectors` writes; '' for none)",
    )
    importer.add_argument(
        "--batch-size", type=at_least(1), default=DEFAULT_BATCH_SIZE,
        help=f"items per upsert (default {DEFAULT_BATCH_SIZE}; lowered to the catalog's --max-batch when over it)",
    )
    importer.add_argument("--checkpoint", type=Path, help="where rows done are recorded (default FILE.import-checkpoint.json)")
    importer.add_argument("--errors", type=Path, help="per-row error report, JSON lines (default FILE.import-errors.jsonl)")
    importer.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and import from the first row")
    importer.add_argument("--strict", action="store_true", help="exit 1 when any row was refused")
    importer.add_argument(
        "--retries", type=at_least(0), default=DEFAULT_RETRIES,
        help=f"times a batch that failed for a passing reason (a catalog restarting or busy) is sent again, with backoff "
        f"(default {DEFAULT_RETRIES}, about 1.5 minutes in all); a refused token is not",
    )

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
    exporter.add_argument(
        "--vectors", action="store_true",
        help=f"write each item's vector (a {VECTOR_COLUMN!r} column), which `import` upserts as is: items whose vector was "
        "given, not embedded from their text, come back as they were",
    )
