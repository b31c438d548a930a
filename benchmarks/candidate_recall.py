"""Candidate recall: the share of a model's full-catalog top 10 that the ranker's ANN candidates contain.

    .venv/bin/python benchmarks/candidate_recall.py --data data/amazon_clothing_2014_msl --model models/<version> [-n 2000]

The ranker searches the catalog with the personalized query p and re-scores what comes back. Without
a sequence part the final score is monotone in cos(p, item), so the only loss is the ANN index's;
with one (core/sequence.py) the fused score reorders the candidates, so items past the cosine's top
can enter the final top 10 and the ranker searches more of them (--fused-candidates). This run puts the
dataset's item vectors (the embedding cache's, as `whisperlite ingest` embeds them) into the
catalog's own store (milvus-lite, the collection `whisperlite serve catalog` creates), computes p for
`-n` seeded test cases exactly as the ranker does (`personalize_users`: stored history, no recent
items), and compares the top 10 of the model's final score over the whole catalog with the 50
candidates, and for a model with a sequence part with 50 and 200 (the ranker's --candidates and
--fused-candidates defaults). It prints the mean share, the share of cases with all 10 found, and the
same for the raw request vector (the text-only path) side by side.
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

TOP, CHUNK = 10, 1000


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
    ids = experiment.dataset.items["item_id"].to_numpy()
    item_rows = None if model.sequence is None else model.sequence.item_rows(ids.tolist())
    final = model.rank_scores(personalized, personalized @ items.T, model.sequence_states(model_rows), item_rows)
    label = "personalized query, fused score" if model.sequence is not None else "personalized query (the ranker's search)"
    paths = {(label, 50): (personalized, final), ("raw request (text only)", 50): (queries, queries @ items.T)}
    if model.sequence is not None:
        paths[(label, 200)] = paths[(label, 50)]

    with tempfile.TemporaryDirectory() as tmp:
        store = MilvusStore(str(Path(tmp) / "catalog.db"), "items", timeout_seconds=300)
        store.open(CollectionSpec(dimension=experiment.dimension, encoder_model=experiment.encoder_name))
        started = time.perf_counter()
        for start in range(0, len(items), CHUNK):
            store.upsert([ItemRecord(item_id=str(ids[j]), vector=items[j]) for j in range(start, min(start + CHUNK, len(items)))])
        sequence = "none" if model.sequence is None else f"text weight {model.sequence.text_weight}"
        print(f"{experiment.dataset.name}: {len(items)} items into milvus-lite in {time.perf_counter() - started:.0f} s; "
              f"model {model.version} (taste {model.taste_mode}, sequence part: {sequence}); {len(rows)} test cases", file=sys.stderr)
        print(f"| query searched, score ranked | candidates | mean share of the full-catalog top {TOP} | cases with all {TOP} |")
        print("|---|---:|---:|---:|")
        for (name, candidates), (vectors, scores) in paths.items():
            shares = []
            for vector, row_scores in zip(vectors, scores):
                top = set(ids[np.argsort(-row_scores, kind="stable")[:TOP]])
                found = {hit.record.item_id for hit in store.search(vector, candidates, SearchFilter())}
                shares.append(len(top & found) / TOP)
            shares = np.array(shares)
            print(f"| {name} | {candidates} | {shares.mean():.4f} | {(shares == 1).mean():.4f} |")
        store.close()


if __name__ == "__main__":
    main()
