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

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

ITEM_COLUMNS = ["item_id", "title", "text", "category", "image_path"]
INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "request"]
ITEMS_FILE = "items.csv"
INTERACTIONS_FILE = "interactions.csv"
INFO_FILE = "dataset.json"
FORMAT_VERSION = 1

# Where a dataset's request texts come from (dataset.json "request_source").
REQUESTS_NONE = "none"  # no user text: fill with whisperlite.data.requests.fill_missing_requests
# Where item text comes from (dataset.json "item_text_source").
ITEM_TEXT_METADATA = "metadata"  # items.csv as written
# items.csv has no usable text: build it from training-split requests only, with
# whisperlite.data.item_text.item_text_from_requests, so that no test request leaks into items.
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def raw_checksums(raw_dir: Path, names: list[str]) -> dict[str, str]:
    return {name: _sha256(raw_dir / name) for name in names}


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
        "files_sha256": {file_name: _sha256(path) for file_name, path in paths.items()},
    }
    tmp = out_dir / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, out_dir / INFO_FILE)
    return info


def read_items(data_dir: str | os.PathLike) -> pd.DataFrame:
    """items.csv with every column as a string (ids stay strings: "0012" is not 12)."""
    return pd.read_csv(Path(data_dir) / ITEMS_FILE, dtype=str, keep_default_na=False)


def read_interactions(data_dir: str | os.PathLike) -> pd.DataFrame:
    """interactions.csv with string ids and requests and int64 timestamps, in file order."""
    frame = pd.read_csv(
        Path(data_dir) / INTERACTIONS_FILE,
        dtype={"user_id": str, "item_id": str, "request": str, "timestamp": "int64"},
        keep_default_na=False,
    )
    return frame


def read_info(data_dir: str | os.PathLike) -> dict:
    return json.loads((Path(data_dir) / INFO_FILE).read_text())
