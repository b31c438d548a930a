"""What a model's SASRec sequence part costs a Recommend call, side by side in one run.

    .venv/bin/python benchmarks/sequence_latency.py --model-dir MODELS --version VERSION --data DATA [-n 300]

Drives a running stack whose ranker serves MODELS (`whisperlite up --model-dir MODELS ...`). VERSION
is a version there with a sequence part; the benchmark writes its twin without one (VERSION-network-only:
the same network files, linked, and a manifest without "sequence"), then switches the ranker between
the two with LoadModel in interleaved rounds and times Recommends one call at a time: known users of
DATA (their request where the data has one, else one of a few fixed requests), alone and with their 5
items before the last sent as recent_item_ids. Both versions see the same calls, so a text the ranker's
query cache holds saves the same Embed for both; `--new-texts` makes every call's text new (a call
number appended), so every call pays its Embed, as a shopper's first request does. Medians and p99 in ms with their ratio to the
network-only known-user row. The twin stays (delete it by hand).
"""

import argparse
import itertools
import json
import os
import uuid
from pathlib import Path

import grpc

from model_lifecycle import print_latency_rows, timed_recommends
from whisperlite.core.clients.model_admin import ModelAdminClient
from whisperlite.core.dataset import load_dataset
from whisperlite.core.model_versions import MANIFEST
from whisperlite.core.sequence import CATALOG_MOMENTS, SEQUENCE_ITEM_IDS, SEQUENCE_OFFSETS, SEQUENCE_ROWS, SEQUENCE_WEIGHTS
from whisperlite.v1 import ranker_pb2, ranker_pb2_grpc

QUERIES = ["black leather boots", "a light dress for a summer wedding", "men's automatic watch", "warm winter coat", "running shoes"]
SEQUENCE_FILES = {SEQUENCE_WEIGHTS, SEQUENCE_ITEM_IDS, SEQUENCE_OFFSETS, SEQUENCE_ROWS, CATALOG_MOMENTS}


def network_only_twin(version_dir: Path) -> str:
    manifest = json.loads((version_dir / MANIFEST).read_text())
    if "sequence" not in manifest:
        raise SystemExit(f"{version_dir} has no sequence part")
    twin = version_dir.parent / f"{manifest['version']}-network-only"
    twin.mkdir(exist_ok=True)
    for path in version_dir.iterdir():
        if path.name not in SEQUENCE_FILES | {MANIFEST} and not (twin / path.name).exists():
            (twin / path.name).symlink_to(path.resolve())
    del manifest["sequence"]
    manifest["version"] = twin.name
    (twin / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return twin.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranker", default="localhost:50050")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--version", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("-n", type=int, default=300, help="Recommend calls per row")
    parser.add_argument("--new-texts", action="store_true", help="a text never sent before in every call (no query-cache hits)")
    args = parser.parse_args()

    versions = {"sequence part": args.version, "network only": network_only_twin(args.model_dir / args.version)}
    interactions = load_dataset(args.data).interactions.sort_values("timestamp", kind="stable")
    last = interactions.groupby("user_id").tail(1).sample(n=args.n, random_state=0, replace=True)
    earlier = interactions.groupby("user_id")["item_id"].apply(lambda items: list(items)[-6:-1])
    calls = [(u, q.strip() or QUERIES[i % len(QUERIES)]) for i, (u, q) in enumerate(zip(last["user_id"], last["request"].fillna("")))]
    requests = {
        "known user": [ranker_pb2.RecommendRequest(user_id=u, query=q, top_k=10) for u, q in calls],
        "known user + 5 recent items": [ranker_pb2.RecommendRequest(user_id=u, query=q, top_k=10, recent_item_ids=earlier[u]) for u, q in calls],
    }
    rows: dict[str, list[float]] = {}
    fresh = itertools.count()
    run = uuid.uuid4().hex[:6]  # a second run must not find the first one's texts cached

    def texts(batch: list[ranker_pb2.RecommendRequest]) -> list[ranker_pb2.RecommendRequest]:
        if not args.new_texts:
            return batch
        return [ranker_pb2.RecommendRequest(user_id=r.user_id, query=f"{r.query} {run}{next(fresh)}", top_k=r.top_k,
                                            recent_item_ids=r.recent_item_ids) for r in batch]

    with grpc.insecure_channel(args.ranker) as channel, ModelAdminClient(args.ranker) as admin:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        for round_ in range(2):  # interleaved rounds: drift on a shared machine hits both versions alike
            for name, version in versions.items():
                admin.load_model(version)
                timed_recommends(stub, texts(requests["known user"][:20]))  # warm-up
                for label, batch in requests.items():
                    half = batch[round_ * len(batch) // 2 : (round_ + 1) * len(batch) // 2]
                    rows.setdefault(f"{name}, {label}", []).extend(timed_recommends(stub, texts(half)))

    texts_kind = "every text new" if args.new_texts else "texts repeat (query cache)"
    print_latency_rows(f"Recommend, one call at a time, {args.n} calls per row, {texts_kind}, model {args.version}, data {args.data}",
                       rows, "network only, known user")


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    main()
