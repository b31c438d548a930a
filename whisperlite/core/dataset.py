"""The canonical dataset directory that every WhisperLite command reads.

- ``items.csv``: ``item_id,title,text,category,image_path`` (all but item_id and title may be empty)
- ``interactions.csv``: ``user_id,item_id,timestamp,request``; ``timestamp`` in unix seconds,
  ``request`` the text the user wrote for that interaction (empty when the source has none).
  Rows are sorted by user, then time; rows of one user with equal timestamps are in a fixed
  order, so a stable sort by timestamp keeps the prepared order.
- ``dataset.json``: counts, where requests and item text come from, the raw files' sha256 and
  notes on the quirks that preparation handled.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from whisperlite.core.item_text import items_with_request_text
from whisperlite.core.item_fields import (
    MAX_ID_CHARS, field_problem, item_id_problem, parse_attributes, parse_price, repeated_columns_problem, shown,
)

CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"
from whisperlite.core.text import has_visible_characters

log = logging.getLogger(__name__)

ITEM_COLUMNS = ["item_id", "title", "text", "category", "image_path"]
INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "request"]
ITEMS_FILE = "items.csv"
INTERACTIONS_FILE = "interactions.csv"
INFO_FILE = "dataset.json"
FORMAT_VERSION = 1

# What a spreadsheet or an export writes for "no text": a request of these words is no request.
PLACEHOLDER_REQUESTS = frozenset({"n/a", "na", "null", "none", "nan", "-", "?"})

# Unix time in milliseconds passes 1e11 (year 5138 in seconds), in seconds it stays below it until then.
_MILLISECONDS_FROM = 1e11


# Where a dataset's request texts come from (dataset.json "request_source").
REQUESTS_NONE = "none"  # no user text: fill with whisperlite.data.requests.fill_missing_requests
# Where item text comes from (dataset.json "item_text_source").
ITEM_TEXT_METADATA = "metadata"  # items.csv as written
# items.csv has no usable text: build it from training-split requests only, with
# whisperlite.core.item_text.items_with_request_text, so that no test request leaks into items.
ITEM_TEXT_TRAIN_REQUESTS = "train_requests"


@dataclass
class PreparedDataset:
    """A converter's output before it is written: canonical frames plus facts for dataset.json."""

    items: pd.DataFrame
    interactions: pd.DataFrame
    request_source: str
    item_text_source: str
    timestamp_source: str
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first broken rule of the canonical format."""
        items, inter = self.items, self.interactions
        if list(items.columns) != ITEM_COLUMNS:
            raise ValueError(f"items columns must be {ITEM_COLUMNS}, got {list(items.columns)}")
        if list(inter.columns) != INTERACTION_COLUMNS:
            raise ValueError(f"interactions columns must be {INTERACTION_COLUMNS}, got {list(inter.columns)}")
        if items["item_id"].eq("").any():
            raise ValueError("items: empty item_id")
        duplicated = items["item_id"][items["item_id"].duplicated()]
        if len(duplicated):
            raise ValueError(f"items: duplicate item_id {duplicated.iloc[0]!r}")
        if items["title"].eq("").any():
            raise ValueError(f"items: empty title for item {items.loc[items['title'].eq(''), 'item_id'].iloc[0]!r}")
        unknown = ~inter["item_id"].isin(items["item_id"])
        if unknown.any():
            raise ValueError(f"interactions: item_id {inter.loc[unknown, 'item_id'].iloc[0]!r} is not in items")
        if inter["user_id"].eq("").any():
            raise ValueError("interactions: empty user_id")
        if not pd.api.types.is_integer_dtype(inter["timestamp"]):
            raise ValueError(f"interactions: timestamp must be integer unix seconds, got {inter['timestamp'].dtype}")


def file_sha256(*paths: Path) -> str:
    """sha256 of the files' bytes, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def data_hash(data_dir: str | os.PathLike) -> str:
    """What a trained model and a metrics.json record of the data they came from (16 hex digits)."""
    directory = Path(data_dir)
    return file_sha256(directory / ITEMS_FILE, directory / INTERACTIONS_FILE)[:16]


def raw_checksums(raw_dir: Path, names: list[str]) -> dict[str, str]:
    return {name: file_sha256(raw_dir / name) for name in names}


