"""Candidate recall: the share of a model's full-catalog top 10 that the ranker's 50 ANN candidates contain.

    .venv/bin/python benchmarks/candidate_recall.py --data data/amazon_clothing_2014_msl --model models/<version> [-n 2000]

The ranker searches the catalog with the personalized query p and re-scores what comes back; the
final score is monotone in cos(p, item), so the only loss is the ANN index's. This run puts the
dataset's item vectors (the embedding cache's, as `whisperlite ingest` embeds them) into the
catalog's own store (milvus-lite, the collection `whisperlite serve catalog` creates), computes p for
`-n` seeded test cases exactly as the ranker does (`personalize_users`: stored history, no recent
items), and compares the top 10 of the model's score over the whole catalog with the 50 candidates.
It prints the mean share, the share of cases with all 10 found, and the same for the raw request
vector (the text-only path) side by side.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from whisperlite.core.personalization import PersonalizationModel
from whisperlite.services.catalog.filters import SearchFilter
from whisperlite.services.catalog.items import ItemRecord
from whisperlite.services.catalog.store import CollectionSpec, MilvusStore
from whisperlite.trainer.embeddings import EmbeddingCache
from whisperlite.trainer.experiment import prepare_experiment

TOP, CANDIDATES, CHUNK = 10, 50, 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="a model version directory (or its parent: the newest)")
    parser.add_argument("-n", type=int, default=2000, help="test cases")
    args = parser.parse_args()

    model = PersonalizationModel.load(args.model)
    experiment = prepare_experiment(args.data, EmbeddingCache())
    items, test = experiment.item_vectors, experiment.split.test
    rows = np.sort(np.random.default_rng(0).choice(len(test), size=min(args.n, len(test)), replace=False))
    queries = experiment.test_queries[rows]
    model_rows = np.array([model.user_row(u) for u in test["user_id"].to_numpy()[rows]])
    personalized = model.personalize_users(queries, model_rows)
    paths = {"personalized query (the ranker's search)": (personalized, model.score(personalized, items)),
             "raw request (text only)": (queries, queries @ items.T)}

    with tempfile.TemporaryDirectory() as tmp:
        store = MilvusStore(str(Path(tmp) / "catalog.db"), "items", timeout_seconds=300)
        store.open(CollectionSpec(dimension=experiment.dimension, encoder_model=experiment.encoder_name))
        ids = experiment.dataset.items["item_id"].to_numpy()
        started = time.perf_counter()
        for start in range(0, len(items), CHUNK):
            store.upsert([ItemRecord(item_id=str(ids[j]), vector=items[j]) for j in range(start, min(start + CHUNK, len(items)))])
        print(f"{experiment.dataset.name}: {len(items)} items into milvus-lite in {time.perf_counter() - started:.0f} s; "
              f"model {model.version} (taste {model.taste_mode}); {len(rows)} test cases", file=sys.stderr)
        print(f"| query searched | mean share of the full-catalog top {TOP} among {CANDIDATES} candidates | cases with all {TOP} |")
        print("|---|---:|---:|")
        for name, (vectors, scores) in paths.items():
            shares = []
            for vector, row_scores in zip(vectors, scores):
                top = set(ids[np.argsort(-row_scores, kind="stable")[:TOP]])
                found = {hit.record.item_id for hit in store.search(vector, CANDIDATES, SearchFilter())}
                shares.append(len(top & found) / TOP)
            shares = np.array(shares)
            print(f"| {name} | {shares.mean():.4f} | {(shares == 1).mean():.4f} |")
        store.close()


if __name__ == "__main__":
    main()
