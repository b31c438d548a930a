"""A model's SASRec sequence part: chosen on validation, fused with exact catalog-wide z-scores, saved and
served through the same personalize/score path (synthetic sequences where the next item is predictable)."""

import re

import numpy as np
import pytest
import torch

from tests.test_trainer_sequential import sequence_experiment
from whisperlite.core.personalization import PATH_RECENT, PATH_TEXT, PATH_USER, PersonalizationModel
from whisperlite.core.sequence import CANDIDATE_COUNTS, CANDIDATE_RECALL, SEQUENCE_WEIGHTS
from whisperlite.trainer.methods import WhisperLite, rank_cases, standardized
from whisperlite.trainer.metrics import summarize
from whisperlite.trainer.sequential import SASRecConfig, candidate_recall, fit_sequence_part
from whisperlite.trainer.train import TrainConfig, train_model

NETWORK = TrainConfig(hidden=32, max_epochs=2, taste="mean", loss_mix="given", validation_cases=0, sequence="off", device="cpu")
SEQUENCE = SASRecConfig(dimension=32, max_epochs=30, patience=3, batch_size=64, lr=5e-3, dropout=0.0, validation_cases=0, device="cpu")


@pytest.fixture(scope="module")
def experiment():
    return sequence_experiment()


@pytest.fixture(scope="module")
def fused(experiment):
    """The network alone, then with the sequence part fitted; returns (model, the fit's record, test metrics without it)."""
    model = train_model(experiment, NETWORK, progress=False).model
    alone = summarize(rank_cases(WhisperLite(model, experiment), experiment, "test"))
    record = fit_sequence_part(model, experiment, SEQUENCE)
    return model, record, alone


def test_validation_ships_the_sequence_part_where_the_sequence_decides(experiment, fused):
    model, record, alone = fused
    assert record["shipped"] and model.sequence is not None
    assert record["text_weight"] == 0.5  # the request says nothing here: the lowest text weight allowed wins
    assert [s["text_weight"] for s in record["selection"]] == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    test = summarize(rank_cases(WhisperLite(model, experiment), experiment, "test"))
    assert test["recall@10"] > alone["recall@10"] + 0.3  # 0.74 vs 0.22 when written


def test_the_candidate_count_is_the_smallest_whose_cosine_top_holds_the_fused_top_10(experiment, fused):
    """Measured on validation in training: the ranker searches this many by cosine for a fused request."""
    model, record, _ = fused
    recall = record["candidate_recall"]
    assert list(recall) == list(CANDIDATE_COUNTS) and all(0 <= r <= 1 for r in recall.values())
    assert list(recall.values()) == sorted(recall.values())  # deeper searches hold more
    chosen = record["candidates"]
    assert model.sequence.candidates == chosen
    assert recall[chosen] >= CANDIDATE_RECALL or chosen == CANDIDATE_COUNTS[-1]
    assert all(recall[n] < CANDIDATE_RECALL for n in CANDIDATE_COUNTS if n < chosen)
    assert recall[CANDIDATE_COUNTS[-1]] == 1.0  # 800 >= the 60-item catalog
    # Without a case to measure on, recall is unmeasured: no figure rather than 0.
    assert candidate_recall(WhisperLite(model, experiment), experiment, cases=0) == {}


def test_stored_users_states_are_the_network_s_over_their_sequences(experiment, fused):
    """A known user's request without recent items reads the stored state instead of running SASRec."""
    sequence = fused[0].sequence
    rows = np.arange(sequence.n_users)
    computed = sequence.states([sequence.sequence(int(r)) for r in rows])
    np.testing.assert_allclose(sequence.user_states(rows), computed, atol=1e-5)
    assert np.isnan(sequence.user_states(np.array([-1]))).all()