def write_dataset(ds: PreparedDataset, out_dir: Path, name: str, source: str, raw_files: dict[str, str]) -> dict:
    """Validate and write the three files; each file is written beside and renamed into place
    so that a reader never sees half a dataset file. Returns the dataset.json content."""
    ds.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    items = ds.items
    inter = ds.interactions.sort_values(["user_id", "timestamp"], kind="stable", ignore_index=True)
    paths = {ITEMS_FILE: out_dir / ITEMS_FILE, INTERACTIONS_FILE: out_dir / INTERACTIONS_FILE}
    for frame, file_name in ((items, ITEMS_FILE), (inter, INTERACTIONS_FILE)):
        tmp = paths[file_name].with_suffix(".csv.tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, paths[file_name])
    has_request = inter["request"].str.strip() != ""
    info = {
        "name": name,
        "source": source,
        "format_version": FORMAT_VERSION,
        "n_items": int(len(items)),
        "n_users": int(inter["user_id"].nunique()),
        "n_interactions": int(len(inter)),
        "has_requests": bool(has_request.any()),
        "n_interactions_with_request": int(has_request.sum()),
        "request_source": ds.request_source,
        "item_text_source": ds.item_text_source,
        "timestamp_source": ds.timestamp_source,
        "time_range": [int(inter["timestamp"].min()), int(inter["timestamp"].max())] if len(inter) else None,
        **ds.extra,
        "notes": ds.notes,
        "raw_sha256": raw_files,
        "files_sha256": {file_name: file_sha256(path) for file_name, path in paths.items()},
    }
    tmp = out_dir / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, out_dir / INFO_FILE)
    return info


def read_items(data_dir: str | os.PathLike) -> pd.DataFrame:
    """items.csv with every column as a string (ids stay strings: "0012" is not 12); optional
    columns a hand-made file leaves out are empty."""
    path = Path(data_dir) / ITEMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: prepare the dataset with `whisperlite data prepare`")
    items = _read_csv(path, dtype=str, keep_default_na=False)
    if "item_id" not in items:
        raise ValueError(f"{path}: missing column item_id (item_id,title[,text,category,...])")
    if "title" not in items and "text" not in items:
        raise ValueError(f"{path}: needs a title or a text column: an item is embedded from them")
    _check_ids(path, items, "item_id")
    problems = items["item_id"].map(item_id_problem)
    _refuse_first(path, problems.notna().to_numpy(), lambda row: f"item_id {items['item_id'].iloc[row]!r} {problems.iloc[row]}: the catalog cannot store it")
    for column in ITEM_COLUMNS:
        if column not in items:
            items[column] = ""
    problems = pd.Series([_item_fields_problem(row) for row in items.to_dict("records")], index=items.index, dtype=object)
    _refuse_first(path, problems.notna().to_numpy(), lambda row: f"{problems.iloc[row]}: the catalog cannot store this item")
    return items


def _item_fields_problem(row: dict) -> str | None:
    """Why the catalog would refuse the row's item (its price, attributes or a field past its limit), or None: the
    model must not train on a catalog `up` then cannot ingest."""
    try:
        parse_price(row.get("price"))
    except ValueError as error:
        return f"price: {error}"
    try:
        attributes = parse_attributes(row.get("attributes"))
    except ValueError as error:
        return f"attributes: {error}"
    found = field_problem(row["title"], row["text"], row["category"], row["image_path"], attributes)
    if found is not None:
        field, why = found
        return f"{'image_path' if field == 'image_uri' else field}: {why}"
    return None


def read_interactions(data_dir: str | os.PathLike) -> pd.DataFrame:
    """interactions.csv with string ids and requests and timestamps (int64 seconds, float64 where some carry
    a fraction; blank ones 0), in file order.

    A timestamp that is not a finite number is refused (ValueError naming its line): read as 0 it would
    silently reorder the user's sequence, and the split is by time."""
    path = Path(data_dir) / INTERACTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: prepare the dataset with `whisperlite data prepare`")
    frame = _read_csv(path, dtype={"user_id": str, "item_id": str, "request": str, "timestamp": str}, keep_default_na=False)
    missing = [column for column in ("user_id", "item_id", "timestamp") if column not in frame]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (user_id,item_id,timestamp[,request]; timestamp in unix seconds)")
    if "request" not in frame:
        frame["request"] = ""
    for column in ("user_id", "item_id"):
        _check_ids(path, frame, column)
    if frame["timestamp"].str.strip().eq("").any():
        _refuse_rows_ending_before(path, list(frame.columns).index("timestamp") + 1)
    frame["timestamp"] = _timestamps(path, frame["timestamp"])
    return frame


