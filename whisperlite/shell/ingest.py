"""`whisperlite ingest`: loads a canonical dataset's items.csv into the catalog over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from whisperlite.core.channels import create_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.clients.catalog import CatalogClient
from whisperlite.core.clients.types import item_to_proto
from whisperlite.core.dataset import read_items
from whisperlite.shell.catalog_admin import ColumnMapping, RowError, row_to_item
from whisperlite.v1 import common_pb2

# Each upsert carries this many items; the catalog embeds those without vectors in the same call,
# so the batch also bounds the encoder work behind one deadline.
DEFAULT_BATCH_SIZE = 256


# items.csv names the image column image_path; price and attributes (a JSON object) are optional
# columns a hand-made or imported dataset may carry, kept as `catalog import` keeps them.
ITEMS_CSV_MAPPING = ColumnMapping(image_uri="image_path")


def _batches(items: pd.DataFrame, batch_size: int) -> Iterator[list[common_pb2.Item]]:
    batch: list[common_pb2.Item] = []
    for number, row in enumerate(items.to_dict("records"), 1):
        try:
            batch.append(item_to_proto(row_to_item(row, ITEMS_CSV_MAPPING)))
        except RowError as error:
            raise SystemExit(f"items.csv row {number}: {error}") from None
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _upsert_all(items: pd.DataFrame, catalog_addr: str, batch_size: int, timeout_seconds: float, security: ClientSecurity) -> int:
    written = 0
    channel = create_channel(catalog_addr, security=security)
    try:
        catalog = CatalogClient(channel, timeout_seconds, catalog_addr)
        with tqdm(total=len(items), desc="ingest", unit="item") as progress:
            for batch in _batches(items, batch_size):
                written += await catalog.upsert(batch)
                progress.update(len(batch))
    finally:
        await channel.close()
    return written


def ingest(
    data_dir: Path,
    catalog_addr: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout_seconds: float = 300.0,
    security: ClientSecurity = PLAINTEXT,
) -> int:
    """Upserts every item (idempotent: re-running replaces items by id). Returns the number written;
    a token without the `write` scope fails the first batch with PERMISSION_DENIED."""
    try:
        items = read_items(data_dir)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    return asyncio.run(_upsert_all(items, catalog_addr, batch_size, timeout_seconds, security))
