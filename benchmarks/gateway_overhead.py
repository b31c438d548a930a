"""What the HTTP/JSON gateway adds to a Recommend: HTTP POST /v1/recommend vs gRPC Recommend, same run.

    .venv/bin/python benchmarks/gateway_overhead.py [-n 300] [--data data/amazon_clothing_2014_msl]
    .venv/bin/python benchmarks/gateway_overhead.py --ranker localhost:50050 --gateway http://localhost:8080   # a running stack

Without addresses it starts its own encoder, catalog (milvus-lite in a temporary folder), text-only
ranker and gateway on free loopback ports (tests/servers.py) and upserts --data's items, or 240
generated ones. Each round sends the same request once over gRPC and once over HTTP (alternating which
goes first), one call at a time on kept-alive connections, and reports median and p99 in ms and the
HTTP/gRPC ratio.
"""

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers starts the processes

from whisperlite.v1 import ranker_pb2, ranker_pb2_grpc  # noqa: E402

QUERIES = ["black leather boots", "a light dress for a summer wedding", "men's automatic watch", "warm winter coat", "running shoes"]
COLOURS = ["black", "white", "red", "navy", "olive", "camel"]
MATERIALS = ["leather", "linen", "wool", "cotton", "suede", "denim", "silk", "canvas"]
GARMENTS = ["boots", "dress", "coat", "sneakers", "watch strap"]


def start_stack(stack: ExitStack, data: Path | None) -> tuple[str, str]:
    from tests.servers import start_catalog, start_gateway, start_service

    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
    encoder = start_service("query-encoder", work / "logs")
    stack.callback(encoder.stop)
    catalog = start_catalog(work / "logs", work / "catalog", encoder.address)
    stack.callback(catalog.stop)
    ranker = start_service(
        "ranker", work / "logs", "--model-dir", str(work / "no-model"), "--query-encoder-addr", encoder.address, "--catalog-addr", catalog.address
    )
    stack.callback(ranker.stop)
    gateway = start_gateway(work / "logs", ranker.address, catalog.address, work / "state")
    stack.callback(gateway.stop)
    if data is not None:
        from whisperlite.shell.ingest import ingest

        ingest(data, catalog.address)
    else:
        items = [
            {"item_id": f"bench-{n}", "title": f"{colour} {material} {garment}"}
            for n, (colour, material, garment) in enumerate(itertools.product(COLOURS, MATERIALS, GARMENTS))
        ]
        httpx.post(f"http://127.0.0.1:{gateway.port}/v1/items", json={"items": items}, timeout=600).raise_for_status()
    return ranker.address, f"http://127.0.0.1:{gateway.port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranker", help="gRPC address of a running ranker (with --gateway)")
    parser.add_argument("--gateway", help="base URL of a running gateway in front of that ranker")
    parser.add_argument("--data", type=Path, help="canonical dataset whose items the started catalog gets")
    parser.add_argument("-n", type=int, default=300, help="rounds (one gRPC and one HTTP call each)")
    parser.add_argument("-k", type=int, default=10, help="top_k of every request")
    args = parser.parse_args()
    if bool(args.ranker) != bool(args.gateway):
        parser.error("--ranker and --gateway go together")

    with ExitStack() as stack:
        ranker_address, gateway_url = (args.ranker, args.gateway) if args.ranker else start_stack(stack, args.data)
        channel = stack.enter_context(grpc.insecure_channel(ranker_address))
        ranker = ranker_pb2_grpc.RankerServiceStub(channel)
        http = stack.enter_context(httpx.Client(base_url=gateway_url, timeout=60))

        def grpc_call(i: int) -> None:
            ranker.Recommend(ranker_pb2.RecommendRequest(query=QUERIES[i % len(QUERIES)], top_k=args.k), timeout=60)

        def http_call(i: int) -> None:
            http.post("/v1/recommend", json={"query": QUERIES[i % len(QUERIES)], "top_k": args.k}).raise_for_status()

        for i in range(20):  # warm-up: connections, the encoder's cache, lazy imports
            grpc_call(i)
            http_call(i)
        samples: dict[str, list[float]] = {"gRPC Recommend (ranker)": [], "HTTP POST /v1/recommend (gateway)": []}
        calls = list(zip(samples.values(), (grpc_call, http_call)))
        for i in range(args.n):
            for times, call in calls if i % 2 == 0 else calls[::-1]:
                start = time.perf_counter()
                call(i)
                times.append((time.perf_counter() - start) * 1e3)

    grpc_times, http_times = samples.values()
    print(f"{args.n} rounds, top_k {args.k}, text-only requests, one call at a time\n")
    print("| call | median ms | p99 ms |\n|---|---|---|")
    for name, times in samples.items():
        print(f"| {name} | {statistics.median(times):.2f} | {np.percentile(times, 99):.2f} |")
    median_ratio = statistics.median(http_times) / statistics.median(grpc_times)
    p99_ratio = float(np.percentile(http_times, 99) / np.percentile(grpc_times, 99))
    overhead = statistics.median(http_times) - statistics.median(grpc_times)
    print(f"\nHTTP/gRPC ratio: median {median_ratio:.2f}, p99 {p99_ratio:.2f}; gateway adds {overhead:.2f} ms at the median")


if __name__ == "__main__":
    main()