def _refuse_rows_ending_before(path: Path, fields: int) -> None:
    """pandas reads a row cut short as blank cells: its missing timestamp would pass for a blank one (0) and move
    the row to the start of its user's sequence. Refuses the first row with fewer than `fields` fields."""
    rows = _rows_with_lines(path)
    next(rows, None)
    for line, record in rows:
        if record and len(record) < fields:
            raise ValueError(f"{path} line {line}: {len(record)} field(s), the row ends before its timestamp (field {fields})")


def _rows_with_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(the line it starts on, its fields) of each row, the header first: a quoted value can span lines (a review
    with paragraphs), so pandas' row number does not give the line."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        records = csv.reader(file)
        start = 1
        for record in records:
            yield start, record
            start = records.line_num + 1


def _read_csv(path: Path, **options) -> pd.DataFrame:
    """pandas' reader, its errors (a ragged row, an open quote, bytes that are not UTF-8) naming the file and, for
    bytes that are not UTF-8, the line."""
    _refuse_other_separators(path)
    _refuse_repeated_columns(path)
    try:
        frame = pd.read_csv(path, **options)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} line {_first_line_not_utf8(path)}: not UTF-8 ({error.reason}); save the file as UTF-8") from None
    except pd.errors.ParserError as error:
        raise ValueError(_parser_error(path, error)) from None
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(frame.index, pd.RangeIndex):
        # The first row held more fields than the header, so pandas read its first column as the index and shifted
        # every column: item ids became titles. A trailing delimiter on every row (a spreadsheet export) adds only
        # empty fields, which are dropped; a value holding an unquoted comma is refused with its line.
        _refuse_extra_fields(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)  # the dropped fields are empty: checked above
            frame = pd.read_csv(path, index_col=False, **options)
    return frame


def _refuse_repeated_columns(path: Path) -> None:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (UnicodeDecodeError, csv.Error):  # pandas says it, naming the line
        return
    if (problem := repeated_columns_problem(header)) is not None:
        raise ValueError(f"{path}: {problem}")


# pandas' tokenizer numbers CSV records, not file lines ("line" from 1, "row" from 0 with the header as row 0): a
# value spanning lines above the error, or an unclosed quote, made its number point at the wrong line.
_PANDAS_RAGGED_RECORD = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_PANDAS_UNCLOSED_QUOTE = re.compile(r"EOF inside string starting at row (\d+)")


def _parser_error(path: Path, error: pd.errors.ParserError) -> str:
    message = str(error)
    if ragged := _PANDAS_RAGGED_RECORD.search(message):
        expected, record, saw = map(int, ragged.groups())
        return f"{path} line {_line_of_record(path, record - 1)}: {_too_many_fields(saw, expected)}"
    if unclosed := _PANDAS_UNCLOSED_QUOTE.search(message):
        line = _line_of_record(path, int(unclosed[1]))
        return f"{path} line {line}: a quoted value starts here and is never closed (a stray double quote?)"
    return f"{path}: {message}"


def _line_of_record(path: Path, index: int) -> int:
    """The line CSV record `index` starts on (the header is record 0; a blank line is a record, as pandas counts)."""
    return next(itertools.islice(_rows_with_lines(path), index, None), (index + 1, []))[0]


def _too_many_fields(fields: int, header_fields: int) -> str:
    return f"{fields} fields, the header has {header_fields} (quote a value that holds a comma)"


def _refuse_other_separators(path: Path) -> None:
    """A header with no comma but tabs or semicolons (a spreadsheet's TSV, or a locale's CSV) was read as one column,
    and refused as a missing column or a ragged line 2, which did not say why."""
    with path.open(encoding="utf-8-sig", errors="replace") as file:
        header = file.readline()
    for separator, name in (("\t", "tabs"), (";", "semicolons")):
        if "," not in header and separator in header:
            raise ValueError(f"{path} line 1: the header is separated by {name}, not commas: save the file as comma-separated CSV")


