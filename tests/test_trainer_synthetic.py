"""Training on a synthetic dataset with a planted user taste (seconds, no encoder)."""

import numpy as np
import pytest
import torch

from tests.fixtures_model import synthetic_experiment
from whisperlite.trainer.methods import TextOnly, TextPlusHistoryMean, WhisperLite, rank_cases
from whisperlite.trainer.metrics import summarize
from whisperlite.trainer.train import TrainConfig, epoch_shard, train_model

FAST = TrainConfig(batch_size=64, lr=5e-3, max_epochs=12, patience=3, user_table="off")


@pytest.fixture(scope="module")
def experiment():
    return synthetic_experiment()


@pytest.fixture(scope="module")
def trained(experiment):
    return train_model(experiment, FAST, progress=False)


def test_split_is_temporal_per_user(experiment):
    split = experiment.split
    frame = experiment.dataset.interactions
    in_time_order = frame.sort_values("timestamp").groupby("user_id")["item"].agg(list)
    for role, position in (("test", -1), ("validation", -2)):
        got = getattr(split, role).set_index("user_id")["item"].to_dict()
        assert got == {user: items[position] for user, items in in_time_order.items()}
    # Every user of the synthetic set has 8 interactions: 6 train, 1 validation, 1 test.
    assert len(split.train) == 6 * len(split.test)
    seen = split.seen_before("test")
    assert all(t not in seen[u] for u, t in zip(split.test["user"], split.test["item"]))


def test_trained_model_beats_text_search_and_training_free_personalization(experiment, trained):
    whisperlite = summarize(rank_cases(WhisperLite(trained.model, experiment), experiment))
    text_only = summarize(rank_cases(TextOnly(experiment), experiment))
    history_mean = summarize(rank_cases(TextPlusHistoryMean(experiment), experiment))
    # The request names the type only: text search cannot tell the ~60 items of a type apart.
    assert text_only["recall@10"] < 0.3
    assert whisperlite["recall@10"] > text_only["recall@10"] + 0.25
    assert whisperlite["ndcg@10"] > history_mean["ndcg@10"]
    assert whisperlite["recall@10"] > history_mean["recall@10"]


def test_training_records_curves_and_stops_early(trained):
    history = trained.history
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert {"train_loss", "train_bce", "train_contrastive", "val_recall@10", "val_ndcg@10"} <= set(history[0])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = max(row["val_recall@10"] for row in history)
    assert trained.model.manifest["metrics"]["validation"]["recall@10"] == best
    assert len(history) < FAST.max_epochs or trained.best_epoch == FAST.max_epochs


def test_same_seed_same_model(experiment, trained):
    again = train_model(experiment, FAST, progress=False)
    query = experiment.test_queries[0]
    user = experiment.split.test["user_id"].iloc[0]
    np.testing.assert_array_equal(
        again.model.score(again.model.personalize(query, user), experiment.item_vectors),
        trained.model.score(trained.model.personalize(query, user), experiment.item_vectors),
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"negatives": ("random",)}, "negatives: unknown sampler"),
        ({"bce_weight": 0.0, "contrastive_weight": 0.0}, "not both 0"),
        ({"negatives": ()}, "BCE needs at least one negative sampler"),
        ({"user_table": "sometimes"}, "user_table: must be one of"),
    ],
)
def test_bad_config_is_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


@pytest.mark.parametrize("sampler", ["popularity", "in_batch", "hard"])
def test_every_negative_sampler_trains(experiment, sampler):
    config = FAST.replace(negatives=(sampler,), max_epochs=2, contrastive_sampled_negatives=sampler != "in_batch")
    result = train_model(experiment, config, progress=False)
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert result.model.manifest["config"]["train"]["negatives"] == [sampler]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_epoch_shards_partition_the_shuffled_examples(world):
    permutation = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    shards = [epoch_shard(permutation, rank, world) for rank in range(world)]
    assert len({len(shard) for shard in shards}) == 1  # same number of batches on every rank
    joined = torch.cat(shards).tolist()
    assert len(set(joined)) == len(joined)  # no example on two ranks
    assert len(permutation) - len(joined) < world
