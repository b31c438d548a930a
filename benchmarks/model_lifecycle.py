"""What model hot reload, shadow scoring and a second loaded version cost a running ranker.

    .venv/bin/python benchmarks/model_lifecycle.py [-n 300] [--users 200000]

Starts a real query encoder, catalog (milvus-lite in a temporary folder, 600 items) and ranker, with
two model versions of `--users` users each. The versions have random weights and tastes (this
measures serving cost, not quality) and the real network shape (384-d, hidden 512). In one run it
measures Recommend latency (median / p99, one call at a time) while nothing changes, while another
thread swaps the live version back and forth with LoadModel, and with 100% shadow scoring; and the
ranker's memory (through psutil) with one version loaded and with a second one loaded as the candidate,
next to the size of a version's arrays on disk: they are read into memory, so a second version costs
about their size.
"""

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import numpy as np
import psutil
import torch

from whisperlite.core.clients.health import wait_until_serving
from whisperlite.core.clients.model_admin import ModelAdminClient
from whisperlite.core.personalization import PersonalizationModel, PersonalizationNetwork
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, query_encoder_pb2, query_encoder_pb2_grpc, ranker_pb2, ranker_pb2_grpc

QUERIES = ["black leather boots", "a light dress for a summer wedding", "men's automatic watch", "warm winter coat"]
WORDS = (["black", "red", "navy", "white", "olive", "grey"], ["leather", "cotton", "linen", "wool", "silk"],
         ["boots", "summer dress", "watch", "jacket", "sneakers", "scarf", "coat", "sandals", "shirt", "jeans"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(name: str, logs: Path, *args: str) -> tuple[subprocess.Popen, str, int]:
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "whisperlite", "serve", name, "--port", str(port), "--metrics-port", str(metrics_port), *args],
        stdout=subprocess.DEVNULL, stderr=(logs / f"{name}.log").open("wb"),
    )
    address = f"localhost:{port}"
    if not wait_until_serving(address, 300, alive=lambda: process.poll() is None):
        raise SystemExit(f"{name} did not start: {(logs / f'{name}.log').read_text()[-2000:]}")
    return process, address, metrics_port


def write_version(root: Path, version: str, created: datetime, encoder: str, dimension: int, users: int, seed: int) -> Path:
    torch.manual_seed(seed)
    network = PersonalizationNetwork(dimension, n_users=0, hidden=512, dropout=0.0)
    with torch.no_grad():  # off the zero-initialized output layer, as a trained network is
        network.fuse[-1].weight.normal_(0, 0.02)
    tastes = np.random.default_rng(seed).normal(size=(users, dimension)).astype(np.float32)
    tastes /= np.linalg.norm(tastes, axis=1, keepdims=True)
    manifest = {"name": "bench", "version": version, "created": created.isoformat(), "encoder": encoder,
                "dimension": dimension, "n_users": users, "config": {"network": {"hidden": 512, "dropout": 0.0}}}
    return PersonalizationModel(network, [f"user-{i}" for i in range(users)], tastes, manifest).save(root / version)


@dataclass
class BenchRoot:
    """A temporary folder with logs/ and models/, a running query encoder and what it serves."""

    root: Path
    logs: Path
    models: Path
    encoder_address: str
    encoder_info: query_encoder_pb2.GetModelInfoResponse
    processes: list  # every process started in it, stopped newest first at exit


@contextlib.contextmanager
def bench_root() -> Iterator[BenchRoot]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        logs, models = root / "logs", root / "models"
        logs.mkdir()
        models.mkdir()
        processes = []
        try:
            encoder, encoder_address, _ = serve("query-encoder", logs)
            processes.append(encoder)
            with grpc.insecure_channel(encoder_address) as channel:
                info = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel).GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=60)
            yield BenchRoot(root, logs, models, encoder_address, info, processes)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(60)


def start_catalog_and_ranker(root: Path, logs: Path, models: Path, encoder_address: str, processes: list):
    """A catalog with 600 items and a ranker over `models` (watcher off); started processes go to `processes`."""
    catalog, catalog_address, _ = serve("catalog", logs, "--data-dir", str(root / "catalog"), "--query-encoder-addr", encoder_address)
    processes.append(catalog)
    items = [common_pb2.Item(item_id=f"item-{i}", title=" ".join((a, b, c)))
             for i, (a, b, c) in enumerate((a, b, c) for a in WORDS[0] for b in WORDS[1] for c in WORDS[2] for _ in range(2))]
    with grpc.insecure_channel(catalog_address) as channel:
        catalog_pb2_grpc.CatalogServiceStub(channel).UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=600)
    # The watcher is off: versions change only when the benchmark asks, so each phase is what it says.
    ranker, ranker_address, _ = serve(
        "ranker", logs, "--model-dir", str(models), "--model-poll-seconds", "0",
        "--query-encoder-addr", encoder_address, "--catalog-addr", catalog_address,
    )
    processes.append(ranker)
    return items, ranker, ranker_address


