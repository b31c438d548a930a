"""Query encoder benchmark: side-by-side medians measured in one run.

1. model alone, per device: one-query latency and batch-of-64 throughput, cpu fp32 vs cuda fp16
   (cuda only when a GPU is visible);
2. micro-batching under concurrent load: the query encoder's Embedder (the same batcher, cache
   and model thread the gRPC service uses) with max batch 1 (unbatched) vs the default batching,
   `--concurrency` clients each sending one-text requests back to back, cache off;
3. the query cache: latency of a repeated query (hit) vs a new one (miss), server defaults.

    python benchmarks/encoder_bench.py [--backend minilm] [--model PATH] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import statistics
import time

import numpy as np
import torch

from whisperlite.services.query_encoder.embedder import Embedder, EmbedderSettings
from whisperlite.core.encoders import load_encoder

ADJECTIVES = ["light", "warm", "elegant", "casual", "waterproof", "cozy", "slim", "vintage", "sporty", "classic"]
COLORS = ["black", "red", "navy", "white", "olive", "beige", "pink", "grey"]
ITEMS = ["dress", "boots", "jacket", "sneakers", "scarf", "jeans", "blouse", "coat", "sandals", "sweater"]
OCCASIONS = ["a summer wedding", "the office", "hiking in the rain", "a night out", "winter walks", "the beach"]


def queries(count: int, offset: int = 0) -> list[str]:
    """Distinct shopper-style requests (5-9 words), so the cache never answers unless asked to."""
    combos = itertools.islice(itertools.cycle(itertools.product(ADJECTIVES, COLORS, ITEMS, OCCASIONS)), offset, None)
    # The request number keeps texts distinct once the word combinations repeat.
    return [f"a {a} {c} {i} for {o} #{offset + n}" for n, (a, c, i, o) in zip(range(count), combos)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_model(backend: str, model: str | None, device: str, repeats: int) -> dict:
    encoder = load_encoder(backend, model, device=device)
    encoder.encode_texts(queries(256), batch_size=64)  # warm-up: kernels, allocator, tokenizer caches
    single = []
    for text in queries(200, offset=1000):
        start = time.perf_counter()
        encoder.encode_texts([text])
        sync(device)
        single.append(time.perf_counter() - start)
    throughput = []
    batch = queries(64 * 16, offset=2000)
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode_texts(batch, batch_size=64)
        sync(device)
        throughput.append(len(batch) / (time.perf_counter() - start))
    return {
        "device": encoder.device,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "single_query_ms_p50": statistics.median(single) * 1e3,
        "batch64_texts_per_s_median": statistics.median(throughput),
    }


async def load_test(settings: EmbedderSettings, concurrency: int, requests: int, repeats: int) -> dict:
    embedder = Embedder(settings)
    await embedder.load()
    try:
        await embedder.embed(queries(64, offset=50_000), [])  # warm-up
        rates, latencies = [], []
        for repeat in range(repeats):
            texts = iter(queries(requests, offset=100_000 + repeat * requests))

            async def client() -> None:
                for text in texts:  # shared iterator: clients take the next request until none is left
                    start = time.perf_counter()
                    await embedder.embed([text], [])
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            rates.append(requests / (time.perf_counter() - start))
        return {
            "requests_per_s_median": statistics.median(rates),
            "latency_ms_p50": float(np.percentile(latencies, 50) * 1e3),
            "latency_ms_p99": float(np.percentile(latencies, 99) * 1e3),
        }
    finally:
        await embedder.close()


async def cache_test(settings: EmbedderSettings, calls: int) -> dict:
    embedder = Embedder(settings)
    await embedder.load()
    try:
        texts = queries(calls, offset=200_000)
        await embedder.embed(queries(64, offset=60_000), [])  # warm-up
        timings: dict[str, list[float]] = {"miss": [], "hit": []}
        for kind in ("miss", "hit"):  # the first pass fills the cache, the second is served from it
            for text in texts:
                start = time.perf_counter()
                await embedder.embed([text], [])
                timings[kind].append(time.perf_counter() - start)
        return {f"{kind}_ms_p50": statistics.median(values) * 1e3 for kind, values in timings.items()}
    finally:
        await embedder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="minilm")
    parser.add_argument("--model", default=None, help="local model directory (default: the backend's default)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients in the load test")
    parser.add_argument("--requests", type=int, default=512, help="one-text requests per load-test repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per throughput figure (median reported)")
    parser.add_argument("--cache-calls", type=int, default=200)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    results: dict = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "model": {},
        "batching": {},
    }
    print(f"# encoder benchmark: backend {args.backend}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"GPU {results['machine']['gpu'] or 'none'}")

    print("\n## model alone (medians)")
    print(f"{'device':<8} {'dtype':<8} {'1-query ms':>11} {'batch-64 texts/s':>17}")
    for device in devices:
        row = bench_model(args.backend, args.model, device, args.repeats)
        results["model"][device] = row
        print(f"{row['device']:<8} {row['dtype']:<8} {row['single_query_ms_p50']:>11.2f} {row['batch64_texts_per_s_median']:>17.0f}")
    if "cuda:0" in results["model"]:
        cpu, gpu = results["model"]["cpu"], results["model"]["cuda:0"]
        print(f"cuda fp16 vs cpu fp32: {cpu['single_query_ms_p50'] / gpu['single_query_ms_p50']:.1f}x faster per query, "
              f"{gpu['batch64_texts_per_s_median'] / cpu['batch64_texts_per_s_median']:.1f}x the batch throughput")

    print(f"\n## micro-batching, {args.concurrency} concurrent clients, {args.requests} one-text requests, cache off (medians)")
    print(f"{'device':<8} {'mode':<28} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    defaults = EmbedderSettings()
    for device in devices:
        modes = {
            "unbatched (max batch 1)": EmbedderSettings(args.backend, args.model, device, max_batch_size=1, max_wait_ms=0, cache_size=0),
            f"batched (max {defaults.max_batch_size}, wait {defaults.max_wait_ms:g} ms)": EmbedderSettings(
                args.backend, args.model, device, cache_size=0
            ),
        }
        rows = {}
        for mode, settings in modes.items():
            rows[mode] = asyncio.run(load_test(settings, args.concurrency, args.requests, args.repeats))
            r = rows[mode]
            print(f"{device:<8} {mode:<28} {r['requests_per_s_median']:>11.0f} {r['latency_ms_p50']:>8.2f} {r['latency_ms_p99']:>8.2f}")
        unbatched, batched = rows.values()
        print(f"{device:<8} batched / unbatched throughput: {batched['requests_per_s_median'] / unbatched['requests_per_s_median']:.1f}x")
        results["batching"][device] = rows

    device = devices[-1]
    print(f"\n## query cache on {device}, server defaults, {args.cache_calls} sequential one-text calls (medians)")
    cache = asyncio.run(cache_test(EmbedderSettings(args.backend, args.model, device), args.cache_calls))
    results["cache"] = {"device": device, **cache}
    print(f"miss {cache['miss_ms_p50']:.3f} ms   hit {cache['hit_ms_p50']:.3f} ms   "
          f"hit is {cache['miss_ms_p50'] / cache['hit_ms_p50']:.0f}x faster")

    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
