"""The catalog's store of record: one Milvus collection behind pymilvus `MilvusClient`.

The URI is either an embedded milvus-lite file (`.../catalog.db`, the default) or a Milvus server
(`http://host:19530`). Every call is blocking; the async catalog runs them in a worker thread.
Every Milvus call carries a timeout and a bound on pymilvus' own retries: pymilvus retries a failing
call 75 times (~3.5 minutes) by default, and honours a timeout as a retry limit only when it is an int.

Filtered search and recall: milvus-lite keeps its rows in a growing segment behind an interim IVF
index whose nprobe no search parameter can raise, so a category or price filter loses neighbours
(recall@10 0.90 in benchmarks/catalog_stores.py). The collection therefore holds each vector twice:
`vector` (the ANN index, for unfiltered searches and exclusions) and `vector_exact` (a FLAT index,
brute force over the rows that pass the filter, for category and price filters). Both live in the one
Milvus collection; nothing is indexed outside Milvus. docs/catalog-store.md has the measurements.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from whisperlite.core import item_fields as item_limits
from whisperlite.services.catalog.filters import Expression, SearchFilter, after_id_expression, build_expression, id_list_expression
from whisperlite.services.catalog.items import ItemRecord, SearchHit
from whisperlite.core.errors import FailedPrecondition, Unavailable

log = logging.getLogger("whisperlite.catalog.store")

VECTOR_FIELD = "vector"
EXACT_VECTOR_FIELD = "vector_exact"
SCALAR_FIELDS = ["item_id", "title", "text", "category", "price", "has_price", "image_uri", "attributes"]
# milvus-lite 2.5.1 inserts at 6-7k rows/s in calls of 1,000 rows and ~150 rows/s in calls of >= 4,000
# 512-d rows: writes go in chunks of this many rows.
WRITE_CHUNK_ROWS = 1000
# Marks collections this service created; the description is kept by milvus-lite, properties are not.
DESCRIPTION_KEY = "whisperlite_catalog"
SCHEMA_VERSION = 1
INDEX_TYPES = ("AUTOINDEX", "FLAT", "IVF_FLAT", "HNSW")
# pymilvus retries of one call (after the first try) on a connection error: enough to ride out a
# blip of a Milvus server, few enough that a dead store is reported within a second or two; the
# catalog's callers retry UNAVAILABLE themselves (whisperlite.core.channels).
MILVUS_RETRIES = 2


def is_local_uri(uri: str) -> bool:
    """A milvus-lite file path rather than a server address."""
    return "://" not in uri and not uri.startswith(("unix:", "tcp:"))


@dataclass(frozen=True)
class CollectionSpec:
    """How to create the collection when it does not exist yet."""

    dimension: int = 0
    encoder_model: str = ""
    index_type: str = "AUTOINDEX"
    exact_filtered_search: bool = True


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dimension: int
    encoder_model: str
    exact_filtered_search: bool
    index_type: str


class MilvusStore:
    def __init__(self, uri: str, collection: str, *, token: str = "", timeout_seconds: float = 30.0):
        self.uri = uri
        self.collection = collection
        self._token = token
        self._timeout = timeout_seconds
        self._client: MilvusClient | None = None
        self._info: CollectionInfo | None = None
        self._templates = False

    # ---- lifecycle -------------------------------------------------------------------------------

    def connect(self) -> None:
        if self._client is not None:
            return
        if is_local_uri(self.uri):
            path = Path(self.uri)
            if path.suffix != ".db":
                raise FailedPrecondition(f"uri: a milvus-lite store is a file ending in .db, got {self.uri}")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client = MilvusClient(uri=self.uri, token=self._token, timeout=self._timeout)
        except MilvusException as error:
            hint = " (milvus-lite lets one process open a store: is another catalog running on it?)" if is_local_uri(self.uri) else ""
            raise Unavailable(f"cannot open the Milvus store at {self.uri}: {error.message}{hint}") from None
        except OSError as error:  # milvus-lite could not start its server process (a broken install)
            raise Unavailable(f"cannot open the Milvus store at {self.uri}: {error}") from None
        # milvus-lite 2.5.1 has no expression templates (and its parser error makes pymilvus retry for
        # minutes), so it gets quoted literals; a server is probed once.
        self._templates = False if is_local_uri(self.uri) else self._probe_templates()
        log.info("connected", extra={"uri": self.uri, "filter_templates": self._templates})

    def _probe_templates(self) -> bool:
        if not self._client.has_collection(self.collection, timeout=self._timeout, retry_times=MILVUS_RETRIES):
            return self._server_supports_templates_by_version()
        try:
            self._client.query(
                self.collection, filter="item_id in {ids}", filter_params={"ids": ["__probe__"]}, output_fields=["item_id"], timeout=5,
                retry_times=MILVUS_RETRIES,
            )
            return True
        except MilvusException:
            return False

    def _server_supports_templates_by_version(self) -> bool:
        try:
            version = self._client.get_server_version(timeout=self._timeout, retry_times=MILVUS_RETRIES)
        except MilvusException:
            return False
        digits = [int(part) for part in version.lstrip("v").split("-")[0].split(".")[:2] if part.isdigit()]
        return len(digits) == 2 and tuple(digits) >= (2, 5)

    def exists(self) -> bool:
        self.connect()
        return self._call(self._client.has_collection, self.collection, timeout=self._timeout)

    def probe(self, timeout_seconds: float) -> None:
        """One cheap round trip to the store; raises Unavailable when it does not answer in time."""
        if self._client is None:
            raise Unavailable(f"the Milvus store at {self.uri} is not open")
        self._call(self._client.has_collection, self.collection, timeout=timeout_seconds, retry_times=0)

    def open(self, spec: CollectionSpec | None = None) -> CollectionInfo:
        """Opens (creating it from `spec` when missing) and loads the collection, then warms it up."""
        self.connect()
        if not self.exists():
            if spec is None:
                raise FailedPrecondition(f"collection {self.collection!r} does not exist and no dimension was given to create it")
            self._create(spec)
        self._info = self._describe()
        self._call(self._client.load_collection, self.collection, timeout=self._timeout)
        self._warm_up()
        return self._info

    def close(self) -> None:
        if self._client is None:
            return
        self._client.close()
        self._client = None
        if is_local_uri(self.uri):
            # MilvusClient.close() leaves the milvus-lite process running until interpreter exit;
            # stop it now so the store file is unlocked when the service stops.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    @property
    def info(self) -> CollectionInfo:
        if self._info is None:
            raise FailedPrecondition("the catalog collection is not open yet")
        return self._info

    @property
    def uses_templates(self) -> bool:
        return self._templates

    def _create(self, spec: CollectionSpec) -> None:
        index_type = spec.index_type
        if index_type not in INDEX_TYPES:
            raise FailedPrecondition(f"index_type: must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
        if is_local_uri(self.uri) and index_type == "HNSW":
            raise FailedPrecondition("index_type: milvus-lite supports FLAT, IVF_FLAT and AUTOINDEX only; HNSW needs a Milvus server")
        description = json.dumps(
            {
                DESCRIPTION_KEY: SCHEMA_VERSION,
                "encoder_model": spec.encoder_model,
                "exact_filtered_search": spec.exact_filtered_search,
            }
        )
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        chars_to_bytes = 4
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=item_limits.MAX_ID_CHARS * chars_to_bytes)
        schema.add_field("title", DataType.VARCHAR, max_length=item_limits.MAX_TITLE_CHARS * chars_to_bytes)
        schema.add_field("text", DataType.VARCHAR, max_length=65_535)
        schema.add_field("category", DataType.VARCHAR, max_length=item_limits.MAX_CATEGORY_CHARS * chars_to_bytes)
        schema.add_field("price", DataType.DOUBLE)
        schema.add_field("has_price", DataType.BOOL)
        schema.add_field("image_uri", DataType.VARCHAR, max_length=item_limits.MAX_IMAGE_URI_CHARS * chars_to_bytes)
        schema.add_field("attributes", DataType.JSON)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=spec.dimension)
        index_params = self._client.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=index_type, metric_type="COSINE", **self._build_params(index_type))
        if spec.exact_filtered_search:
            schema.add_field(EXACT_VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=spec.dimension)
            index_params.add_index(field_name=EXACT_VECTOR_FIELD, index_type="FLAT", metric_type="COSINE")
        self._call(
            self._client.create_collection,
            self.collection,
            schema=schema,
            index_params=index_params,
            # Reads see every acknowledged write (an upsert followed by a search finds the item).
            consistency_level="Strong",
            timeout=self._timeout,
        )
        log.info("created collection", extra={"collection": self.collection, "dimension": spec.dimension, "index_type": index_type})

    @staticmethod
    def _build_params(index_type: str) -> dict:
        if index_type == "HNSW":
            return {"params": {"M": 16, "efConstruction": 200}}
        if index_type == "IVF_FLAT":
            return {"params": {"nlist": 1024}}
        return {}

    def _describe(self) -> CollectionInfo:
        description = self._call(self._client.describe_collection, self.collection, timeout=self._timeout)
        try:
            meta = json.loads(description.get("description") or "{}")
        except json.JSONDecodeError:
            meta = {}
        fields = {f["name"]: f for f in description["fields"]}
        missing = [name for name in [*SCALAR_FIELDS, VECTOR_FIELD] if name not in fields]
        if not isinstance(meta, dict) or DESCRIPTION_KEY not in meta or missing:
            raise FailedPrecondition(
                f"collection {self.collection!r} exists but was not created by the WhisperLite catalog; pick another --collection"
            )
        index = self._call(self._client.describe_index, self.collection, index_name=VECTOR_FIELD, timeout=self._timeout)
        return CollectionInfo(
            name=self.collection,
            dimension=int(fields[VECTOR_FIELD]["params"]["dim"]),
            encoder_model=str(meta.get("encoder_model", "")),
            exact_filtered_search=EXACT_VECTOR_FIELD in fields,
            index_type=str((index or {}).get("index_type", "AUTOINDEX")),
        )

    def _warm_up(self) -> None:
        # The first search after milvus-lite reopens a store rebuilds its interim index (seconds at 100k
        # rows); pay that before the service reports SERVING rather than in a caller's deadline.
        probe = np.ones(self.info.dimension, dtype=np.float32)
        started = time.perf_counter()
        self.search(probe, 1, SearchFilter())
        if self.info.exact_filtered_search:
            self.search(probe, 1, SearchFilter(min_price=0.0))
        log.info("warmed up", extra={"collection": self.collection, "seconds": round(time.perf_counter() - started, 3)})

    # ---- calls -----------------------------------------------------------------------------------

    def _call(self, method, *args, **kwargs):
        kwargs.setdefault("retry_times", MILVUS_RETRIES)
        try:
            return method(*args, **kwargs)
        except MilvusException as error:
            raise Unavailable(f"Milvus store at {self.uri}: {error.message}") from None
        except grpc.RpcError as error:  # pymilvus passes DEADLINE_EXCEEDED through without wrapping it
            raise Unavailable(f"Milvus store at {self.uri}: {error.code().name}: {error.details()}") from None

    def _filter_kwargs(self, expression: Expression) -> dict:
        kwargs = {"filter": expression.text}
        if expression.params:
            kwargs["filter_params"] = expression.params
        return kwargs

    def _open_client(self) -> MilvusClient:
        """The client; Unavailable once closed (a background scan may outlive a reopen or shutdown)."""
        if self._client is None:
            raise Unavailable(f"the Milvus store at {self.uri} is closed")
        return self._client

    def count(self) -> int:
        return int(self._query(["count(*)"], filter="")[0]["count(*)"])

    def upsert(self, records: Sequence[ItemRecord]) -> int:
        """Writes every record (all must carry a vector), replacing those whose id exists."""
        exact = self.info.exact_filtered_search
        for chunk in _chunks(records, WRITE_CHUNK_ROWS):
            rows = [self._row(record, exact) for record in chunk]
            self._call(self._client.upsert, self.collection, rows, timeout=self._timeout)
        return len(records)

    @staticmethod
    def _row(record: ItemRecord, exact: bool) -> dict:
        if record.vector is None:
            raise ValueError(f"item {record.item_id!r} has no vector")
        row = {
            "item_id": record.item_id,
            "title": record.title,
            "text": record.text,
            "category": record.category,
            "price": record.price if record.price is not None else 0.0,
            "has_price": record.price is not None,
            "image_uri": record.image_uri,
            "attributes": record.attributes,
            VECTOR_FIELD: record.vector,
        }
        if exact:
            row[EXACT_VECTOR_FIELD] = record.vector
        return row

    def get(self, item_ids: Sequence[str], include_vectors: bool) -> dict[str, ItemRecord]:
        """Records of the ids that exist, keyed by id."""
        found: dict[str, ItemRecord] = {}
        fields = SCALAR_FIELDS + ([VECTOR_FIELD] if include_vectors else [])
        for chunk in _chunks(list(item_ids), WRITE_CHUNK_ROWS):
            expression = id_list_expression("item_id", chunk, self._templates)
            if expression.matches_nothing:
                continue
            for row in self._query(fields, **self._filter_kwargs(expression)):
                record = _record(row)
                found[record.item_id] = record
        return found

    def page(self, after_id: str, limit: int, include_vectors: bool) -> list[ItemRecord]:
        """Up to `limit` records whose id sorts after `after_id`, in id order.

        Milvus answers a limited query with the smallest primary keys first, in order (pymilvus'
        query iterator pages the same way); tests/test_catalog_admin.py pages a real store through.
        """
        expression = after_id_expression("item_id", after_id, self._templates)
        fields = SCALAR_FIELDS + ([VECTOR_FIELD] if include_vectors else [])
        return [_record(row) for row in self._query(fields, limit=limit, **self._filter_kwargs(expression))]

    def _query(self, fields: list[str], **kwargs) -> list[dict]:
        try:
            return self._call(self._open_client().query, self.collection, output_fields=fields, timeout=self._timeout, **kwargs)
        except Unavailable:
            # milvus-lite 2.5.1 fails a query for vectors on a collection that never held a row
            # ("Growing segment loss raw data"): an empty collection holds nothing to return.
            if VECTOR_FIELD in fields and self.count() == 0:
                return []
            raise

    def scan(self, page_rows: int = WRITE_CHUNK_ROWS) -> Iterator[list[ItemRecord]]:
        """Every record with its vector, in pages of id order (what the in-process index is built from)."""
        if self.count() == 0:  # a vector query on a never-filled collection fails, and pymilvus logs it as an ERROR
            return
        after = ""
        while True:
            records = self.page(after, page_rows, include_vectors=True)
            if records:
                yield records
            if len(records) < page_rows:
                return
            after = records[-1].item_id

    def existing_ids(self, item_ids: Sequence[str]) -> list[str]:
        existing: list[str] = []
        for chunk in _chunks(list(item_ids), WRITE_CHUNK_ROWS):
            expression = id_list_expression("item_id", chunk, self._templates)
            if expression.matches_nothing:
                continue
            existing.extend(row["item_id"] for row in self._query(["item_id"], **self._filter_kwargs(expression)))
        return existing

    def delete(self, item_ids: Sequence[str]) -> list[str]:
        """Deletes the ids that exist; returns them (unknown ids are ignored)."""
        existing = self.existing_ids(item_ids)
        for chunk in _chunks(existing, WRITE_CHUNK_ROWS):
            # Never `delete(ids=...)`: pymilvus pastes those into the expression between single quotes.
            expression = id_list_expression("item_id", chunk, self._templates)
            self._call(self._client.delete, self.collection, timeout=self._timeout, **self._filter_kwargs(expression))
        return existing

    def strategy(self, search_filter: SearchFilter) -> str:
        """"exact" (brute force over the rows that pass) for category and price filters, else "ann"."""
        return "exact" if search_filter.narrows and self.info.exact_filtered_search else "ann"

    def search(
        self, vector: np.ndarray, top_k: int, search_filter: SearchFilter, include_vectors: bool = False, detailed_hits: int = 0
    ) -> list[SearchHit]:
        return self.search_many(vector[np.newaxis, :], top_k, search_filter, include_vectors, detailed_hits)[0]

    def search_many(
        self, vectors: np.ndarray, top_k: int, search_filter: SearchFilter, include_vectors: bool = False, detailed_hits: int = 0
    ) -> list[list[SearchHit]]:
        """The hits of each (n, d) query row under one filter, from one Milvus search.

        The first `detailed_hits` hits of each row (0: all) carry their record; the others only their
        id. For several rows with hits left bare, the search returns ids and distances only and the
        records come from one query by id: output fields are most of a batched search's cost. One row
        is searched with its fields: there the second store call costs more than it saves
        (milvus-lite, 22,948 items, 50 hits: 17.2 ms of its CPU in two calls, 14.8 in one).
        """
        expression = build_expression(search_filter, self._templates)
        if expression.matches_nothing:
            return [[] for _ in vectors]
        exact = self.strategy(search_filter) == "exact"
        detailed = top_k if detailed_hits <= 0 else min(detailed_hits, top_k)
        by_id = detailed < top_k and len(vectors) > 1
        fields = SCALAR_FIELDS + ([VECTOR_FIELD] if include_vectors else [])
        results = self._call(
            self._client.search,
            self.collection,
            data=list(np.asarray(vectors, dtype=np.float32)),
            anns_field=EXACT_VECTOR_FIELD if exact else VECTOR_FIELD,
            limit=top_k,
            output_fields=["item_id"] if by_id else fields,
            search_params={"metric_type": "COSINE", "params": {} if exact else self._search_params(top_k)},
            timeout=self._timeout,
            **self._filter_kwargs(expression),
        )
        if by_id:
            records = self.get(list(dict.fromkeys(hit["id"] for row in results for hit in row[:detailed])), include_vectors)
        else:
            records = {hit["id"]: _record(hit["entity"]) for row in results for hit in row[:detailed]}
        return [
            [
                SearchHit(record=records[hit["id"]] if rank < detailed else ItemRecord(item_id=hit["id"]), score=float(hit["distance"]))
                for rank, hit in enumerate(row)
                if rank >= detailed or hit["id"] in records  # an item deleted between the two calls is gone
            ]
            for row in results
        ]

    def _search_params(self, top_k: int) -> dict:
        # Only a Milvus server honours these; milvus-lite searches its interim index with fixed settings.
        if self.info.index_type == "HNSW":
            return {"ef": max(128, top_k)}
        if self.info.index_type == "IVF_FLAT":
            return {"nprobe": 64}
        return {}


def _chunks(values: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _record(row: dict) -> ItemRecord:
    vector = row.get(VECTOR_FIELD)
    return ItemRecord(
        item_id=row["item_id"],
        title=row.get("title", ""),
        text=row.get("text", ""),
        category=row.get("category", ""),
        price=float(row["price"]) if row.get("has_price") else None,
        image_uri=row.get("image_uri", ""),
        attributes=dict(row.get("attributes") or {}),
        vector=np.asarray(vector, dtype=np.float32) if vector is not None else None,
    )


def default_uri(data_dir: str | os.PathLike) -> str:
    return str(Path(data_dir) / "catalog.db")
