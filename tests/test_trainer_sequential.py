"""SASRec and the late-fusion hybrid on synthetic sequences where the next item is predictable (seconds)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from whisperlite.core.dataset import Dataset
from whisperlite.trainer.experiment import Experiment, history_means
from whisperlite.trainer.methods import LateFusion, Popularity, TextOnly, rank_cases, standardized
from whisperlite.trainer.metrics import summarize
from whisperlite.trainer.sequential import SASRec, SASRecConfig, left_padded, training_chunks
from whisperlite.trainer.split import temporal_split


def sequence_experiment(n_items: int = 60, n_users: int = 300, length: int = 8, seed: int = 0) -> Experiment:
    """Each user walks the catalog in order from a random start: item k is always followed by item k + 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for step in range(length):
            item = (start + step) % n_items
            rows.append({"user_id": f"u{u:03d}", "item_id": f"i{item}", "item": item, "timestamp": step, "request": "anything"})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": "", "text": "", "category": "", "image_path": ""})
    dataset = Dataset(name="sequences", directory=Path("."), items=items, interactions=pd.DataFrame(rows), info={}, data_hash="seq")
    split = temporal_split(dataset, min_interactions=3)
    vectors = rng.normal(size=(n_items, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = lambda frame: np.tile(vectors[:1], (len(frame), 1))  # noqa: E731 (the request carries no signal)
    return Experiment(
        dataset=dataset, split=split, encoder_name="none", item_vectors=vectors, train_queries=query(split.train),
        validation_queries=query(split.validation), test_queries=query(split.test),
        history_means=history_means(split, vectors), request_seed=0, simulated_share=0.0,
    )


@pytest.fixture(scope="module")
def experiment():
    return sequence_experiment()


@pytest.fixture(scope="module")
def sasrec(experiment):
    return SASRec(experiment, SASRecConfig(dimension=32, max_epochs=30, patience=3, batch_size=64, lr=5e-3, dropout=0.0))


def test_left_padding_keeps_the_newest_item_last_and_item_rows_shift_by_one():
    padded = left_padded([np.array([4, 5, 6]), np.array([], dtype=np.int64), np.arange(10)], 4)
    assert padded.tolist() == [[0, 5, 6, 7], [0, 0, 0, 0], [7, 8, 9, 10]]


def test_long_histories_train_on_every_item():
    inputs, targets = training_chunks([np.arange(12)], 5)
    pairs = {(int(a), int(b)) for x, y in zip(inputs, targets) for a, b in zip(x, y) if b > 0}
    assert pairs == {(k + 1, k + 2) for k in range(11)}  # every (item, next item) of the sequence, shifted rows


def test_sasrec_learns_a_predictable_next_item(experiment, sasrec):
    test = summarize(rank_cases(sasrec, experiment, "test"))
    chance = summarize(rank_cases(Popularity(experiment), experiment, "test"))
    assert test["recall@10"] > 0.9 > chance["recall@10"] + 0.5
    assert sasrec.validation["recall@10"] > 0.9 and sasrec.best_epoch >= 1


def test_hybrid_picks_the_informative_part_on_validation(experiment, sasrec):
    hybrid = LateFusion(TextOnly(experiment), sasrec, experiment)
    assert hybrid.weight <= 0.2  # the request says nothing here; the sequence says everything
    assert summarize(rank_cases(hybrid, experiment, "test"))["recall@10"] > 0.9


def test_standardized_rows_have_zero_mean_and_unit_spread():
    z = standardized(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(z[0].std(), 1, atol=1e-6)
    assert (z[1] == 0).all()


def test_a_large_catalogs_logits_are_made_a_slice_at_a_time_with_the_same_gradient(experiment, monkeypatch):
    """A batch's positions x items logits grow with the catalog (2.7 GB a batch at H&M's 105k articles): past a bound
    they are made and back-propagated in slices, which must give the gradient of the whole batch."""
    import torch

    from whisperlite.trainer import sequential

    sasrec = SASRec(experiment, SASRecConfig(max_epochs=1, validation_cases=50))
    sasrec.network.eval()  # no dropout: both passes see the same network
    x = torch.from_numpy(left_padded([np.arange(1, 9)] * 6, sasrec.config.max_length))
    targets = torch.arange(6 * 8) % experiment.dataset.n_items

    def gradients(logits_per_chunk: int) -> tuple[float, list[torch.Tensor]]:
        monkeypatch.setattr(sequential, "LOGITS_PER_CHUNK", logits_per_chunk)
        sasrec.network.zero_grad(set_to_none=True)
        hidden = sasrec.network(x)[x > 0]
        loss = sasrec._full_softmax_loss(hidden, targets)
        return float(loss), [p.grad.clone() for p in sasrec.network.parameters() if p.grad is not None]

    whole_loss, whole = gradients(10**9)
    sliced_loss, sliced = gradients(7 * experiment.dataset.n_items)  # 7 positions a slice: 7 slices for 48
    assert sliced_loss == pytest.approx(whole_loss, rel=1e-5)
    assert len(sliced) == len(whole)
    for a, b in zip(whole, sliced):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
