"""Training on a synthetic dataset with a planted user taste (seconds, no encoder)."""

import numpy as np
import pytest
import torch

from tests.fixtures_model import synthetic_experiment
from whisperlite.trainer.methods import TextOnly, TextPlusHistoryMean, WhisperLite, rank_cases
from whisperlite.trainer.metrics import summarize
from whisperlite.trainer.train import TrainConfig, calibrated_logit_bias, candidate_configs, epoch_shard, train_model, training_windows

FAST = TrainConfig(batch_size=64, lr=5e-3, max_epochs=12, patience=3, user_table="off", taste="mean", loss_mix="given")


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
        ({"taste": "median"}, "taste: must be one of"),
        ({"loss_mix": "half"}, "loss_mix: must be one of"),
        ({"taste_window": 0}, "taste_window: must be at least 1"),
        ({"bias_init": "random"}, "bias_init: must be one of"),
        ({"max_epochs": 0}, "max_epochs: must be at least 1, got 0"),
        ({"batch_size": -5}, "batch_size: must be at least 1, got -5"),
        ({"lr": float("nan")}, "lr: must be a finite number, got nan"),
        ({"temperature": 0.0}, "temperature: must be > 0, got 0.0"),
        ({"validation_cases": -1}, "validation_cases: must be >= 0, got -1"),
        ({"no_user_rate": 1.5}, "no_user_rate: must be between 0 and 1, got 1.5"),
        ({"weight_decay": float("inf")}, "weight_decay: must be a finite number, got inf"),
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


def test_training_windows_are_the_nearest_other_items_of_the_same_user():
    users = np.array([0, 0, 0, 0, 0, 1, 1])
    items = np.array([10, 11, 12, 13, 14, 20, 21])
    windows, distances = training_windows(users, items, window=3)
    assert windows[0].tolist() == [11, 12, 13] and distances[0].tolist() == [1, 2, 3]
    assert windows[2].tolist() == [11, 13, 10] and distances[2].tolist() == [1, 1, 2]  # the earlier one first on ties
    assert windows[5].tolist() == [21, -1, -1]  # never the target itself, never another user's items
    assert all(items[r] not in windows[r] for r in range(len(items)))


def test_auto_settings_expand_to_candidates():
    labels = set(candidate_configs(TrainConfig(taste="auto", loss_mix="auto", user_table="off")))
    assert labels == {f"taste={t} loss={l} user_table=off" for t in ("mean", "attention", "none") for l in ("composite", "infonce")}
    infonce = candidate_configs(TrainConfig(taste="mean"))["taste=mean loss=infonce user_table=off"]
    assert (infonce.bce_weight, infonce.loss_mix) == (0.0, "given")
    assert list(candidate_configs(TrainConfig(taste="none", user_table="auto", loss_mix="given"))) == ["taste=none loss=given user_table=off"]


def test_attention_taste_trains_and_auto_keeps_the_validation_winner(experiment):
    result = train_model(experiment, FAST.replace(taste="auto", max_epochs=4, select_epochs=2), progress=False)
    selection = result.model.manifest["metrics"]["selection"]
    recalls = {label: c["validation_recall@10"] for label, c in selection["candidates"].items()}
    assert selection["chosen"] == max(recalls, key=recalls.get)
    chosen_taste = selection["chosen"].split()[0].removeprefix("taste=")
    assert result.model.taste_mode == chosen_taste == result.model.manifest["config"]["train"]["taste"]
    attention = train_model(experiment, FAST.replace(taste="attention", max_epochs=4), progress=False)
    assert attention.model.manifest["config"]["network"]["taste"] == "attention"
    text_only = summarize(rank_cases(TextOnly(experiment), experiment, "validation"))
    assert attention.model.manifest["metrics"]["validation"]["recall@10"] > text_only["recall@10"] + 0.2


def test_calibrated_bias_puts_a_random_request_item_pair_at_logit_zero(experiment):
    bias = calibrated_logit_bias(experiment, logit_scale=20.0, seed=0, pairs=50000)
    rng = np.random.default_rng(1)
    queries = experiment.train_queries[rng.integers(0, len(experiment.train_queries), 50000)]
    items = experiment.item_vectors[rng.integers(0, len(experiment.item_vectors), 50000)]
    assert abs(20.0 * np.einsum("nd,nd->n", queries, items).mean() + bias) < 0.2
