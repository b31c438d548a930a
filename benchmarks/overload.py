"""Overload and bulk work: a Recommend concurrency sweep past saturation, and Recommend p99 while a
heavy bulk embed runs, on a stack this script starts (real processes on loopback, milvus-lite).

    .venv/bin/python benchmarks/overload.py [--levels 1,2,4,8,16,32,64] [--seconds 10] [--bulk-texts 2048]

For each concurrency level, closed-loop callers send Recommend calls with new query texts (every
call is an encoder cache miss) for --seconds; the table gives throughput of accepted calls, their
median and p99, refusals (RESOURCE_EXHAUSTED) and other failures, and throughput as a ratio of the
peak. A refused caller waits for the server's retry-after-ms trailer, or a fixed 50 ms with
--ignore-retry-hint (a caller that hammers). Then Recommend p99 is measured idle and during one bulk Embed of --bulk-texts texts of
~1,985 characters (the issue's starving request), and their ratio printed. All in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

# The stack is started the way the tests start it (real `whisperlite serve` processes, free ports).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import start_catalog, start_service  # noqa: E402
from whisperlite.core.clients.errors import retry_after_seconds  # noqa: E402
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, query_encoder_pb2, ranker_pb2, ranker_pb2_grpc  # noqa: E402

QUERIES = ["black leather boots", "a light dress for a summer wedding", "warm winter coat", "running shoes", "silk scarf"]
DIMENSION = 384


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q) * 1e3) if samples else float("nan")


def refusal_backoff_seconds(error: grpc.aio.AioRpcError, honour_retry_hint: bool) -> float:
    """A refused caller backs off, as the message asks: for the server's hint, or a fixed 50 ms."""
    hint = retry_after_seconds(error) if honour_retry_hint else None
    return 0.05 if hint is None else hint


async def sweep_level(address: str, concurrency: int, seconds: float, level_index: int, honour_retry_hint: bool) -> dict:
    accepted: list[float] = []
    refused = 0
    failed = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        await channel.channel_ready()
        end = time.perf_counter() + seconds

        async def caller(worker: int) -> None:
            nonlocal refused, failed
            count = 0
            while time.perf_counter() < end:
                count += 1
                query = f"{QUERIES[count % len(QUERIES)]} {level_index}-{worker}-{count}"
                started = time.perf_counter()
                try:
                    await stub.Recommend(ranker_pb2.RecommendRequest(user_id="", query=query, top_k=10), timeout=30)
                    accepted.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        refused += 1
                        await asyncio.sleep(refusal_backoff_seconds(error, honour_retry_hint))
                    else:
                        failed += 1

        await asyncio.gather(*(caller(n) for n in range(concurrency)))
    return {
        "concurrency": concurrency,
        "throughput": len(accepted) / seconds,
        "p50": percentile_ms(accepted, 50),
        "p99": percentile_ms(accepted, 99),
        "refused": refused,
        "failed": failed,
    }


def sequential_recommends(address: str, stop: threading.Event | None, count: int, tag: str) -> list[float]:
    samples = []
    with grpc.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        n = 0
        while (stop is None and n < count) or (stop is not None and not stop.is_set()):
            n += 1
            started = time.perf_counter()
            stub.Recommend(ranker_pb2.RecommendRequest(user_id="", query=f"{QUERIES[n % 5]} {tag} {n}", top_k=10), timeout=30)
            samples.append(time.perf_counter() - started)
    return samples


