"""What OpenTelemetry tracing costs a Recommend call: two stacks side by side, one traced, one not.

    .venv/bin/python benchmarks/tracing_overhead.py [-n 300]

Starts two stacks of the three services on loopback (each its own MiniLM encoder and a small
milvus-lite catalog of generated items); the traced one exports every span with the real OTLP/gRPC
exporter to a receiver in this process (OTEL_TRACES_EXPORTER=otlp). Calls alternate between the
stacks, one at a time, so both see the same machine load; medians and p99 in ms, and the ratio of
traced to untraced.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from whisperlite.core.clients.catalog_admin import CatalogAdminClient, Item
from whisperlite.core.clients.health import wait_until_serving
from whisperlite.core.clients.ranker import RankerClient

QUERIES = ["black leather boots", "a light dress for a summer wedding", "men's automatic watch", "warm winter coat", "running shoes"]
WORDS = ["black", "red", "leather", "cotton", "summer", "winter", "boots", "dress", "coat", "shoes", "watch", "bag", "light", "warm"]


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(name: str, workdir: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "whisperlite", "serve", name, "--port", str(port), "--metrics-port", "0", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"{name}.log").open("wb"),
    )
    address = f"localhost:{port}"
    if not wait_until_serving(address, 300, alive=lambda: process.poll() is None):
        raise SystemExit(f"{name} did not start: see {workdir / f'{name}.log'}")
    return process, address


def start_stack(workdir: Path, env: dict[str, str], items: list[Item]) -> tuple[list[subprocess.Popen], str]:
    workdir.mkdir()
    encoder, encoder_address = start("query-encoder", workdir, env)
    catalog, catalog_address = start("catalog", workdir, env, "--data-dir", str(workdir / "store"), "--query-encoder-addr", encoder_address)
    ranker, ranker_address = start(
        "ranker", workdir, env, "--model-dir", str(workdir / "no-model"),
        "--query-encoder-addr", encoder_address, "--catalog-addr", catalog_address,
    )  # fmt: skip
    with CatalogAdminClient(catalog_address, timeout_seconds=300) as admin:
        for start_at in range(0, len(items), 250):
            admin.upsert(items[start_at : start_at + 250])
    return [ranker, catalog, encoder], ranker_address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="calls per stack")
    parser.add_argument("--items", type=int, default=1000, help="generated catalog items per stack")
    args = parser.parse_args()

    rng = np.random.default_rng(12)
    items = [Item(f"item-{i}", " ".join(rng.choice(WORDS, 4))) for i in range(args.items)]
    receiver = CountingReceiver()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    collector_port = free_port()
    collector.add_insecure_port(f"127.0.0.1:{collector_port}")
    collector.start()
    traced_env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            plain_processes, plain = start_stack(Path(tmp, "plain"), {"OTEL_TRACES_EXPORTER": "none"}, items)
            processes += plain_processes
            traced_processes, traced = start_stack(Path(tmp, "traced"), traced_env, items)
            processes += traced_processes
            samples: dict[str, list[float]] = {"untraced": [], "traced": []}
            with RankerClient(plain, timeout_seconds=60) as plain_client, RankerClient(traced, timeout_seconds=60) as traced_client:
                clients = {"untraced": plain_client, "traced": traced_client}
                for i in range(10 + args.n):  # the first 10 warm connections and caches
                    for name, client in clients.items():
                        started = time.perf_counter()
                        client.recommend(user_id="", query=QUERIES[i % len(QUERIES)], top_k=10)
                        if i >= 10:
                            samples[name].append((time.perf_counter() - started) * 1e3)
            time.sleep(6)  # the exporters flush every 5 s
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(60)
            collector.stop(None)
    base = statistics.median(samples["untraced"])
    print(f"{args.n} sequential Recommend calls per stack, alternating; {args.items} items; {receiver.spans} spans received\n")
    print("| stack | median ms | p99 ms | median ratio to untraced | p99 ratio |\n|---|---|---|---|---|")
    base_p99 = np.percentile(samples["untraced"], 99)
    for name, values in samples.items():
        median, p99 = statistics.median(values), np.percentile(values, 99)
        print(f"| {name} | {median:.2f} | {p99:.2f} | {median / base:.2f} | {p99 / base_p99:.2f} |")


if __name__ == "__main__":
    main()
