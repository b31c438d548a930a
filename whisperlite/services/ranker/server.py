"""Ranker service entry point: `whisperlite serve ranker` (flags, env vars, wiring)."""

import argparse
import asyncio
import logging

import torch

from whisperlite.core.channels import create_channel
from whisperlite.core.clients.catalog import CatalogClient
from whisperlite.core.clients.errors import wait_until_ready
from whisperlite.core.clients.query_encoder import QueryEncoderClient
from whisperlite.core.errors import ServiceError
from whisperlite.core.topology import CATALOG, QUERY_ENCODER, RANKER
from whisperlite.core.vector_space import require_same_encoder
from whisperlite.services.common.config import (
    add_downstream_flags, add_probe_flags, add_server_flags, admission_limits, downstream_security, env_float, env_int, env_str,
    probe_settings, service_address,
)
from whisperlite.services.common.logs import configure_logging
from whisperlite.services.common.security import ServerSecurity
from whisperlite.services.common.tracing import start_tracing
from whisperlite.services.common.server import serve
from whisperlite.services.ranker.admin_servicer import ModelAdminServicer
from whisperlite.services.ranker.dependency_watch import CATALOG as CATALOG_DEPENDENCY
from whisperlite.services.ranker.dependency_watch import QUERY_ENCODER as QUERY_ENCODER_DEPENDENCY
from whisperlite.services.ranker.dependency_watch import Dependency, DependencyWatch
from whisperlite.services.ranker.models import ModelRegistry, ServingContract, watch
from whisperlite.services.ranker.recommender import RankerLimits, Recommender
from whisperlite.services.ranker.servicer import RankerServicer
from whisperlite.v1 import model_admin_pb2, model_admin_pb2_grpc, ranker_pb2_grpc

log = logging.getLogger("whisperlite.ranker")
PREFIX = RANKER.env_prefix
MODEL_ADMIN_SERVICE = model_admin_pb2.DESCRIPTOR.services_by_name["ModelAdminService"].full_name
# Embedded at start-up and run through every version before it may serve (the smoke scoring).
PROBE_QUERY = "a light summer dress"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisperlite serve ranker", description="Serve RankerService (the entry point).")
    add_server_flags(parser, RANKER)
    add_downstream_flags(parser, RANKER)
    parser.add_argument(
        "--query-encoder-addr",
        type=service_address,
        default=env_str(QUERY_ENCODER.address_env, QUERY_ENCODER.local_address),
        help=f"query encoder address; a DNS name with several replicas is balanced round-robin (env {QUERY_ENCODER.address_env})",
    )
    parser.add_argument(
        "--catalog-addr", type=service_address, default=env_str(CATALOG.address_env, CATALOG.local_address), help=f"catalog address (env {CATALOG.address_env})"
    )
    parser.add_argument(
        "--model-dir",
        default=env_str(f"{PREFIX}_MODEL_DIR", "models"),
        help="a model version directory written by `whisperlite train`, or a folder of them (newest wins); "
        f"without one the ranker serves text-only results (env {PREFIX}_MODEL_DIR)",
    )
    parser.add_argument(
        "--model-poll-seconds",
        type=float,
        default=env_float(f"{PREFIX}_MODEL_POLL_SECONDS", 10.0),
        help="how often --model-dir is checked for a newer version, which is then loaded, validated and swapped in; "
        "0 turns the watcher off (versions change only through ModelAdminService; those on disk are still checked once "
        f"at start-up, so ListModels shows which cannot load) (env {PREFIX}_MODEL_POLL_SECONDS)",
    )
    parser.add_argument(
        "--deadline-seconds",
        type=float,
        default=env_float(f"{PREFIX}_DEADLINE_SECONDS", 5.0),
        help=f"deadline of each downstream call (env {PREFIX}_DEADLINE_SECONDS)",
    )
    parser.add_argument(
        "--startup-timeout-seconds",
        type=float,
        default=env_float(f"{PREFIX}_STARTUP_TIMEOUT_SECONDS", 120.0),
        help=f"how long start-up waits for the encoder and catalog to answer (env {PREFIX}_STARTUP_TIMEOUT_SECONDS)",
    )
    add_probe_flags(
        parser, PREFIX, "dependency", "the encoder's and the catalog's health are",
        "failed checks of one in a row turn the ranker's health NOT_SERVING until both serve", "a dependency",
    )  # fmt: skip
    defaults = RankerLimits()
    parser.add_argument(
        "--max-top-k",
        type=int,
        default=env_int(f"{PREFIX}_MAX_TOP_K", defaults.max_top_k),
        help=f"largest top_k a Recommend may ask for; with --candidates, at most the catalog's --max-top-k (env {PREFIX}_MAX_TOP_K)",
    )
    parser.add_argument(
        "--max-query-chars",
        type=int,
        default=env_int(f"{PREFIX}_MAX_QUERY_CHARS", defaults.max_query_chars),
        help=f"longest request text accepted, in characters; lowered to the query encoder's own limit at start-up (env {PREFIX}_MAX_QUERY_CHARS)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=env_int(f"{PREFIX}_CANDIDATES", defaults.candidates),
        help="candidates the catalog searches for and re-scored per request; only the top_k best travel with their item. "
        "A model's sequence part sets how many it searches for the requests it fuses, these many of them in full "
        f"(env {PREFIX}_CANDIDATES)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=env_int(f"{PREFIX}_MAX_BATCH", defaults.max_batch),
        help="concurrent Recommends share downstream calls: at most this many texts per Embed and searches per SearchBatch "
        f"(1: one call per Recommend) (env {PREFIX}_MAX_BATCH)",
    )
    parser.add_argument(
        "--concurrent-batches",
        type=int,
        default=env_int(f"{PREFIX}_CONCURRENT_BATCHES", defaults.concurrent_batches),
        help=f"batched Embed and SearchBatch calls out at once, each; later Recommends wait to join the next (env {PREFIX}_CONCURRENT_BATCHES)",
    )
    parser.add_argument(
        "--query-cache-size",
        type=int,
        default=env_int(f"{PREFIX}_QUERY_CACHE_SIZE", 10_000),
        help="request texts whose query vectors the ranker keeps (LRU), so a repeated text makes no Embed call; "
        f"0 disables it (env {PREFIX}_QUERY_CACHE_SIZE)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=env_int(f"{PREFIX}_TORCH_THREADS", 1),
        help="torch CPU threads for the personalization network; its per-request matrices are too small to split, "
        f"and a second thread spin-waiting costs ~7 ms of CPU per request on a busy 2-core machine (env {PREFIX}_TORCH_THREADS)",
    )
    return parser