def _first_line_not_utf8(path: Path) -> int:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return raw.count(b"\n", 0, error.start) + 1
    return 0


def _refuse_extra_fields(path: Path) -> None:
    rows = _rows_with_lines(path)
    _, header = next(rows, (1, []))
    for line, record in rows:
        if len(record) > len(header) and any(value.strip() for value in record[len(header):]):
            raise ValueError(f"{path} line {line}: {_too_many_fields(len(record), len(header))}")


def _refuse_first(path: Path, bad: np.ndarray, problem: Callable[[int], str]) -> None:
    """ValueError naming the file line of the first row where `bad` holds (the header is line 1)."""
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path} line {_line_of_row(path, row)}: {problem(row)}")


def _line_of_row(path: Path, row: int) -> int:
    """The line data row `row` starts on (pandas skips blank lines)."""
    rows = _rows_with_lines(path)
    next(rows, None)
    data_lines = (line for line, record in rows if record)
    return next(itertools.islice(data_lines, row, None), row + 2)


def _check_ids(path: Path, frame: pd.DataFrame, column: str) -> None:
    ids = frame[column]
    _refuse_first(path, ids.str.strip().eq("").to_numpy(), lambda _: f"{column} is empty")
    lengths = ids.str.len()
    _refuse_first(path, (lengths > MAX_ID_CHARS).to_numpy(), lambda row: f"{column} is {lengths.iloc[row]} characters, more than {MAX_ID_CHARS}")
    if column != "user_id":  # an item id meets the catalog's whole rule (item_id_problem) where items are read
        return
    # The ranker refuses such a user id, so a model trained on one had users it could never serve. Only ids without
    # an ASCII letter or digit are classified character by character: a dataset's 250,000 ids are not.
    _refuse_first(path, ids.str.contains(CONTROL_CHARACTERS).to_numpy(),
                  lambda row: f"{column} {shown(ids.iloc[row])} holds a control character (tab, newline, ...), which the services refuse in an id")
    unusual = ~ids.str.contains(r"[0-9A-Za-z]")
    invisible = np.zeros(len(ids), dtype=bool)
    invisible[unusual.to_numpy()] = [not has_visible_characters(value) for value in ids[unusual]]
    _refuse_first(path, invisible, lambda row: f"{column} {shown(ids.iloc[row])} has no visible character, which the services refuse in an id")


def _timestamps(path: Path, values: pd.Series) -> pd.Series:
    """int64 unix seconds, each read exactly (no float64 round trip: nanosecond integers keep their order);
    float64 when some carry a fraction of a second, so that their order is kept too. A value that is not
    a finite number, or lies past int64, is refused naming its line."""
    stripped = values.str.strip()
    text = stripped.mask(stripped.eq(""), "0")  # blank: 0, as documented
    numbers = pd.to_numeric(text, errors="coerce")

    def timestamp(why: str) -> Callable[[int], str]:
        return lambda row: f"timestamp {values.iloc[row]!r} {why}"

    _refuse_first(path, numbers.isna().to_numpy(), timestamp("is not unix seconds"))
    as_float = numbers.to_numpy(dtype=np.float64)
    _refuse_first(path, ~np.isfinite(as_float), timestamp("is not a finite number"))
    _refuse_first(path, np.abs(as_float) >= 2.0**63, timestamp("lies past what int64 unix time holds"))
    whole = text.str.fullmatch(r"[+-]?\d+")
    if whole.all():
        return text.map(int).astype("int64")  # exact, however many digits
    if (as_float % 1 == 0).all():
        return pd.Series(as_float.astype(np.int64), index=values.index)  # "1.7e9", "1700000000.0"
    return pd.Series(as_float, index=values.index)