def memory_mb(pid: int) -> dict[str, float]:
    """Resident and anonymous (owned outright, not page cache) memory, in MB."""
    process = psutil.Process(pid)
    return {
        "rss": process.memory_info().rss / 2**20,
        "anonymous": sum(mapping.anonymous for mapping in process.memory_maps()) / 2**20,
    }


def arrays_mb(version: Path) -> float:
    return sum(path.stat().st_size for path in version.glob("*.npy")) / 2**20


def timed_calls(stub, n: int, users: int) -> tuple[list[float], list[str], int]:
    samples, versions, failures = [], [], 0
    rng = np.random.default_rng(0)
    for i in range(n):
        request = ranker_pb2.RecommendRequest(user_id=f"user-{rng.integers(users)}", query=QUERIES[i % len(QUERIES)], top_k=10)
        start = time.perf_counter()
        try:
            response = stub.Recommend(request, timeout=60)
        except grpc.RpcError:
            failures += 1
            continue
        samples.append((time.perf_counter() - start) * 1e3)
        versions.append(response.model_version)
    return samples, versions, failures


def summary(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), float(np.percentile(samples, 99))


def timed_recommends(stub, requests: list[ranker_pb2.RecommendRequest]) -> list[float]:
    """Each Recommend's latency in ms, one call at a time."""
    samples = []
    for request in requests:
        start = time.perf_counter()
        stub.Recommend(request, timeout=60)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def print_latency_rows(title: str, rows: dict[str, list[float]], base_label: str) -> None:
    """One markdown table: each row's median and p99 in ms and their ratios to the `base_label` row."""
    base = summary(rows[base_label])
    print(title)
    print("| row | median ms | p99 ms | median x | p99 x |\n|---|---:|---:|---:|---:|")
    for label, samples in rows.items():
        median, p99 = summary(samples)
        print(f"| {label} | {median:.1f} | {p99:.1f} | {median / base[0]:.2f} | {p99 / base[1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="Recommend calls per phase")
    parser.add_argument("--users", type=int, default=200_000, help="users in each version's taste table")
    args = parser.parse_args()

    with bench_root() as bench:
        root, logs, models, info, processes = bench.root, bench.logs, bench.models, bench.encoder_info, bench.processes
        now = datetime.now(timezone.utc)
        old = write_version(models, "bench-v1", now - timedelta(hours=1), info.model_name, info.dimension, args.users, seed=1)
        staged = write_version(root, "bench-v2", now, info.model_name, info.dimension, args.users, seed=2)
        items, ranker, ranker_address = start_catalog_and_ranker(root, logs, models, bench.encoder_address, processes)
        channel = grpc.insecure_channel(ranker_address)
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        admin = ModelAdminClient(ranker_address)
        timed_calls(stub, 30, args.users)  # warm-up

        memory_one = memory_mb(ranker.pid)  # only bench-v1 was ever loaded
        steady, _, steady_failures = timed_calls(stub, args.n, args.users)

        staged.rename(models / staged.name)
        admin.set_traffic("bench-v2", 100.0, shadow=True)
        shadowed, _, shadow_failures = timed_calls(stub, args.n, args.users)
        memory_two = memory_mb(ranker.pid)  # bench-v2 loaded as the candidate, after it shadow-scored n calls
        admin.set_traffic("", 0.0)

        swaps, stop = [0], threading.Event()

        def swap_versions() -> None:
            while not stop.is_set():
                admin.load_model("bench-v2" if swaps[0] % 2 == 0 else "bench-v1")
                swaps[0] += 1

        swapper = threading.Thread(target=swap_versions)
        swapper.start()
        reloading, reload_versions, reload_failures = timed_calls(stub, args.n, args.users)
        stop.set()
        swapper.join()
        admin.close()
        channel.close()

        version_mb = arrays_mb(old)
        print(f"Recommend, one call at a time, n={args.n} per row, {args.users} users per version, {len(items)} items")
        print(f"{'phase':<34}{'median ms':>10}{'p99 ms':>9}{'median x':>10}{'p99 x':>8}{'failed':>8}")
        base = summary(steady)
        for label, samples, failures in (
            ("steady (one version)", steady, steady_failures),
            ("100% shadow scoring", shadowed, shadow_failures),
            (f"while swapping ({swaps[0]} LoadModel)", reloading, reload_failures),
        ):
            median, p99 = summary(samples)
            print(f"{label:<34}{median:>10.1f}{p99:>9.1f}{median / base[0]:>10.2f}{p99 / base[1]:>8.2f}{failures:>8}")
        print(f"versions answered while swapping: {sorted(set(reload_versions))}")
        print(f"\nranker memory (MB)          {'rss':>8}{'anonymous':>11}")
        for label, memory in (("one version loaded", memory_one), ("two (live + candidate)", memory_two)):
            print(f"{label:<28}{memory['rss']:>8.0f}{memory['anonymous']:>11.0f}")
        grown = memory_two["anonymous"] - memory_one["anonymous"]
        print(f"second version adds {grown:.0f} MB anonymous memory; its arrays are {version_mb:.0f} MB on disk "
              f"(ratio {grown / version_mb:.2f})")


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    main()
