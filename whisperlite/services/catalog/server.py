"""Catalog service: `whisperlite serve catalog` (flags default from CATALOG_* env vars)."""

from __future__ import annotations

import argparse
import asyncio

from threadpoolctl import threadpool_limits

from whisperlite.core.topology import CATALOG, QUERY_ENCODER
from whisperlite.services.catalog.catalog import SEARCH_INDEXES, Catalog, CatalogLimits
from whisperlite.services.catalog.embedding import ItemEmbedder
from whisperlite.services.catalog.graph_index import GraphSettings
from whisperlite.services.catalog.servicer import CatalogServicer
from whisperlite.services.catalog.store import INDEX_TYPES, CollectionSpec, MilvusStore, default_uri
from whisperlite.services.catalog.store_watch import StoreWatch, StoreWatchSettings
from whisperlite.core.errors import ServiceError
from whisperlite.services.common.config import (
    add_downstream_flags,
    add_probe_flags,
    add_server_flags,
    admission_limits,
    downstream_security,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_str,
    probe_settings,
    service_address,
)
from whisperlite.services.common.logs import configure_logging
from whisperlite.services.common.security import ServerSecurity
from whisperlite.services.common.tracing import start_tracing
from whisperlite.services.common.server import HealthReport, serve
from whisperlite.v1 import catalog_pb2_grpc

