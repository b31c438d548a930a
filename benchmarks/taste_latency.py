"""What the query-aware taste and the session join cost a Recommend call, side by side in one run.

    .venv/bin/python benchmarks/taste_latency.py [-n 300] [--users 20000] [--history 32]

Starts a real query encoder, catalog (milvus-lite, 600 items) and ranker. Two model versions with
random weights and the real network shape (384-d, hidden 512), `--users` users with `--history`
items each: one with the mean taste (the stored taste row, as before this change), one with the
attention taste (the user's last 32 history vectors gathered from the memory-mapped CSR and weighted
by the request at every call). For each version, Recommend latency one call at a time for a known
user, and for a known user sending 5 recent_item_ids (a catalog fetch, then joined to the history).
Medians and p99 in ms with their ratio to the mean-taste known-user row.
"""

import argparse
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import numpy as np
import torch

from model_lifecycle import QUERIES, bench_root, print_latency_rows, start_catalog_and_ranker, timed_recommends
from whisperlite.core.clients.model_admin import ModelAdminClient
from whisperlite.core.personalization import PersonalizationModel, PersonalizationNetwork, UserHistories
from whisperlite.v1 import ranker_pb2, ranker_pb2_grpc


def write_version(root: Path, version: str, created: datetime, encoder: str, dimension: int, users: int, history: int,
                  taste: str, seed: int) -> Path:
    torch.manual_seed(seed)
    network = PersonalizationNetwork(dimension, n_users=0, hidden=512, dropout=0.0, taste=taste)
    with torch.no_grad():
        network.fuse[-1].weight.normal_(0, 0.02)
        if taste == "attention":
            network.attention_sharpness.fill_(5.0)
            network.recency_decay.fill_(0.5)
    rng = np.random.default_rng(seed)
    tastes = rng.normal(size=(users, dimension)).astype(np.float32)
    tastes /= np.linalg.norm(tastes, axis=1, keepdims=True)
    catalog = rng.normal(size=(5000, dimension)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    histories = UserHistories.from_sequences([rng.integers(0, len(catalog), history) for _ in range(users)], catalog)
    manifest = {"name": "bench", "version": version, "created": created.isoformat(), "encoder": encoder, "dimension": dimension,
                "n_users": users, "config": {"network": {"hidden": 512, "dropout": 0.0, "taste": taste}}}
    model = PersonalizationModel(network, [f"user-{i}" for i in range(users)], tastes, manifest, histories=histories)
    return model.save(root / version)


def timed_calls(stub, n: int, users: int, recent: list[str]) -> list[float]:
    rng = np.random.default_rng(0)
    return timed_recommends(stub, [
        ranker_pb2.RecommendRequest(user_id=f"user-{rng.integers(users)}", query=QUERIES[i % len(QUERIES)], top_k=10, recent_item_ids=recent)
        for i in range(n)
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="Recommend calls per row")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=32, help="history items per user")
    args = parser.parse_args()

    rows = {}
    with bench_root() as bench:
        info = bench.encoder_info
        now = datetime.now(timezone.utc)
        for i, taste in enumerate(("mean", "attention")):
            write_version(bench.models, f"bench-{taste}", now - timedelta(hours=2 - i), info.model_name, info.dimension, args.users,
                          args.history, taste, seed=i)
        items, _, ranker_address = start_catalog_and_ranker(bench.root, bench.logs, bench.models, bench.encoder_address, bench.processes)
        recent = [f"item-{i}" for i in range(5)]
        with grpc.insecure_channel(ranker_address) as channel, ModelAdminClient(ranker_address) as admin:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            for round_ in range(2):  # interleaved rounds: drift on the shared machine hits both versions alike
                for taste in ("mean", "attention"):
                    admin.load_model(f"bench-{taste}")
                    timed_calls(stub, 20, args.users, [])  # warm-up
                    for label, ids in (("known user", []), ("known user + 5 recent items", recent)):
                        rows.setdefault(f"{taste} taste, {label}", []).extend(timed_calls(stub, args.n // 2, args.users, ids))

    print_latency_rows(f"Recommend, one call at a time, n={args.n} per row, {args.users} users x {args.history} history items, "
                       f"{len(items)} items", rows, "mean taste, known user")


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    main()