def bulk_embed(address: str, texts: int, done: threading.Event, result: dict) -> None:
    long_texts = [(f"item {i}: a long flowing summer dress with floral print, pockets and a belt. " * 30)[:1985] for i in range(texts)]
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 256 << 20)]) as channel:
        stub = channel.unary_unary(
            "/whisperlite.v1.QueryEncoderService/Embed",
            request_serializer=query_encoder_pb2.EmbedRequest.SerializeToString,
            response_deserializer=query_encoder_pb2.EmbedResponse.FromString,
        )
        started = time.perf_counter()
        stub(query_encoder_pb2.EmbedRequest(texts=long_texts), timeout=3600)
        result["seconds"] = time.perf_counter() - started
    done.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,2,4,8,16,32,64", help="comma-separated caller counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each level")
    parser.add_argument("--bulk-texts", type=int, default=2048, help="texts of ~1,985 characters in the bulk Embed (0: no bulk phase)")
    parser.add_argument("--idle-calls", type=int, default=100, help="sequential Recommend calls for the idle p99")
    parser.add_argument("--item-count", type=int, default=2000)
    parser.add_argument("--ignore-retry-hint", action="store_true",
                        help="refused callers retry after a fixed 50 ms instead of the server's retry-after-ms trailer")
    args, ranker_args = parser.parse_known_args()  # anything else goes to the ranker (e.g. --max-in-flight 8)
    levels = [int(level) for level in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "logs"
        encoder = start_service("query-encoder", logs)
        catalog = start_catalog(logs, Path(tmp) / "store", encoder.address)
        ranker = None
        try:
            rng = np.random.default_rng(0)
            vectors = rng.standard_normal((args.item_count, DIMENSION)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            with grpc.insecure_channel(catalog.address) as channel:
                stub = catalog_pb2_grpc.CatalogServiceStub(channel)
                for start in range(0, args.item_count, 500):
                    items = [
                        common_pb2.Item(item_id=f"i{n}", title=f"item {n}", category="c", vector=vectors[n].tolist())
                        for n in range(start, min(start + 500, args.item_count))
                    ]
                    stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=120)
            ranker = start_service(
                "ranker", logs, "--model-dir", str(Path(tmp) / "no-model"),
                "--query-encoder-addr", encoder.address, "--catalog-addr", catalog.address, *ranker_args,
            )
            sequential_recommends(ranker.address, None, 20, "warm-up")

            rows = [asyncio.run(sweep_level(ranker.address, level, args.seconds, index, not args.ignore_retry_hint)) for index, level in enumerate(levels)]
            peak = max(row["throughput"] for row in rows)
            backoff = "a fixed 50 ms" if args.ignore_retry_hint else "the server's retry-after-ms hint"
            print(f"Recommend concurrency sweep ({args.seconds:g} s per level, new query text per call; refused callers wait {backoff}; "
                  f"ranker flags: {' '.join(ranker_args) or 'defaults'})\n")
            print("| callers | accepted/s | ratio to peak | accepted p50 ms | accepted p99 ms | refused | other failures |")
            print("|---|---|---|---|---|---|---|")
            for row in rows:
                print(
                    f"| {row['concurrency']} | {row['throughput']:.1f} | {row['throughput'] / peak:.2f} | {row['p50']:.0f} | "
                    f"{row['p99']:.0f} | {row['refused']} | {row['failed']} |"
                )

            if args.bulk_texts == 0:
                return
            idle = sequential_recommends(ranker.address, None, args.idle_calls, "idle")
            done, result = threading.Event(), {}
            bulk = threading.Thread(target=bulk_embed, args=(encoder.address, args.bulk_texts, done, result), daemon=True)
            bulk.start()
            during = sequential_recommends(ranker.address, done, 0, "bulk")
            bulk.join()
            print(f"\nRecommend, one caller, idle vs during one bulk Embed of {args.bulk_texts} texts of 1,985 characters "
                  f"(the bulk took {result['seconds']:.1f} s)\n")
            print("| phase | calls | p50 ms | p99 ms | p99 ratio to idle |\n|---|---|---|---|---|")
            idle_p99 = percentile_ms(idle, 99)
            for name, samples in (("idle", idle), ("during bulk embed", during)):
                print(f"| {name} | {len(samples)} | {percentile_ms(samples, 50):.0f} | {percentile_ms(samples, 99):.0f} | "
                      f"{percentile_ms(samples, 99) / idle_p99:.2f} |")
        finally:
            for service in (ranker, catalog, encoder):
                if service is not None:
                    service.stop()


if __name__ == "__main__":
    main()
