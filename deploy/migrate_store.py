#!/usr/bin/env python3
"""Copy WhisperLite's catalog collections from one Milvus to another, vectors included.

The usual move: from the embedded milvus-lite file of `make run` to a Milvus server or cluster.

    python deploy/migrate_store.py --source var/catalog/catalog.db \\
        --target https://milvus.internal:19530 --target-token whisperlite:secret

Stop the catalog first: a milvus-lite file is locked by the one process that opens it. Each
collection is created on the target with the source's schema and vector index (or
--index-type/--index-params, e.g. HNSW, which milvus-lite does not offer), rows are copied in
1,000-row batches, and the row counts are compared at the end. A collection that already exists
on the target is left untouched and reported: nothing stored there is overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pymilvus import CollectionSchema, MilvusClient
from tqdm import tqdm

# Both milvus-lite 2.5.1 and the server ingest fastest around this batch size
# (larger calls fall off a cliff in milvus-lite; see docs/catalog-store.md).
BATCH_ROWS = 1000
# Keys of describe_index() that describe its state rather than how to build it.
_INDEX_STATE_KEYS = {"field_name", "index_name", "total_rows", "indexed_rows", "pending_index_rows", "state", "dim"}


def _number(value):
    if not isinstance(value, str):
        return value
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def index_specs(client: MilvusClient, collection: str) -> list[dict]:
    """The source's indexes as add_index() arguments (describe_index flattens params into strings)."""
    specs = []
    for index_name in client.list_indexes(collection):
        described = client.describe_index(collection, index_name)
        params = {k: _number(v) for k, v in described.items() if k not in _INDEX_STATE_KEYS | {"index_type", "metric_type"}}
        if isinstance(params.get("params"), str):  # some versions keep the original JSON under "params"
            params = {**params, **json.loads(params.pop("params"))}
        specs.append(
            {
                "field_name": described["field_name"],
                "index_name": index_name,
                "index_type": described.get("index_type"),
                "metric_type": described.get("metric_type"),
                "params": params,
            }
        )
    return specs


def row_count(client: MilvusClient, collection: str) -> int:
    return int(client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])


def copy_collection(
    source: MilvusClient, target: MilvusClient, name: str, index_type: str | None = None, index_params: dict | None = None
) -> int:
    description = source.describe_collection(name)
    schema = CollectionSchema.construct_from_dict(description)
    vector_fields = {field.name for field in schema.fields if "VECTOR" in field.dtype.name}
    indexes = target.prepare_index_params()
    for spec in index_specs(source, name):
        if index_type and spec["field_name"] in vector_fields:
            spec = {**spec, "index_type": index_type, "params": index_params or {}}
        indexes.add_index(**spec)
    # A Milvus server would otherwise default to Bounded: the catalog relies on reading its own writes.
    consistency = description.get("consistency_level", "Strong")
    target.create_collection(name, schema=schema, index_params=indexes, consistency_level=consistency)

    total = row_count(source, name)
    batches = source.query_iterator(name, batch_size=BATCH_ROWS, output_fields=["*"])
    with tqdm(total=total, desc=name, unit="row") as progress:
        while rows := batches.next():
            target.insert(name, rows)
            progress.update(len(rows))
    batches.close()
    target.flush(name)
    target.load_collection(name)
    copied = row_count(target, name)
    if copied != total:
        raise SystemExit(f"{name}: copied {copied} rows but the source holds {total}")
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="source URI: a milvus-lite file or http(s)://host:19530")
    parser.add_argument("--source-token", default="", help="source token, user:password")
    parser.add_argument("--target", required=True, help="target URI, e.g. https://milvus.internal:19530")
    parser.add_argument("--target-token", default="", help="target token, user:password")
    parser.add_argument("--collection", action="append", help="collection to copy (repeatable; default: all)")
    parser.add_argument("--index-type", help="vector index to build on the target instead of the source's, e.g. HNSW")
    parser.add_argument("--index-params", type=json.loads, default=None, help='JSON, e.g. \'{"M": 16, "efConstruction": 200}\'')
    args = parser.parse_args(argv)

    if not Path(args.source).is_file() and "://" not in args.source:
        parser.error(f"--source: {args.source} is neither a milvus-lite file nor a server URI")
    if "://" not in args.target:  # a milvus-lite file: its folder may not exist yet
        Path(args.target).parent.mkdir(parents=True, exist_ok=True)
    source = MilvusClient(uri=args.source, token=args.source_token)
    target = MilvusClient(uri=args.target, token=args.target_token)
    names = args.collection or source.list_collections()
    missing = [name for name in names if not source.has_collection(name)]
    if missing:
        parser.error(f"--collection: {', '.join(missing)} not in {args.source}")
    skipped = [name for name in names if target.has_collection(name)]
    for name in names:
        if name in skipped:
            print(f"{name}: already exists on the target, left untouched (drop it there to copy again)", file=sys.stderr)
            continue
        copied = copy_collection(source, target, name, args.index_type, args.index_params)
        print(f"{name}: {copied} rows copied")
    source.close()
    target.close()
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
