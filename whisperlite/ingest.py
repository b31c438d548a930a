"""`whisperlite ingest`: loads a canonical dataset's items.csv into the catalog over gRPC."""

from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
from tqdm import tqdm

from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

# Each upsert carries this many items; the catalog embeds those without vectors in the same call,
# so the batch also bounds the encoder work behind one deadline.
DEFAULT_BATCH_SIZE = 256


def read_items(data_dir: Path) -> pd.DataFrame:
    path = Path(data_dir) / "items.csv"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `whisperlite data prepare` first")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _batches(items: pd.DataFrame, batch_size: int) -> Iterator[list[common_pb2.Item]]:
    batch: list[common_pb2.Item] = []
    for row in items.itertuples(index=False):
        batch.append(
            common_pb2.Item(
                item_id=row.item_id, title=row.title, text=row.text, category=row.category, image_uri=row.image_path
            )
        )
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def ingest(data_dir: Path, catalog_addr: str, batch_size: int = DEFAULT_BATCH_SIZE, timeout_seconds: float = 300.0) -> int:
    """Upserts every item (idempotent: re-running replaces items by id). Returns the number written."""
    items = read_items(data_dir)
    written = 0
    with grpc.insecure_channel(catalog_addr) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        with tqdm(total=len(items), desc="ingest", unit="item") as progress:
            for batch in _batches(items, batch_size):
                response = stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=batch), timeout=timeout_seconds, wait_for_ready=True)
                written += response.upserted_count
                progress.update(len(batch))
    return written