def read_info(data_dir: str | os.PathLike) -> dict:
    """dataset.json; {} for a hand-made dataset without one."""
    path = Path(data_dir) / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not JSON: {error}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: must be a JSON object, got {type(info).__name__}")
    # The two fields WhisperLite reads (the others are for people); null means absent, as it always did.
    name = info.get("name")
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        info["name"] = str(name)  # {"name": 2024}: a name, written as a number
    elif name is not None and not isinstance(name, str):
        raise ValueError(f"{path}: 'name' must be a string, got {name!r}")
    version = info.get("format_version")
    if version is not None and version != FORMAT_VERSION:  # a later format may mean what this reader does not know
        log.warning("%s: format_version %r: this WhisperLite reads format %d; the files are read as that format",
                    path, version, FORMAT_VERSION)
    source = info.get("item_text_source")
    if source is not None and source not in (ITEM_TEXT_METADATA, ITEM_TEXT_TRAIN_REQUESTS):
        log.warning("%s: item_text_source %r is neither %r nor %r: items.csv's text is used as written (%r)",
                    path, source, ITEM_TEXT_METADATA, ITEM_TEXT_TRAIN_REQUESTS, ITEM_TEXT_METADATA)
    return info


@dataclass
class Dataset:
    """A canonical dataset read for training or evaluation: row i of `items` is item index i."""

    name: str
    directory: Path
    items: pd.DataFrame  # item_id,title,text,category,image_path
    interactions: pd.DataFrame  # user_id,item_id,timestamp,request,item (index into items)
    info: dict
    data_hash: str

    @property
    def n_items(self) -> int:
        return len(self.items)


def first_row_of_each_item(listed: pd.DataFrame, directory: Path) -> pd.DataFrame:
    """items.csv's rows with the first of each repeated item_id (a WARNING says how many were set aside): training
    and ingest both keep it, so the catalog holds the item the model learned."""
    items = listed.drop_duplicates("item_id", keep="first").reset_index(drop=True)
    if len(items) < len(listed):
        repeated = listed["item_id"][listed["item_id"].duplicated()]
        log.warning("%s: %d rows repeat an item_id listed above them (e.g. %s); the first row of each id is kept",
                    directory / ITEMS_FILE, len(repeated), _examples(repeated))
    return items


def items_to_serve(data_dir: str | os.PathLike) -> pd.DataFrame:
    """The items a catalog is loaded with (`ingest`, `up --data`): items.csv's first row of each id, and for a dataset
    whose items are described by what users wrote (`item_text_source: train_requests`) each item's text built from
    the written requests, oldest first, as training builds it. Every request may describe an item once it serves:
    only evaluation must keep held-out ones out. Training's texts hold the same opening words (its train rows are each
    item's oldest), so the served vector is the trained one's or a fuller one. Loaded as written, such items were
    their titles alone ("Yelp business <id>", a clothing class name): 1,206 items of womens_ecommerce_clothing were
    27 distinct catalog texts, and the model ranked vectors unlike those it was trained and evaluated on."""
    directory = Path(data_dir)
    items = first_row_of_each_item(read_items(directory), directory)
    if read_info(directory).get("item_text_source") != ITEM_TEXT_TRAIN_REQUESTS:
        return items
    return items_with_request_text(items, read_interactions(directory))


