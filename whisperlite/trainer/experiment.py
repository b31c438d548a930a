"""Everything a training or evaluation run shares: dataset, split, requests and cached vectors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperlite.core.dataset import ITEM_TEXT_TRAIN_REQUESTS, Dataset, load_dataset
from whisperlite.core.item_text import item_text, items_with_request_text, leave_one_out_item_texts
from whisperlite.data.requests import fill_missing_requests
from whisperlite.trainer.embeddings import EmbeddingCache
from whisperlite.trainer.split import DEFAULT_MIN_INTERACTIONS, NoTestCases, Split, no_test_cases, temporal_split

log = logging.getLogger(__name__)

DEFAULT_REQUEST_SEED = 0


@dataclass
class Experiment:
    dataset: Dataset
    split: Split
    encoder_name: str
    item_vectors: np.ndarray  # (n_items, d) unit rows
    train_queries: np.ndarray  # (len(split.train), d) request vectors, row-aligned with split.train
    validation_queries: np.ndarray
    test_queries: np.ndarray
    history_means: np.ndarray  # (n_users, d) unit mean of each user's train item vectors
    request_seed: int
    simulated_share: float  # share of requests that came from the simulator
    # Where item text is built from training requests: each train example's target as it would
    # look without that example's own request (row-aligned with split.train), else None.
    train_target_vectors: np.ndarray | None = None
    # Train rows worth training on (None = all): where the target's text is built from requests,
    # rows whose target has no other training request (its text would be empty) are left out.
    train_mask: np.ndarray | None = None

    @property
    def dimension(self) -> int:
        return int(self.item_vectors.shape[1])

    def settings(self) -> dict:
        split = self.split
        return {
            "dataset": self.dataset.name,
            "data_hash": self.dataset.data_hash,
            "encoder": self.encoder_name,
            "n_items": int(self.dataset.n_items),
            "n_users": len(split.user_ids),
            "n_train": len(split.train),
            "n_validation": len(split.validation),
            "n_test": len(split.test),
            "min_interactions": split.min_interactions,
            "request_seed": self.request_seed,
            "simulated_request_share": round(self.simulated_share, 4),
        }


def history_means(split: Split, item_vectors: np.ndarray) -> np.ndarray:
    """Unit mean of each user's train item vectors (zero for a user without train items)."""
    means = np.zeros((len(split.user_ids), item_vectors.shape[1]), dtype=np.float32)
    users = split.train["user"].to_numpy()
    np.add.at(means, users, item_vectors[split.train["item"].to_numpy()])
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)


def prepare_experiment(
    data_dir: str | Path,
    cache: EmbeddingCache,
    min_interactions: int = DEFAULT_MIN_INTERACTIONS,
    request_seed: int = DEFAULT_REQUEST_SEED,
    leave_one_out_positives: bool = False,
    require_test_cases: bool = False,
) -> Experiment:
    """Loads, splits and embeds a dataset. `leave_one_out_positives` also embeds each training target
    without the example's own request (only `TrainConfig.positives="leave_one_out"` trains on them).
    `require_test_cases`: NoTestCases, before anything is embedded, for a split without test cases."""
    dataset = load_dataset(data_dir)
    interactions = dataset.interactions
    if interactions.empty:
        raise ValueError(f"{dataset.directory}: no interactions (with an item in items.csv) to learn from")
    if (interactions["request"].str.strip() == "").any():
        interactions = fill_missing_requests(interactions, dataset.items, seed=request_seed)
    else:
        interactions = interactions.assign(request_simulated=False)
    dataset.interactions = interactions
    simulated_share = float(interactions["request_simulated"].mean()) if len(interactions) else 0.0
    split = temporal_split(dataset, min_interactions)
    reason = no_test_cases(dataset, split) if require_test_cases else None
    if reason:  # said before anything is embedded: the split is cheap, embedding is not
        raise NoTestCases(dataset.name, reason)
    train_target_vectors = train_mask = None
    if dataset.info.get("item_text_source") == ITEM_TEXT_TRAIN_REQUESTS:
        # Items described by what users wrote about them: training rows only, so no held-out
        # request leaks into its own target's text. A training example's own request is in its
        # target's text too; training sees the target without it, as validation and test do.
        original_items = dataset.items
        dataset.items = items_with_request_text(original_items, split.train)
        if leave_one_out_positives:
            loo_texts = leave_one_out_item_texts(original_items, split.train)
            train_target_vectors = cache.embed(loo_texts, "train-targets")
            titles = original_items.set_index("item_id").loc[split.train["item_id"], "title"]
            train_mask = np.array([text != item_text(title, "") for text, title in zip(loo_texts, titles)])
    item_vectors = cache.items(dataset.items)
    frames = (split.train, split.validation, split.test)
    all_requests = np.concatenate([f["request"].to_numpy(dtype=object) for f in frames]).tolist()
    vectors = cache.requests(all_requests)
    bounds = np.cumsum([0] + [len(f) for f in frames])
    log.info(
        "%s: %d items, %d users, %d train / %d validation / %d test interactions (%.0f%% simulated requests)",
        dataset.name, dataset.n_items, len(split.user_ids), len(split.train), len(split.validation),
        len(split.test), 100 * simulated_share,
    )
    return Experiment(
        dataset=dataset,
        split=split,
        encoder_name=cache.encoder_name,
        item_vectors=item_vectors,
        train_queries=vectors[bounds[0] : bounds[1]],
        validation_queries=vectors[bounds[1] : bounds[2]],
        test_queries=vectors[bounds[2] : bounds[3]],
        history_means=history_means(split, item_vectors),
        request_seed=request_seed,
        simulated_share=simulated_share,
        train_target_vectors=train_target_vectors,
        train_mask=train_mask,
    )