def test_fused_scores_equal_standardizing_over_the_whole_catalog(experiment, fused):
    """The moments stored with the model give exactly the z-scores a scan of every item gives."""
    model = fused[0]
    rows = np.array([model.user_row(u) for u in experiment.split.user_ids[:20]])
    queries = experiment.test_queries[:20]
    vectors = model.personalize_users(queries, rows)
    cosines = vectors @ experiment.item_vectors.T
    states = model.sequence_states(rows)
    item_rows = model.sequence.item_rows(experiment.dataset.items["item_id"].tolist())
    served = model.rank_scores(vectors, cosines, states, item_rows)
    logits = states @ model.sequence.network.items.weight[1:].detach().numpy().T
    weight = model.sequence.text_weight
    scanned = weight * standardized(cosines) + (1 - weight) * standardized(logits)
    np.testing.assert_allclose(served, scanned, atol=1e-4)


def test_scoring_at_several_text_weights_leaves_the_part_s_own_weight(experiment, fused):
    """The validation sweep of text weights scores each weight; the part keeps serving the one it had."""
    model = fused[0]
    method = WhisperLite(model, experiment)
    users, queries = np.arange(10), experiment.test_queries[:10]
    kept = model.sequence.text_weight
    before = method.scores(users, queries)
    swept = method.scores_at_text_weights(users, queries, [0.6, 1.0, None])
    assert model.sequence.text_weight == kept
    np.testing.assert_allclose(method.scores(users, queries), before)
    np.testing.assert_allclose(swept[None], before)
    assert not np.allclose(swept[0.6], swept[1.0])


def test_an_item_the_sequence_part_never_saw_scores_its_text_side_alone(experiment, fused):
    model = fused[0]
    user = experiment.split.user_ids[0]
    personalized = model.personalize(experiment.test_queries[0], user)
    ids = experiment.dataset.items["item_id"].tolist()
    known = model.score(personalized, experiment.item_vectors, ids)
    unseen = model.score(personalized, experiment.item_vectors, ["added-after-training"] * len(ids))
    # z(sequence) = 0 for every unseen item, so their order is the cosine's
    np.testing.assert_array_equal(np.argsort(-unseen, kind="stable"), np.argsort(-(experiment.item_vectors @ personalized.vector), kind="stable"))
    assert not np.allclose(known, unseen)
    with pytest.raises(ValueError, match="item_ids"):
        model.score(personalized, experiment.item_vectors)


def test_a_saved_model_loads_its_sequence_part_and_scores_the_same(experiment, fused, tmp_path):
    model = fused[0]
    model.save(tmp_path)
    loaded = PersonalizationModel.load(tmp_path)
    assert loaded.sequence is not None and loaded.sequence.text_weight == model.sequence.text_weight
    assert loaded.manifest["sequence"]["text_weight"] == model.sequence.text_weight
    assert loaded.sequence.candidates == model.sequence.candidates
    ids = experiment.dataset.items["item_id"].tolist()
    for user in experiment.split.user_ids[:5]:
        query = experiment.test_queries[0]
        np.testing.assert_allclose(
            loaded.score(loaded.personalize(query, user), experiment.item_vectors, ids),
            model.score(model.personalize(query, user), experiment.item_vectors, ids), atol=1e-5,
        )


def test_a_saved_sequence_part_with_a_nan_weight_does_not_load(fused, tmp_path):
    """A NaN in SASRec's weights changed only requests with recent items: the ranker's smoke scoring passed it and
    it went live. Every weight is checked at load."""
    fused[0].save(tmp_path)
    state = torch.load(tmp_path / SEQUENCE_WEIGHTS, weights_only=True)
    name = next(key for key, tensor in state.items() if tensor.is_floating_point() and tensor.dim() == 2 and "embedding" not in key)
    state[name][0, 0] = float("nan")
    torch.save(state, tmp_path / SEQUENCE_WEIGHTS)
    with pytest.raises(ValueError, match=rf"^{SEQUENCE_WEIGHTS}: {re.escape(name)} contains NaN or inf$"):
        PersonalizationModel.load(tmp_path)


