"""Ranker service entry point: `whisperlite serve ranker` (flags, env vars, wiring)."""

import argparse
import asyncio
import logging

from whisperlite.core.channels import create_channel
from whisperlite.core.clients.catalog import CatalogClient
from whisperlite.core.clients.errors import wait_until_ready
from whisperlite.core.clients.query_encoder import QueryEncoderClient
from whisperlite.core.errors import FailedPrecondition, ServiceError
from whisperlite.core.personalization import PersonalizationModel, resolve_version_dir
from whisperlite.core.topology import CATALOG, QUERY_ENCODER, RANKER
from whisperlite.core.vector_space import require_same_encoder
from whisperlite.services.common.config import add_server_flags, admission_limits, env_float, env_int, env_str
from whisperlite.services.common.logs import configure_logging
from whisperlite.services.common.server import serve
from whisperlite.services.ranker.recommender import RankerLimits, Recommender
from whisperlite.services.ranker.servicer import RankerServicer
from whisperlite.v1 import ranker_pb2_grpc

log = logging.getLogger("whisperlite.ranker")
PREFIX = RANKER.env_prefix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisperlite serve ranker", description="Serve RankerService (the entry point).")
    add_server_flags(parser, RANKER)
    parser.add_argument(
        "--query-encoder-addr",
        default=env_str(QUERY_ENCODER.address_env, QUERY_ENCODER.local_address),
        help=f"query encoder address; a DNS name with several replicas is balanced round-robin (env {QUERY_ENCODER.address_env})",
    )
    parser.add_argument(
        "--catalog-addr", default=env_str(CATALOG.address_env, CATALOG.local_address), help=f"catalog address (env {CATALOG.address_env})"
    )
    parser.add_argument(
        "--model-dir",
        default=env_str(f"{PREFIX}_MODEL_DIR", "models"),
        help="a model version directory written by `whisperlite train`, or a folder of them (newest wins); "
        f"without one the ranker serves text-only results (env {PREFIX}_MODEL_DIR)",
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
        help=f"longest request text accepted, in characters (env {PREFIX}_MAX_QUERY_CHARS)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=env_int(f"{PREFIX}_CANDIDATES", defaults.candidates),
        help=f"candidates fetched from the catalog and re-scored per request (env {PREFIX}_CANDIDATES)",
    )
    return parser


def load_model(model_dir: str) -> PersonalizationModel | None:
    """The model version in (or newest under) model_dir; None, served text-only, when there is none yet.

    A version that exists but cannot be read stops start-up: serving text-only would hide it.
    """
    try:
        directory = resolve_version_dir(model_dir)
    except FileNotFoundError as error:
        log.warning("no trained model: serving text-only results", extra={"model_dir": model_dir, "reason": str(error)})
        return None
    except ValueError as error:  # a version's manifest is not JSON
        raise _unloadable(model_dir, error) from None
    try:
        return PersonalizationModel.load(directory)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise _unloadable(directory, error) from None


def _unloadable(path, error: Exception) -> FailedPrecondition:
    return FailedPrecondition(f"model {path} cannot be loaded: {type(error).__name__}: {error}")


async def run(args: argparse.Namespace) -> None:
    encoder_channel = create_channel(args.query_encoder_addr, max_message_bytes=args.max_message_bytes)
    catalog_channel = create_channel(args.catalog_addr, max_message_bytes=args.max_message_bytes)
    encoder = QueryEncoderClient(encoder_channel, args.deadline_seconds, args.query_encoder_addr)
    catalog = CatalogClient(catalog_channel, args.deadline_seconds, args.catalog_addr)
    try:
        limits = RankerLimits(max_top_k=args.max_top_k, max_query_chars=args.max_query_chars, candidates=args.candidates)
    except ValueError as error:
        raise SystemExit(f"ranker: {error}") from None
    recommender = Recommender(encoder, catalog, limits)

    async def startup() -> None:
        model = await asyncio.to_thread(load_model, args.model_dir)

        def waiting(reason: str) -> None:
            log.info("waiting for downstream services", extra={"reason": reason})

        encoder_model = await wait_until_ready(encoder.model, args.startup_timeout_seconds, waiting)
        stats = await wait_until_ready(catalog.stats, args.startup_timeout_seconds, waiting)
        require_same_encoder(
            "catalog vectors", stats.encoder_model, "the query encoder serves", encoder_model.name,
            dimensions=(stats.dimension, encoder_model.dimension),
        )
        if model is not None:
            require_same_encoder(f"model {model.version}'s training vectors", model.encoder_name, "the query encoder serves", encoder_model.name)
        recommender.use_model(model)
        log.info("ranker ready", extra={"model_version": model.version if model else "", "encoder": encoder_model.name})

    async def shutdown() -> None:
        await encoder_channel.close()
        await catalog_channel.close()

    await serve(
        name="ranker",
        port=args.port,
        metrics_port=args.metrics_port,
        servicers=[(ranker_pb2_grpc.add_RankerServiceServicer_to_server, RankerServicer(recommender), RANKER.grpc_service)],
        startup=startup,
        shutdown=shutdown,
        grace_seconds=args.grace_seconds,
        host=args.host,
        max_message_bytes=args.max_message_bytes,
        admission=admission_limits(args),
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, service="ranker")
    try:
        asyncio.run(run(args))
    except ServiceError as error:  # a downstream or model problem start-up cannot serve past: say why, no traceback
        raise SystemExit(f"ranker: {error}") from None