def load_dataset(data_dir: str | os.PathLike) -> Dataset:
    """The dataset with each interaction's item index. What it has to set aside or guess is said in a WARNING
    with counts and examples: a repeated item id keeps its first row, interactions naming unknown items are
    dropped (all of them: ValueError, with what would have matched), items without words, and timestamps
    that tie within a user or mix seconds and milliseconds."""
    directory = Path(data_dir)
    listed = read_items(directory)
    items = first_row_of_each_item(listed, directory)
    unread = [column for column in listed.columns if column not in ITEM_COLUMNS]
    if unread:  # an item is embedded from title and text alone: say so rather than let a colour column look used
        log.info("%s: columns %s are not read by training or evaluation (items embed from title and text; `ingest` keeps "
                 "price and attributes for the catalog's filters)", directory / ITEMS_FILE, ", ".join(unread))
    wordless = (items["title"].str.strip() == "") & (items["text"].str.strip() == "")
    if wordless.any():
        log.warning("%s: %d items have neither title nor text (e.g. %s): they embed as the empty text, all alike",
                    directory / ITEMS_FILE, int(wordless.sum()), _examples(items["item_id"][wordless]))
    interactions = read_interactions(directory)
    info = read_info(directory)
    index = pd.Series(np.arange(len(items)), index=items["item_id"])
    interactions["item"] = interactions["item_id"].map(index)
    unknown = interactions["item"].isna()
    if unknown.any():
        ids = interactions["item_id"][unknown]
        what = (f"{directory / INTERACTIONS_FILE}: {int(unknown.sum())} of {len(interactions)} interactions name items missing "
                f"from items.csv (e.g. {_examples(ids)}){_near_misses(ids, items['item_id'])}")
        if unknown.all():
            raise ValueError(f"{what}: no interactions (with an item in items.csv) to learn from")
        log.warning("%s; dropped", what)
        interactions = interactions[~unknown]
    interactions["item"] = interactions["item"].astype(np.int64)
    _warn_about_times(directory / INTERACTIONS_FILE, interactions)
    invisible = (interactions["request"] != "") & ~interactions["request"].map(has_visible_characters)
    if invisible.any():  # the ranker refuses such a query ("must contain a visible character"): training should not fit it
        log.warning("%s: %d requests hold no visible character (e.g. %s): read as empty, so a simulated request stands in",
                    directory / INTERACTIONS_FILE, int(invisible.sum()), _examples(interactions["request"][invisible]))
        interactions.loc[invisible, "request"] = ""
    placeholders = interactions["request"].str.strip().str.lower().isin(PLACEHOLDER_REQUESTS)
    if placeholders.any():
        log.warning("%s: %d requests are placeholders such as %s: they are read as what the user wrote; leave the cell "
                    "empty for a simulated request", directory / INTERACTIONS_FILE, int(placeholders.sum()),
                    _examples(interactions["request"][placeholders]))
    return Dataset(
        name=info.get("name") or directory.resolve().name,  # `--data .` named it ""
        directory=directory,
        items=items,
        interactions=interactions.reset_index(drop=True),
        info=info,
        data_hash=data_hash(directory),
    )


def _examples(values: pd.Series, count: int = 3) -> str:
    return ", ".join(repr(value) for value in list(dict.fromkeys(values.tolist()))[:count])


def _near_misses(unknown_ids: pd.Series, item_ids: pd.Series) -> str:
    """What the unknown ids would have matched, read less exactly: ids are read as written, so these stay unmatched."""
    known, hints = set(item_ids), []
    explained = pd.Series(False, index=unknown_ids.index)
    for how, normal in (("once spaces around them are stripped", str.strip),
                        ("once leading zeros are ignored (ids read as numbers by a spreadsheet?)", lambda i: i.strip().lstrip("0") or "0")):
        normalized = {normal(i) for i in known}
        # Only those the simpler reading above did not explain: " 7412" matched both, and was said to be both.
        matches = unknown_ids.map(lambda i, n=normal, s=normalized: n(i) in s) & ~explained
        explained |= matches
        if matching := int(matches.sum()):
            hints.append(f"{matching} of them match an item {how}")
    return "; " + "; ".join(hints) + ": ids are read exactly as written" if hints else ""


def _warn_about_times(path: Path, interactions: pd.DataFrame) -> None:
    """Ties within a user leave file order to decide which of the tied interactions is the later one (the split
    holds the last one out), and a mix of units orders the millisecond rows after every second one."""
    times = interactions["timestamp"].to_numpy(dtype=np.float64)
    large = times >= _MILLISECONDS_FROM
    if large.any() and (times[~large] > 0).any():
        log.warning("%s: %d timestamps look like milliseconds and %d like seconds: a user's rows are ordered by these "
                    "numbers, so write them all in one unit (seconds)", path, int(large.sum()), int((times[~large] > 0).sum()))
    # The split keeps a user's first row of each item, so only distinct items at one time leave an order to guess.
    distinct = interactions.drop_duplicates(["user_id", "item_id"])
    tied = distinct.duplicated(["user_id", "timestamp"], keep=False)
    if tied.any():
        users = distinct["user_id"][tied].nunique()
        log.warning("%s: %d interactions share their timestamp with another of the same user (%d users): file order decides "
                    "which of them comes later, and so which one the temporal split holds out (space tied rows apart in the "
                    "order they happened, as `whisperlite data prepare` does)", path, int(tied.sum()), users)


def most_active_user(data_dir: str | os.PathLike) -> str | None:
    """The user with the most interactions (an example for docs and `whisperlite up`); None without interactions."""
    if not (Path(data_dir) / INTERACTIONS_FILE).is_file():
        return None
    users = read_interactions(data_dir)["user_id"]
    return users.value_counts().index[0] if len(users) else None