PREFIX = CATALOG.env_prefix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisperlite serve catalog", description=__doc__)
    limits, creation = CatalogLimits(), CollectionSpec()
    store = parser.add_argument_group("store")
    store.add_argument(
        "--uri", default=env_str(f"{PREFIX}_MILVUS_URI", ""),
        help=f"Milvus server URI, e.g. http://milvus:19530; empty: an embedded milvus-lite file in --data-dir (env {PREFIX}_MILVUS_URI)",
    )
    store.add_argument("--token", default=env_str(f"{PREFIX}_MILVUS_TOKEN", ""), help=f"Milvus token, user:password (env {PREFIX}_MILVUS_TOKEN)")
    store.add_argument(
        "--data-dir", default=env_str(f"{PREFIX}_DATA_DIR", "var/catalog"),
        help=f"directory of the embedded milvus-lite store catalog.db (env {PREFIX}_DATA_DIR)",
    )
    store.add_argument("--collection", default=env_str(f"{PREFIX}_COLLECTION", "whisperlite_items"), help=f"collection name (env {PREFIX}_COLLECTION)")
    store.add_argument(
        "--milvus-timeout-seconds", type=float, default=env_float(f"{PREFIX}_MILVUS_TIMEOUT_SECONDS", 30.0),
        help=f"deadline of each Milvus call (env {PREFIX}_MILVUS_TIMEOUT_SECONDS)",
    )
    store.add_argument(
        "--search-index", choices=SEARCH_INDEXES, default=env_choice(f"{PREFIX}_SEARCH_INDEX", "auto", SEARCH_INDEXES),
        help=(
            "where searches run: memory (an index in this process, built from the store at start-up; see --ann-min-rows), milvus, or auto: "
            f"memory on the embedded milvus-lite store, milvus on a server, which other replicas may write (env {PREFIX}_SEARCH_INDEX)"
        ),
    )
    store.add_argument(
        "--blas-threads", type=int, default=env_int(f"{PREFIX}_BLAS_THREADS", 1),
        help=(
            "BLAS threads of one in-process search (and OpenMP threads of its graph); concurrent searches run in parallel threads anyway, and on a busy machine a "
            f"second BLAS thread waits for a time slice (8 ms per 23k-item search instead of 1.2 ms, docs/catalog-store.md) (env {PREFIX}_BLAS_THREADS)"
        ),
    )
    graph = GraphSettings()
    store.add_argument(
        "--ann-min-rows", type=int, default=env_int(f"{PREFIX}_ANN_MIN_ROWS", graph.min_rows),
        help=(
            "from this many items on, in-process searches without a category or price filter walk an HNSW graph (recall@10 ~0.99, "
            f"~1 ms instead of ~9 ms at 100k x 384); 0: always exact (env {PREFIX}_ANN_MIN_ROWS)"
        ),
    )
    store.add_argument(
        "--ann-ef", type=int, default=env_int(f"{PREFIX}_ANN_EF", graph.ef_search),
        help=f"candidates the graph walk keeps (at least twice the hits asked for): higher is slower and closer to exact (env {PREFIX}_ANN_EF)",
    )
    watch = StoreWatchSettings()
    store.add_argument(
        "--store-probe-interval-seconds", type=float,
        default=env_float(f"{PREFIX}_STORE_PROBE_INTERVAL_SECONDS", watch.probe_interval_seconds),
        help=f"how often the store is probed while serving; a failed probe turns health NOT_SERVING (env {PREFIX}_STORE_PROBE_INTERVAL_SECONDS)",
    )
    store.add_argument(
        "--store-probe-timeout-seconds", type=float,
        default=env_float(f"{PREFIX}_STORE_PROBE_TIMEOUT_SECONDS", watch.probe_timeout_seconds),
        help=f"a store that does not answer a probe within this is wedged (env {PREFIX}_STORE_PROBE_TIMEOUT_SECONDS)",
    )
    store.add_argument(
        "--store-reopen-timeout-seconds", type=float,
        default=env_float(f"{PREFIX}_STORE_REOPEN_TIMEOUT_SECONDS", watch.reopen_timeout_seconds),
        help=f"how long a dead store is reopened before the service exits non-zero for its supervisor to restart it (env {PREFIX}_STORE_REOPEN_TIMEOUT_SECONDS)",
    )
    create = parser.add_argument_group("collection creation (used only when the collection does not exist)")
    create.add_argument(
        "--dimension", type=int, default=env_int(f"{PREFIX}_DIMENSION", creation.dimension),
        help=f"vector dimension; 0 reads it from the query encoder (env {PREFIX}_DIMENSION)",
    )
    create.add_argument(
        "--encoder-model", default=env_str(f"{PREFIX}_ENCODER_MODEL", creation.encoder_model),
        help=f"name of the model behind the vectors, recorded with (and required by) --dimension (env {PREFIX}_ENCODER_MODEL)",
    )
    create.add_argument(
        "--index-type", choices=INDEX_TYPES, default=env_choice(f"{PREFIX}_INDEX_TYPE", creation.index_type, INDEX_TYPES),
        help=f"ANN index of the vector field; milvus-lite takes AUTOINDEX, FLAT, IVF_FLAT (env {PREFIX}_INDEX_TYPE)",
    )
    create.add_argument(
        "--exact-filtered-search", action=argparse.BooleanOptionalAction,
        default=env_bool(f"{PREFIX}_EXACT_FILTERED_SEARCH", creation.exact_filtered_search),
        help=f"keep a FLAT copy of each vector so category/price-filtered searches are exact (env {PREFIX}_EXACT_FILTERED_SEARCH)",
    )
    encoder = parser.add_argument_group("query encoder")
    encoder.add_argument(
        "--query-encoder-addr", type=service_address, default=env_str(QUERY_ENCODER.address_env, QUERY_ENCODER.local_address),
        help=f"query encoder that embeds items upserted without a vector; empty: vectors are required (env {QUERY_ENCODER.address_env})",
    )
    encoder.add_argument(
        "--encoder-timeout-seconds", type=float, default=env_float(f"{PREFIX}_ENCODER_TIMEOUT_SECONDS", 120.0),
        help=f"deadline of each call to the query encoder (env {PREFIX}_ENCODER_TIMEOUT_SECONDS)",
    )
    add_probe_flags(
        encoder, PREFIX, "dependency", "the query encoder's health is",
        "checks in a row without an answer make items without vectors fail at once with UNAVAILABLE, and let go of those "
        "waiting, until it answers", "a query encoder",
    )  # fmt: skip
    requests = parser.add_argument_group("request limits")
    requests.add_argument(
        "--max-top-k", type=int, default=env_int(f"{PREFIX}_MAX_TOP_K", limits.max_top_k),
        help=f"largest top_k a search may ask for (env {PREFIX}_MAX_TOP_K)",
    )
    requests.add_argument(
        "--max-batch", type=int, default=env_int(f"{PREFIX}_MAX_BATCH", limits.max_batch),
        help=f"most items per upsert and ids per get or delete (env {PREFIX}_MAX_BATCH)",
    )
    requests.add_argument(
        "--max-batch-hits", type=int, default=env_int(f"{PREFIX}_MAX_BATCH_HITS", limits.max_batch_hits),
        help=f"most hits one SearchBatch may ask for, the sum of its searches' top_k (env {PREFIX}_MAX_BATCH_HITS)",
    )
    add_server_flags(parser, CATALOG)
    add_downstream_flags(parser, CATALOG)
    return parser