def test_recent_item_ids_extend_the_sequence_and_make_a_stranger_s_sequence(experiment, fused):
    model = fused[0]
    query, ids = experiment.test_queries[0], experiment.dataset.items["item_id"].tolist()
    user = experiment.split.user_ids[0]
    stored = model.personalize(query, user)
    session = model.personalize(query, user, experiment.item_vectors[[3, 4]], ["i3", "i4"])
    assert stored.path == session.path == PATH_USER
    assert not np.allclose(stored.sequence_state, session.sequence_state)
    # After items 3 and 4 the walk goes on to item 5: the session's fused top item says so.
    assert ids[int(np.argmax(model.score(session, experiment.item_vectors, ids)))] == "i5"
    stranger = model.personalize(query, "never-seen", experiment.item_vectors[[3, 4]], ["i3", "i4"])
    assert stranger.path == PATH_RECENT and stranger.sequence_state is not None
    nobody = model.personalize(query, "never-seen")
    assert nobody.path == PATH_TEXT and nobody.sequence_state is None


def test_personalize_many_gives_the_states_personalize_gives(experiment, fused):
    model = fused[0]
    users = list(experiment.split.user_ids[:4]) + ["never-seen"]
    queries = np.tile(experiment.test_queries[:1], (len(users), 1))
    batch = model.personalize_many(queries, users)
    for user, many in zip(users, batch):
        one = model.personalize(queries[0], user)
        assert many.path == one.path
        if one.sequence_state is None:
            assert many.sequence_state is None
        else:
            np.testing.assert_allclose(many.sequence_state, one.sequence_state, atol=1e-5)


def test_auto_records_its_choice_and_ships_the_part_only_below_weight_one(experiment):
    """`auto` through train_model: SASRec trains within sequence_epochs, and the text weight kept is the validation's best."""
    model = train_model(experiment, NETWORK.replace(sequence="auto", sequence_epochs=1), progress=False).model
    record = model.manifest["metrics"]["sequence"]
    assert record["sasrec"]["epochs"] == 1
    best = max(s["validation"]["recall@10"] for s in record["selection"])
    chosen = next(s for s in record["selection"] if s["text_weight"] == record["text_weight"])
    if record["sign_test"] is not None and record["sign_test"]["p"] >= 0.05:  # the best fused weight's gain: chance
        assert record["text_weight"] == 1.0
    else:
        assert chosen["validation"]["recall@10"] == best
    assert record["shipped"] == (record["text_weight"] < 1.0) == (model.sequence is not None)


def test_no_sequence_part_without_two_train_items_in_order(caplog):
    """Users of three interactions keep one train item each: SASRec trained on nothing (loss 0), its random part won
    one validation case of 150, was shipped, and reordered every served answer."""
    experiment = sequence_experiment(n_users=150, length=3)
    with caplog.at_level("INFO", logger="whisperlite.trainer.train"):
        model = train_model(experiment, NETWORK.replace(sequence="auto"), progress=False).model
    assert model.sequence is None and "sequence" not in model.manifest["metrics"]
    assert "no sequence part: no user has two train items in order to learn from" in caplog.text


@pytest.mark.parametrize(("gained", "lost", "ships"), [(1, 0, False), (12, 8, False), (20, 2, True), (0, 0, False)])
def test_a_fused_weight_ships_only_when_its_validation_gain_is_beyond_chance(gained, lost, ships):
    from whisperlite.trainer.sequential import SHIP_SIGNIFICANCE, _sign_test

    fused = np.array([1] * gained + [0] * lost + [1, 0] * 50, dtype=np.float32)  # the ties count for neither
    alone = np.array([0] * gained + [1] * lost + [1, 0] * 50, dtype=np.float32)
    test = _sign_test(fused, alone)
    assert (test["gained"], test["lost"]) == (gained, lost)
    assert (test["p"] < SHIP_SIGNIFICANCE) == ships
