"""Query encoder service: `whisperlite serve query-encoder` (flags default from QUERY_ENCODER_* env vars)."""

from __future__ import annotations

import argparse
import asyncio

import torch
import transformers

from whisperlite.core.topology import QUERY_ENCODER
from whisperlite.services.common.config import add_server_flags, admission_limits, env_choice, env_float, env_int, env_str
from whisperlite.services.common.logs import configure_logging
from whisperlite.services.common.security import ServerSecurity
from whisperlite.services.common.tracing import start_tracing
from whisperlite.services.common.server import serve
from whisperlite.services.query_encoder.embedder import Embedder, EmbedderSettings, ModelLoadError
from whisperlite.services.query_encoder.servicer import QueryEncoderServicer
from whisperlite.core.encoders import BACKENDS, DEFAULT_BACKEND
from whisperlite.v1 import query_encoder_pb2_grpc

PREFIX = QUERY_ENCODER.env_prefix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisperlite serve query-encoder", description=__doc__)
    d = EmbedderSettings()
    group = parser.add_argument_group("encoder")
    group.add_argument(
        "--backend", choices=BACKENDS, default=env_choice(f"{PREFIX}_BACKEND", DEFAULT_BACKEND, BACKENDS),
        help=f"encoder backend (env {PREFIX}_BACKEND)",
    )
    group.add_argument(
        "--model", default=env_str(f"{PREFIX}_MODEL", "") or None,
        help=f"local model directory or cached hub name; minilm defaults to the bundled weights, clip needs one (env {PREFIX}_MODEL)",
    )
    group.add_argument(
        "--device", default=env_str(f"{PREFIX}_DEVICE", d.device),
        help=f"auto (cuda with fp16 when present), cpu, cuda or cuda:N (env {PREFIX}_DEVICE)",
    )
    group.add_argument(
        "--max-batch-size", type=int, default=env_int(f"{PREFIX}_MAX_BATCH_SIZE", d.max_batch_size),
        help=f"most inputs merged into one model call (env {PREFIX}_MAX_BATCH_SIZE)",
    )
    group.add_argument(
        "--max-wait-ms", type=float, default=env_float(f"{PREFIX}_MAX_WAIT_MS", d.max_wait_ms),
        help=f"longest a request waits for others to share its batch (env {PREFIX}_MAX_WAIT_MS)",
    )
    group.add_argument(
        "--cache-size", type=int, default=env_int(f"{PREFIX}_CACHE_SIZE", d.cache_size),
        help=f"query texts kept in the LRU cache, 0 disables it (env {PREFIX}_CACHE_SIZE)",
    )
    group.add_argument(
        "--max-text-chars", type=int, default=env_int(f"{PREFIX}_MAX_TEXT_CHARS", d.max_text_chars),
        help=f"longest accepted text in characters; longer ones are rejected, not truncated (env {PREFIX}_MAX_TEXT_CHARS)",
    )
    group.add_argument(
        "--max-inputs", type=int, default=env_int(f"{PREFIX}_MAX_INPUTS", d.max_inputs),
        help=f"most texts plus images in one request (env {PREFIX}_MAX_INPUTS)",
    )
    group.add_argument(
        "--max-batch-tokens", type=int, default=env_int(f"{PREFIX}_MAX_BATCH_TOKENS", d.max_batch_tokens),
        help=f"token budget of one model call (texts x the longest one's tokens); larger requests are split into "
        f"batches and interactive queries go between them (env {PREFIX}_MAX_BATCH_TOKENS)",
    )
    group.add_argument(
        "--max-request-tokens", type=int, default=env_int(f"{PREFIX}_MAX_REQUEST_TOKENS", d.max_request_tokens),
        help=f"most tokens of all texts in one request; more is refused with INVALID_ARGUMENT (env {PREFIX}_MAX_REQUEST_TOKENS)",
    )
    group.add_argument(
        "--torch-threads", type=int, default=env_int(f"{PREFIX}_TORCH_THREADS", 0),
        help="torch CPU threads of the model; 0 keeps torch's default (one per core). Beside the ranker and the catalog "
        "on the same few cores, 1 serves 1.25x the new-text Recommends under load (the threads of a batch spin-wait and "
        f"take the cores the other services need) at ~4 ms more per idle query (docs/performance.md) (env {PREFIX}_TORCH_THREADS)",
    )
    add_server_flags(parser, QUERY_ENCODER)
    return parser


def settings_from_args(args: argparse.Namespace) -> EmbedderSettings:
    return EmbedderSettings(
        backend=args.backend,
        model=args.model,
        device=args.device,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        cache_size=args.cache_size,
        max_text_chars=args.max_text_chars,
        max_inputs=args.max_inputs,
        max_batch_tokens=args.max_batch_tokens,
        max_request_tokens=args.max_request_tokens,
    )


async def run(
    args: argparse.Namespace, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    try:
        embedder = Embedder(settings_from_args(args))
    except ValueError as error:
        raise SystemExit(f"query-encoder: {error}") from None
    await serve(
        name="query-encoder",
        port=args.port,
        metrics_port=args.metrics_port,
        servicers=[
            (query_encoder_pb2_grpc.add_QueryEncoderServiceServicer_to_server, QueryEncoderServicer(embedder), QUERY_ENCODER.grpc_service)
        ],
        startup=embedder.load,
        shutdown=embedder.close,
        grace_seconds=args.grace_seconds,
        host=args.host,
        max_message_bytes=args.max_message_bytes,
        admission=admission_limits(args),
        ready=ready,
        stop=stop,
        security=ServerSecurity.from_args(args),
        metrics_host=args.metrics_host,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.torch_threads < 0:
        raise SystemExit(f"query-encoder: torch-threads: must be 0 (torch's default) or positive, got {args.torch_threads}")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    configure_logging(args.log_level, service="query-encoder")
    start_tracing("query-encoder")
    # Weight-loading progress bars would interleave with the JSON log lines.
    transformers.utils.logging.disable_progress_bar()
    try:
        asyncio.run(run(args))
    except ModelLoadError as error:
        raise SystemExit(f"query-encoder: {error}") from None


if __name__ == "__main__":
    main()