async def run(args: argparse.Namespace) -> None:
    # The ranker calls with its own service token: a shopper's token is never passed on.
    security = downstream_security(args)
    encoder_channel = create_channel(args.query_encoder_addr, max_message_bytes=args.max_message_bytes, security=security)
    catalog_channel = create_channel(args.catalog_addr, max_message_bytes=args.max_message_bytes, security=security)
    encoder = QueryEncoderClient(encoder_channel, args.deadline_seconds, args.query_encoder_addr)
    catalog = CatalogClient(catalog_channel, args.deadline_seconds, args.catalog_addr)
    try:
        limits = RankerLimits(
            max_top_k=args.max_top_k, max_query_chars=args.max_query_chars, candidates=args.candidates,
            max_batch=args.max_batch, concurrent_batches=args.concurrent_batches,
        )
    except ValueError as error:
        raise SystemExit(f"ranker: {error}") from None
    try:
        dependency_watch = DependencyWatch(
            [
                Dependency(QUERY_ENCODER_DEPENDENCY, args.query_encoder_addr, QUERY_ENCODER, encoder_channel,
                           credential_check=encoder.model if security.sends_token else None),
                Dependency(CATALOG_DEPENDENCY, args.catalog_addr, CATALOG, catalog_channel,
                           credential_check=catalog.stats if security.sends_token else None),
            ],
            probe_settings(args, "dependency"),
        )
    except ValueError as error:
        raise SystemExit(f"ranker: {error}") from None
    if args.model_poll_seconds < 0:
        raise SystemExit(f"ranker: model-poll-seconds: must be 0 (off) or positive, got {args.model_poll_seconds}")
    registry = ModelRegistry(args.model_dir)
    try:
        recommender = Recommender(
            encoder, catalog, registry, limits, query_cache_size=args.query_cache_size, outages=dependency_watch.outages
        )
    except ValueError as error:
        raise SystemExit(f"ranker: {error}") from None
    watcher: asyncio.Task | None = None

    async def startup() -> None:
        nonlocal watcher

        def waiting(reason: str) -> None:
            log.info("waiting for downstream services", extra={"reason": reason})

        encoder_model = await wait_until_ready(encoder.model, args.startup_timeout_seconds, waiting)
        recommender.fit_query_limit(encoder_model.max_text_chars)
        stats = await wait_until_ready(catalog.stats, args.startup_timeout_seconds, waiting)
        require_same_encoder(
            "catalog vectors", stats.encoder_model, "the query encoder serves", encoder_model.name,
            dimensions=(stats.dimension, encoder_model.dimension),
        )
        probe = (await encoder.embed_texts([PROBE_QUERY])).vectors[0]
        model = await asyncio.to_thread(registry.start, ServingContract(encoder_model.name, stats.dimension, probe))
        watcher = asyncio.create_task(watch(registry, args.model_poll_seconds))
        log.info("ranker ready", extra={"model_version": model.version if model else "", "encoder": encoder_model.name})

    async def shutdown() -> None:
        if watcher is not None:
            watcher.cancel()
        await encoder_channel.close()
        await catalog_channel.close()

    await serve(
        name="ranker",
        port=args.port,
        metrics_port=args.metrics_port,
        servicers=[
            (ranker_pb2_grpc.add_RankerServiceServicer_to_server, RankerServicer(recommender), RANKER.grpc_service),
            (model_admin_pb2_grpc.add_ModelAdminServiceServicer_to_server, ModelAdminServicer(registry), MODEL_ADMIN_SERVICE),
        ],
        startup=startup,
        shutdown=shutdown,
        grace_seconds=args.grace_seconds,
        host=args.host,
        max_message_bytes=args.max_message_bytes,
        security=ServerSecurity.from_args(args),
        metrics_host=args.metrics_host,
        admission=admission_limits(args),
        health_watch=dependency_watch.watch,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.torch_threads < 1:
        raise SystemExit(f"ranker: torch-threads: must be at least 1, got {args.torch_threads}")
    torch.set_num_threads(args.torch_threads)
    configure_logging(args.log_level, service="ranker")
    start_tracing("ranker")
    try:
        asyncio.run(run(args))
    except ServiceError as error:  # a downstream or model problem start-up cannot serve past: say why, no traceback
        raise SystemExit(f"ranker: {error}") from None
