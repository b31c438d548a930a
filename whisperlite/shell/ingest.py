"""`whisperlite ingest`: loads a canonical dataset's items.csv into the catalog over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pandas as pd

from whisperlite.core.progress import Progress
from whisperlite.core.channels import create_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.clients.catalog import CatalogClient
from whisperlite.core.clients.errors import DEFAULT_RETRIES, CredentialsRefused, RetrySchedule, is_transient
from whisperlite.core.clients.types import item_to_proto
from whisperlite.core.dataset import items_to_serve
from whisperlite.shell.catalog_admin import ColumnMapping, RowError, row_to_item
from whisperlite.shell.client_flags import client_certificate_hint
from whisperlite.core.errors import ServiceError, Unavailable
from whisperlite.v1 import common_pb2

# Each upsert carries this many items; the catalog embeds those without vectors in the same call,
# so the batch also bounds the encoder work behind one deadline.
DEFAULT_BATCH_SIZE = 256
# How long ingest waits to reach the catalog at all (a catalog just started binds its port within seconds).
CONNECT_SECONDS = 15.0
# Ids per GetItems when looking for the items a catalog lacks (the catalog's default --max-batch).
LOOKUP_IDS = 1_000


# items.csv names the image column image_path; price and attributes (a JSON object) are optional
# columns a hand-made or imported dataset may carry, kept as `catalog import` keeps them.
ITEMS_CSV_MAPPING = ColumnMapping(image_uri="image_path")


def _batches(items: pd.DataFrame, batch_size: int) -> Iterator[list[common_pb2.Item]]:
    batch: list[common_pb2.Item] = []
    for row in items.to_dict("records"):
        try:
            batch.append(item_to_proto(row_to_item(row, ITEMS_CSV_MAPPING)))
        except RowError as error:  # named by its id: rows of repeated ids are gone by now, so a count would be off
            raise SystemExit(f"items.csv item {row['item_id']!r}: {error}") from None
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _upsert_with_retries(
    catalog: CatalogClient, reach: Callable[[], Awaitable[None]], batch: list[common_pb2.Item], first: int, retries: int, progress: Progress
) -> int:
    """Upserts one batch (items first.. of the dataset), again after a transient failure (`is_transient`, waits of
    `RetrySchedule`: as `catalog import` retries a batch), up to `retries` times. A retry first reaches the catalog again
    (`reach`, CONNECT_SECONDS at most): an upsert waits for a connection for its whole deadline, so a catalog that died
    mid-ingest kept each retry silent for 300 s."""
    batch_name = f"items {first}-{first + len(batch) - 1}"
    schedule = RetrySchedule(retries)
    while True:
        try:
            if schedule.retried:
                await reach()
            written = await catalog.upsert(batch)
        except ServiceError as error:
            if not is_transient(error):
                raise  # a refused token or item, a deployment fault: sent again, it meets the same answer
            if (wait := schedule.next_wait(error)) is None:
                raise Unavailable(f"{batch_name} failed {retries + 1} times, giving up: {error}") from None
            progress.write(f"ingest: {batch_name} failed ({error}); retry {schedule.retried}/{retries} in {wait:g} s")
            await asyncio.sleep(wait)
            continue
        if schedule.retried:
            progress.write(f"ingest: resumed from item {first} after {schedule.retried} retr{'y' if schedule.retried == 1 else 'ies'}")
        return written


async def _reach(channel: grpc.aio.Channel, catalog_addr: str, security: ClientSecurity) -> None:
    """Fails within CONNECT_SECONDS when no connection to the catalog can be made (nothing listens, a TLS mismatch),
    naming why: an upsert waits for a connection up to its whole deadline, and with the retries that was ~46 minutes
    of silence. A catalog that answers, even "still opening its store", is reached: the upserts' retries wait for it."""
    try:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_SECONDS)
    except TimeoutError:
        try:  # the channel's last failure, which a call that does not wait reports
            await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=2.0)
        except grpc.aio.AioRpcError as error:
            hint = client_certificate_hint(error, security, "catalog")
            raise Unavailable(f"catalog at {catalog_addr}: not reachable within {CONNECT_SECONDS:g} s: {error.details()}{hint}") from None


async def _lacking(catalog: CatalogClient, items: pd.DataFrame) -> pd.DataFrame:
    ids = items["item_id"].tolist()
    missing: set[str] = set()
    for start in range(0, len(ids), LOOKUP_IDS):
        missing.update(await catalog.missing(ids[start:start + LOOKUP_IDS]))
    return items[items["item_id"].isin(missing)]


async def _upsert_all(
    items: pd.DataFrame, catalog_addr: str, batch_size: int, timeout_seconds: float, retries: int, security: ClientSecurity,
    missing_only: bool,
) -> int:
    written = 0
    channel = create_channel(catalog_addr, security=security)
    try:
        await _reach(channel, catalog_addr, security)
        catalog = CatalogClient(channel, timeout_seconds, catalog_addr)
        if missing_only:
            items = await _lacking(catalog, items)
        with Progress(len(items), "ingest", "item") as progress:
            for batch in _batches(items, batch_size):
                written += await _upsert_with_retries(catalog, lambda: _reach(channel, catalog_addr, security), batch, written, retries, progress)
                progress.update(len(batch))
    finally:
        await channel.close()
    return written


def ingest(
    data_dir: Path,
    catalog_addr: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout_seconds: float = 300.0,
    retries: int = DEFAULT_RETRIES,
    security: ClientSecurity = PLAINTEXT,
    missing_only: bool = False,
) -> int:
    """Upserts every item (idempotent: re-running replaces items by id), or with `missing_only` those whose id the
    catalog lacks (finishing an interrupted ingest without embedding again what it holds), retrying a batch that
    failed with a transient error `retries` times with backoff. Returns the number written; a token without the
    `write` scope fails the first batch with PERMISSION_DENIED."""
    try:
        # The first row of a repeated id, as training keeps it, and the text training gave items described by reviews:
        # the catalog must hold the items the model learned.
        items = items_to_serve(data_dir)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    try:
        return asyncio.run(_upsert_all(items, catalog_addr, batch_size, timeout_seconds, retries, security, missing_only))
    except CredentialsRefused as error:  # its message is for a service's operator, naming --downstream-token-file
        raise SystemExit(f"{error.refusal} (the catalog at {catalog_addr} refused the token this ingest sent)") from None
