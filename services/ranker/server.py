"""Ranker service entry point: `whisperlite serve ranker` (flags, env vars, wiring)."""

import argparse
import asyncio
import logging
import time
from pathlib import Path

import grpc

from services.common.channels import create_channel
from services.common.config import add_server_flags, env_float, env_int, env_str
from services.common.errors import FailedPrecondition, ServiceError, Unavailable
from services.common.logs import configure_logging
from services.common.server import serve
from services.ranker.clients import CatalogClient, QueryEncoderClient
from services.ranker.recommender import RankerLimits, Recommender
from services.ranker.servicer import RankerServicer
from whisperlite.personalization import PersonalizationModel, resolve_version_dir
from whisperlite.v1 import ranker_pb2_grpc

log = logging.getLogger("whisperlite.ranker")
_STARTING = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisperlite serve ranker", description="Serve RankerService (the entry point).")
    add_server_flags(parser, prefix="RANKER", port=50050, metrics_port=9100)
    parser.add_argument(
        "--query-encoder-addr",
        default=env_str("QUERY_ENCODER_ADDR", "localhost:50051"),
        help="query encoder address; a DNS name with several replicas is balanced round-robin (env QUERY_ENCODER_ADDR)",
    )
    parser.add_argument("--catalog-addr", default=env_str("CATALOG_ADDR", "localhost:50052"), help="catalog address (env CATALOG_ADDR)")
    parser.add_argument(
        "--model-dir",
        default=env_str("RANKER_MODEL_DIR", "models"),
        help="a model version directory written by `whisperlite train`, or a folder of them (newest wins); "
        "without one the ranker serves text-only results (env RANKER_MODEL_DIR)",
    )
    parser.add_argument(
        "--deadline-seconds",
        type=float,
        default=env_float("RANKER_DEADLINE_SECONDS", 5.0),
        help="deadline of each downstream call (env RANKER_DEADLINE_SECONDS)",
    )
    parser.add_argument(
        "--startup-timeout-seconds",
        type=float,
        default=env_float("RANKER_STARTUP_TIMEOUT_SECONDS", 120.0),
        help="how long start-up waits for the encoder and catalog to answer (env RANKER_STARTUP_TIMEOUT_SECONDS)",
    )
    defaults = RankerLimits()
    parser.add_argument(
        "--max-top-k",
        type=int,
        default=env_int("RANKER_MAX_TOP_K", defaults.max_top_k),
        help="largest top_k a Recommend may ask for; with --candidates, at most the catalog's --max-top-k (env RANKER_MAX_TOP_K)",
    )
    parser.add_argument(
        "--max-query-chars",
        type=int,
        default=env_int("RANKER_MAX_QUERY_CHARS", defaults.max_query_chars),
        help="longest request text accepted, in characters (env RANKER_MAX_QUERY_CHARS)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=env_int("RANKER_CANDIDATES", defaults.candidates),
        help="candidates fetched from the catalog and re-scored per request (env RANKER_CANDIDATES)",
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


async def _downstream_facts(encoder: QueryEncoderClient, catalog: CatalogClient, timeout_seconds: float):
    """The encoder's model and the catalog's stats, waiting while either is still starting."""
    started = time.monotonic()
    while True:
        try:
            return await encoder.model_info(), await catalog.stats()
        except grpc.aio.AioRpcError as error:
            if error.code() not in _STARTING:  # e.g. UNIMPLEMENTED: the address points at another service
                raise FailedPrecondition(f"downstream service refused start-up calls: {error.code().name} {error.details()}") from None
            waited = time.monotonic() - started
            if waited > timeout_seconds:
                raise Unavailable(f"downstream service not ready after {waited:.0f} s: {error.code().name} {error.details()}") from None
            log.info("waiting for downstream services", extra={"reason": error.details()})
            await asyncio.sleep(1.0)


async def run(args: argparse.Namespace) -> None:
    encoder_channel = create_channel(args.query_encoder_addr, max_message_bytes=args.max_message_bytes)
    catalog_channel = create_channel(args.catalog_addr, max_message_bytes=args.max_message_bytes)
    encoder = QueryEncoderClient(encoder_channel, args.deadline_seconds)
    catalog = CatalogClient(catalog_channel, args.deadline_seconds)
    try:
        limits = RankerLimits(max_top_k=args.max_top_k, max_query_chars=args.max_query_chars, candidates=args.candidates)
    except ValueError as error:
        raise SystemExit(f"ranker: {error}") from None
    recommender = Recommender(encoder, catalog, limits)

    async def startup() -> None:
        model = await asyncio.to_thread(load_model, args.model_dir)
        encoder_info, stats = await _downstream_facts(encoder, catalog, args.startup_timeout_seconds)
        # Vectors from different encoders live in different spaces: refuse to mix them rather than rank garbage.
        if stats.encoder_model != encoder_info.model_name or stats.dimension != encoder_info.dimension:
            raise FailedPrecondition(
                f"catalog vectors come from {stats.encoder_model or 'an unnamed model'!r} ({stats.dimension}-d) but the query "
                f"encoder serves {encoder_info.model_name!r} ({encoder_info.dimension}-d)"
            )
        if model is not None and model.encoder_name != encoder_info.model_name:
            raise FailedPrecondition(f"model {model.version} was trained on {model.encoder_name!r} vectors but the query encoder serves {encoder_info.model_name!r}")
        recommender.use_model(model)
        log.info("ranker ready", extra={"model_version": model.version if model else "", "encoder": encoder_info.model_name})

    async def shutdown() -> None:
        await encoder_channel.close()
        await catalog_channel.close()

    await serve(
        name="ranker",
        port=args.port,
        metrics_port=args.metrics_port,
        servicers=[(ranker_pb2_grpc.add_RankerServiceServicer_to_server, RankerServicer(recommender), "whisperlite.v1.RankerService")],
        startup=startup,
        shutdown=shutdown,
        grace_seconds=args.grace_seconds,
        host=args.host,
        max_message_bytes=args.max_message_bytes,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, service="ranker")
    try:
        asyncio.run(run(args))
    except ServiceError as error:  # a downstream or model problem start-up cannot serve past: say why, no traceback
        raise SystemExit(f"ranker: {error}") from None