def build_catalog(args: argparse.Namespace) -> Catalog:
    store = MilvusStore(
        args.uri or default_uri(args.data_dir), args.collection, token=args.token, timeout_seconds=args.milvus_timeout_seconds
    )
    try:
        probes = probe_settings(args, "dependency")
    except ValueError as error:
        raise SystemExit(f"catalog: {error}") from None
    embedder = (
        ItemEmbedder(args.query_encoder_addr, args.encoder_timeout_seconds, downstream_security(args), probes)
        if args.query_encoder_addr
        else None
    )
    if args.ann_min_rows < 0:
        raise SystemExit(f"catalog: ann-min-rows: must be 0 (always exact) or positive, got {args.ann_min_rows}")
    if args.ann_ef < 1:
        raise SystemExit(f"catalog: ann-ef: must be at least 1, got {args.ann_ef}")
    try:
        graph = GraphSettings(min_rows=args.ann_min_rows, ef_search=args.ann_ef, threads=args.blas_threads) if args.ann_min_rows else None
        return Catalog(
            store,
            embedder,
            CatalogLimits(max_top_k=args.max_top_k, max_batch=args.max_batch, max_batch_hits=args.max_batch_hits),
            CollectionSpec(
                dimension=args.dimension,
                encoder_model=args.encoder_model,
                index_type=args.index_type,
                exact_filtered_search=args.exact_filtered_search,
            ),
            search_index=args.search_index,
            graph=graph,
        )
    except ValueError as error:
        raise SystemExit(f"catalog: {error}") from None


def build_store_watch(args: argparse.Namespace, catalog: Catalog) -> StoreWatch:
    try:
        settings = StoreWatchSettings(
            args.store_probe_interval_seconds, args.store_probe_timeout_seconds, args.store_reopen_timeout_seconds
        )
    except ValueError as error:
        raise SystemExit(f"catalog: {error}") from None
    return StoreWatch(catalog, settings)


async def run(args: argparse.Namespace, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    catalog = build_catalog(args)
    store_watch = build_store_watch(args, catalog)

    async def watches(health: HealthReport) -> None:
        """The store's (its health follows it), and the encoder's, when items are embedded here."""
        await asyncio.gather(store_watch.watch(health), *([catalog.embedder.watch()] if catalog.embedder is not None else []))
    await serve(
        name="catalog",
        port=args.port,
        metrics_port=args.metrics_port,
        servicers=[(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, CatalogServicer(catalog, args.max_message_bytes), CATALOG.grpc_service)],
        startup=catalog.open,
        shutdown=catalog.close,
        grace_seconds=args.grace_seconds,
        host=args.host,
        max_message_bytes=args.max_message_bytes,
        admission=admission_limits(args),
        health_watch=watches,
        ready=ready,
        stop=stop,
        security=ServerSecurity.from_args(args),
        metrics_host=args.metrics_host,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.blas_threads < 1:
        raise SystemExit(f"catalog: blas-threads: must be at least 1, got {args.blas_threads}")
    threadpool_limits(args.blas_threads, user_api="blas")
    configure_logging(args.log_level, service="catalog")
    start_tracing("catalog")
    try:
        asyncio.run(run(args))
    except ServiceError as error:  # the store cannot be opened or created: say why, without a traceback
        raise SystemExit(f"catalog: {error}") from None


if __name__ == "__main__":
    main()
