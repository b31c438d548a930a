"""A synthetic dataset with a planted user taste, for tests where the point is the math.

Items are a product type plus a style in a small vector space; a request names only the type
(ambiguous on purpose), while each user buys mostly one style. Text search can find the type
but not the style; only a model that reads the user's taste can rank the right items first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from whisperlite.core.dataset import Dataset
from whisperlite.trainer.split import temporal_split
from whisperlite.trainer.experiment import Experiment, history_means


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_experiment(
    seed: int = 0,
    dim: int = 32,
    n_types: int = 8,
    n_styles: int = 6,
    items_per_pair: int = 10,
    n_users: int = 240,
    per_user: int = 8,
    taste_share: float = 0.9,
) -> Experiment:
    rng = np.random.default_rng(seed)
    type_vectors = _unit(rng.normal(size=(n_types, dim)))
    style_vectors = _unit(rng.normal(size=(n_styles, dim)))
    item_type = np.repeat(np.arange(n_types), n_styles * items_per_pair)
    item_style = np.tile(np.repeat(np.arange(n_styles), items_per_pair), n_types)
    n_items = len(item_type)
    item_vectors = _unit(
        type_vectors[item_type] + 0.6 * style_vectors[item_style] + 0.25 * rng.normal(size=(n_items, dim)) / np.sqrt(dim) * 4
    )
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"type {t} style {s}" for t, s in zip(item_type, item_style)],
            "text": "",
            "category": "",
            "image_path": "",
        }
    )
    rows = []
    request_vectors = {}
    for u in range(n_users):
        style = rng.integers(n_styles)
        chosen: set[int] = set()
        for k in range(per_user):
            t = rng.integers(n_types)
            s = style if rng.random() < taste_share else rng.integers(n_styles)
            candidates = [i for i in np.flatnonzero((item_type == t) & (item_style == s)) if i not in chosen]
            i = int(rng.choice(candidates))
            chosen.add(i)
            request = f"u{u} k{k} type {t}"
            request_vectors[request] = _unit(type_vectors[t] + 0.3 * rng.normal(size=dim) / np.sqrt(dim) * 4)
            rows.append({"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": 1000 * u + k, "request": request})
    interactions = pd.DataFrame(rows)
    interactions["item"] = interactions["item_id"].str[1:].astype(np.int64)
    dataset = Dataset(
        name="synthetic",
        directory=Path("."),
        items=items,
        interactions=interactions,
        info={"name": "synthetic"},
        data_hash=f"synthetic-{seed}",
    )
    split = temporal_split(dataset, min_interactions=3)
    vectors = lambda frame: np.stack([request_vectors[r] for r in frame["request"]])  # noqa: E731
    return Experiment(
        dataset=dataset,
        split=split,
        encoder_name="synthetic-encoder",
        item_vectors=item_vectors,
        train_queries=vectors(split.train),
        validation_queries=vectors(split.validation),
        test_queries=vectors(split.test),
        history_means=history_means(split, item_vectors),
        request_seed=0,
        simulated_share=0.0,
    )


def train_tiny_version(out_root: Path, encoder_name: str, dim: int, seed: int = 0) -> Path:
    """Trains a small model on the synthetic data in seconds and saves it as `out_root/<version>/`.

    For the model lifecycle tests: each call is a distinct, newer version (manifest `created` is
    the training time) whose encoder name and dimension are the ones a ranker will check.
    """
    from dataclasses import replace

    from whisperlite.trainer.train import TrainConfig, train_model

    experiment = replace(synthetic_experiment(seed=seed, dim=dim), encoder_name=encoder_name)
    # No sequence part: these models serve tests of the ranker's plumbing (tests/test_model_sequence.py and the
    # trained-ranker e2e test cover the sequence part).
    config = TrainConfig(batch_size=256, max_epochs=2, patience=1, user_table="off", taste="mean", loss_mix="given", hidden=64,
                         seed=seed, sequence="off")
    model = train_model(experiment, config, name="tiny", progress=False).model
    return model.save(Path(out_root) / model.version)
