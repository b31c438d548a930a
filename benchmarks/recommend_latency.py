"""End-to-end latency of one Recommend call against a running stack (`make run`), next to its parts.

    .venv/bin/python benchmarks/recommend_latency.py --data data/amazon_clothing_2014_msl [-n 100]

Every row is measured in this one run, one call at a time, and reported as median / p99 in ms with
its ratio to the personalized Recommend call.
"""

import argparse
import statistics
import time
import uuid

import grpc
import numpy as np

from whisperlite.core.dataset import most_active_user
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, query_encoder_pb2, query_encoder_pb2_grpc, ranker_pb2, ranker_pb2_grpc

QUERIES = ["black leather boots", "a light dress for a summer wedding", "men's automatic watch", "warm winter coat", "running shoes"]


def timed(call, n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranker", default="localhost:50050")
    parser.add_argument("--catalog", default="localhost:50052")
    parser.add_argument("--encoder", default="localhost:50051")
    parser.add_argument("--data", help="canonical dataset, to pick a real user")
    parser.add_argument("--user", help="a user the model knows")
    parser.add_argument("-n", type=int, default=100)
    args = parser.parse_args()
    user = args.user or (most_active_user(args.data) if args.data else None)
    if user is None:
        raise SystemExit("pass --user or --data")

    with grpc.insecure_channel(args.ranker) as r, grpc.insecure_channel(args.catalog) as c, grpc.insecure_channel(args.encoder) as e:
        ranker = ranker_pb2_grpc.RankerServiceStub(r)
        catalog = catalog_pb2_grpc.CatalogServiceStub(c)
        encoder = query_encoder_pb2_grpc.QueryEncoderServiceStub(e)
        vector = encoder.Embed(query_encoder_pb2.EmbedRequest(texts=[QUERIES[0]])).text_vectors[0].values
        path = ranker.Recommend(ranker_pb2.RecommendRequest(user_id=user, query=QUERIES[0], top_k=10)).path
        for i in range(10):  # warm-up: connections, caches, lazy imports
            ranker.Recommend(ranker_pb2.RecommendRequest(user_id=user, query=QUERIES[i % len(QUERIES)], top_k=10))

        rows = {
            f"Recommend, known user ({ranker_pb2.PersonalizationPath.Name(path)})": timed(
                lambda i: ranker.Recommend(ranker_pb2.RecommendRequest(user_id=user, query=QUERIES[i % len(QUERIES)], top_k=10)), args.n
            ),
            "Recommend, known user, new query text (encoder cache miss)": timed(
                lambda i: ranker.Recommend(
                    ranker_pb2.RecommendRequest(user_id=user, query=f"{QUERIES[i % len(QUERIES)]} {uuid.uuid4().hex[:6]}", top_k=10)
                ),
                args.n,
            ),
            "Recommend, unknown user (text only)": timed(
                lambda i: ranker.Recommend(ranker_pb2.RecommendRequest(user_id="", query=QUERIES[i % len(QUERIES)], top_k=10)), args.n
            ),
            "Embed, cache miss (new text)": timed(
                lambda i: encoder.Embed(query_encoder_pb2.EmbedRequest(texts=[f"{QUERIES[i % 5]} {uuid.uuid4().hex[:6]}"])), args.n
            ),
            "Embed, cache hit": timed(lambda i: encoder.Embed(query_encoder_pb2.EmbedRequest(texts=[QUERIES[0]])), args.n),
            "Search 50 candidates with vectors (the ranker's default)": timed(
                lambda i: catalog.Search(catalog_pb2.SearchRequest(vector=vector, top_k=50, include_vectors=True)), args.n
            ),
            "Search 200 candidates with vectors": timed(
                lambda i: catalog.Search(catalog_pb2.SearchRequest(vector=vector, top_k=200, include_vectors=True)), args.n
            ),
            "Search top 10": timed(lambda i: catalog.Search(catalog_pb2.SearchRequest(vector=vector, top_k=10)), args.n),
        }
    reference = statistics.median(next(iter(rows.values())))
    print(f"{args.n} sequential calls each; user {user}\n")
    print(f"| call | median ms | p99 ms | ratio to personalized Recommend |\n|---|---|---|---|")
    for name, samples in rows.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.2f} | {np.percentile(samples, 99):.2f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
