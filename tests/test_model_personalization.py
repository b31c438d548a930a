"""The personalization network and model artifact: paths, scoring, ANN compatibility, round trip."""

import json

import numpy as np
import pytest
import torch

from whisperlite.core.personalization import (
    PATH_RECENT,
    PATH_TEXT,
    PATH_USER,
    PersonalizationModel,
    PersonalizationNetwork,
    PersonalizedQuery,
    UserHistories,
)

DIM = 16


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _model(seed: int = 0, trained: bool = True, version: str = "toy-1", created: str = "2026-01-01T00:00:00+00:00"):
    torch.manual_seed(seed)
    network = PersonalizationNetwork(DIM, n_users=0, hidden=32, dropout=0.0)
    if trained:  # move the zero-initialized output layer off zero, as training does
        with torch.no_grad():
            network.fuse[-1].weight.normal_(0, 0.2)
            network.fuse[-1].bias.normal_(0, 0.05)
    rng = np.random.default_rng(seed)
    tastes = _unit(rng.normal(size=(3, DIM)))
    manifest = {
        "name": "toy",
        "version": version,
        "created": created,
        "encoder": "test-encoder",
        "dimension": DIM,
        "config": {"network": {"hidden": 32, "dropout": 0.0}},
    }
    return PersonalizationModel(network, ["alice", "bob", "carol"], tastes, manifest), tastes


@pytest.fixture
def vectors():
    rng = np.random.default_rng(1)
    return _unit(rng.normal(size=DIM)), _unit(rng.normal(size=(50, DIM)))


def test_untrained_network_starts_from_request_plus_taste(vectors):
    query, items = vectors
    model, tastes = _model(trained=False)
    pq = model.personalize(query, "bob")
    expected = _unit(query + 0.5 * tastes[1])
    np.testing.assert_allclose(pq.vector, expected, atol=1e-6)


def test_known_user_takes_the_user_embedding_path(vectors):
    query, _ = vectors
    model, tastes = _model()
    pq = model.personalize(query, "alice")
    assert pq.path == PATH_USER
    np.testing.assert_allclose(pq.taste, tastes[0], atol=1e-6)
    assert np.linalg.norm(pq.vector) == pytest.approx(1.0, abs=1e-5)
    assert model.knows_user("alice") and not model.knows_user("zed") and not model.knows_user(None)


def test_unknown_user_with_recent_items_gets_their_mean_taste(vectors):
    query, items = vectors
    model, _ = _model()
    pq = model.personalize(query, "zed", recent_item_vectors=items[:4])
    assert pq.path == PATH_RECENT
    np.testing.assert_allclose(pq.taste, _unit(items[:4].mean(axis=0)), atol=1e-6)
    assert pq.vector.dtype == np.float32 and np.linalg.norm(pq.vector) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("user_id, recent", [("zed", None), (None, None), ("zed", np.zeros((0, DIM), np.float32))])
def test_no_user_signal_never_errors_and_says_text_only(vectors, user_id, recent):
    query, items = vectors
    model, _ = _model()
    pq = model.personalize(query, user_id, recent_item_vectors=recent)
    assert pq.path == PATH_TEXT and pq.taste is None
    assert np.isfinite(model.score(pq, items)).all()


def test_bad_vectors_are_rejected_with_the_field_named(vectors):
    query, _ = vectors
    model, _ = _model()
    with pytest.raises(ValueError, match="query_vector: expected dimension 16"):
        model.personalize(np.ones(DIM + 1, np.float32), "alice")
    bad = query.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="query_vector: contains NaN"):
        model.personalize(bad, "alice")
    with pytest.raises(ValueError, match="recent_item_vectors"):
        model.personalize(query, "zed", recent_item_vectors=np.ones((2, DIM - 1), np.float32))


def test_score_is_monotone_in_cosine_so_ann_search_with_pq_vector_is_exact(vectors):
    query, items = vectors
    model, _ = _model()
    pq = model.personalize(query, "carol")
    scores = model.score(pq, items)
    cosine = items @ pq.vector
    assert np.array_equal(np.argsort(-scores, kind="stable"), np.argsort(-cosine, kind="stable"))
    scale = float(model.network.log_logit_scale.detach().exp())
    np.testing.assert_allclose(scores, scale * cosine + float(model.network.logit_bias.detach()), rtol=1e-5, atol=1e-5)


def test_batch_path_equals_single_path(vectors):
    _, items = vectors
    model, tastes = _model()
    rng = np.random.default_rng(2)
    queries = _unit(rng.normal(size=(3, DIM)))
    batch_tastes = np.stack([tastes[0], np.full(DIM, np.nan, np.float32), tastes[2]])
    batch = model.score(model.personalize_batch(queries, batch_tastes), items)
    single = np.stack(
        [model.score(model.personalize(q, u), items) for q, u in zip(queries, ["alice", "nobody", "carol"])]
    )
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_round_trip_through_the_model_directory(tmp_path, vectors):
    query, items = vectors
    model, _ = _model()
    model.save(tmp_path / "v1")
    loaded = PersonalizationModel.load(tmp_path / "v1")
    assert (loaded.version, loaded.encoder_name, loaded.dimension) == ("toy-1", "test-encoder", DIM)
    for user in ("alice", "zed"):
        np.testing.assert_array_equal(
            loaded.score(loaded.personalize(query, user, items[:2]), items),
            model.score(model.personalize(query, user, items[:2]), items),
        )
    assert json.loads((tmp_path / "v1" / "manifest.json").read_text())["version"] == "toy-1"


def test_loading_a_parent_directory_picks_the_newest_version(tmp_path):
    _model(version="toy-old", created="2026-01-01T00:00:00+00:00")[0].save(tmp_path / "b-old")
    _model(version="toy-new", created="2026-02-01T00:00:00+00:00")[0].save(tmp_path / "a-new")
    assert PersonalizationModel.load(tmp_path).version == "toy-new"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model version"):
        PersonalizationModel.load(tmp_path)


def test_personalized_query_is_a_plain_value():
    pq = PersonalizedQuery(vector=np.zeros(DIM, np.float32), taste=None, path=PATH_TEXT)
    with pytest.raises(AttributeError):
        pq.path = PATH_USER


def _attention_model(sharpness: float = 8.0, decay: float = 0.0, residuals: bool = False):
    """Three users with histories of 5, 0 and 40 items (the window reads the last 32)."""
    torch.manual_seed(0)
    network = PersonalizationNetwork(DIM, n_users=0, hidden=32, dropout=0.0, taste="attention", taste_window=32)
    with torch.no_grad():
        network.fuse[-1].weight.normal_(0, 0.2)
        network.attention_sharpness.fill_(sharpness)
        network.recency_decay.fill_(decay)
    rng = np.random.default_rng(3)
    catalog = _unit(rng.normal(size=(60, DIM)))
    sequences = [np.arange(5), np.zeros(0, dtype=np.int64), np.arange(10, 50)]
    histories = UserHistories.from_sequences(sequences, catalog)
    manifest = {"name": "toy", "version": "toy-att", "created": "2026-01-01T00:00:00+00:00", "encoder": "test-encoder",
                "dimension": DIM, "config": {"network": {"hidden": 32, "dropout": 0.0, "taste": "attention", "taste_window": 32}}}
    table = _unit(rng.normal(size=(3, DIM))) * 0.3 if residuals else None
    model = PersonalizationModel(network, ["alice", "bob", "carol"], np.zeros((3, DIM), np.float32), manifest,
                                 histories=histories, user_residuals=table)
    return model, catalog, sequences


def test_attention_taste_follows_the_history_item_the_request_is_about():
    model, catalog, sequences = _attention_model(sharpness=50.0)
    for item in sequences[0]:
        query = _unit(catalog[item] + 0.05 * np.random.default_rng(int(item)).normal(size=DIM))
        taste = model.personalize(query, "alice").taste
        assert int(np.argmax(catalog[sequences[0]] @ taste)) == item  # a sharp attention picks that item


def test_attention_at_zero_sharpness_and_decay_is_the_mean_of_the_window():
    model, catalog, sequences = _attention_model(sharpness=0.0)
    query = _unit(np.ones(DIM))
    np.testing.assert_allclose(model.personalize(query, "carol").taste, _unit(catalog[sequences[2][-32:]].mean(0)), atol=1e-5)


def test_recency_decay_favours_the_newest_items():
    model, catalog, sequences = _attention_model(sharpness=0.0, decay=3.0)
    taste = model.personalize(_unit(np.ones(DIM)), "carol").taste
    assert int(np.argmax(catalog[sequences[2]] @ taste)) == len(sequences[2]) - 1


@pytest.mark.parametrize("residuals", [False, True])
def test_attention_batch_path_equals_single_path(residuals):
    model, catalog, _ = _attention_model(residuals=residuals)
    queries = _unit(np.random.default_rng(5).normal(size=(4, DIM)))
    rows = np.array([0, 1, 2, -1])
    batch = model.score(model.personalize_users(queries, rows), catalog)
    single = np.stack([model.score(model.personalize(q, u), catalog) for q, u in zip(queries, ["alice", "bob", "carol", "zed"])])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert model.personalize(queries[1], "bob").path == PATH_USER  # known, with an empty history


@pytest.mark.parametrize("taste", ["attention", "mean"])
def test_recent_items_of_a_known_user_join_the_stored_history(taste):
    model, catalog, sequences = _attention_model()
    if taste == "mean":
        network = PersonalizationNetwork(DIM, n_users=0, hidden=32, dropout=0.0)
        means = _unit(np.stack([catalog[s].mean(0) if len(s) else np.ones(DIM) for s in sequences]))
        model = PersonalizationModel(network, model.user_ids, means, model.manifest, histories=model._histories)
    query, recent = _unit(np.ones(DIM)), catalog[55:58]
    joined = model.personalize(query, "alice", recent_item_vectors=recent)
    assert joined.path == PATH_USER
    np.testing.assert_allclose(joined.taste, model.taste_from_items(query, np.concatenate([catalog[sequences[0]], recent]), 0), atol=1e-6)
    assert not np.allclose(joined.taste, model.personalize(query, "alice").taste, atol=1e-3)


def test_histories_round_trip(tmp_path):
    model, catalog, _ = _attention_model(residuals=True)
    model.save(tmp_path / "v")
    loaded = PersonalizationModel.load(tmp_path / "v")
    assert loaded.taste_mode == "attention"
    query = _unit(np.ones(DIM))
    for user in ("alice", "bob", "carol", "zed"):
        np.testing.assert_array_equal(
            loaded.score(loaded.personalize(query, user, catalog[:2]), catalog), model.score(model.personalize(query, user, catalog[:2]), catalog)
        )


def test_request_only_model_ignores_every_user_signal():
    network = PersonalizationNetwork(DIM, n_users=0, hidden=32, dropout=0.0, taste="none")
    manifest = {"name": "toy", "version": "toy-none", "created": "", "encoder": "test-encoder", "dimension": DIM,
                "config": {"network": {"taste": "none"}}}
    model = PersonalizationModel(network, ["alice"], np.zeros((1, DIM), np.float32), manifest)
    pq = model.personalize(_unit(np.ones(DIM)), "alice", recent_item_vectors=_unit(np.eye(DIM)[:2]))
    assert pq.path == PATH_TEXT and pq.taste is None


@pytest.mark.parametrize("kind", ["mean", "attention", "none"])
def test_personalize_many_answers_as_personalize_does_one_request_at_a_time(kind):
    if kind == "attention":
        model, _, _ = _attention_model(residuals=True)
    elif kind == "mean":
        model, _ = _model()
    else:
        network = PersonalizationNetwork(DIM, n_users=0, hidden=32, dropout=0.0, taste="none")
        model = PersonalizationModel(network, ["alice"], np.zeros((1, DIM), np.float32), {"version": "toy-none", "dimension": DIM})
    queries = _unit(np.random.default_rng(9).normal(size=(5, DIM)))
    users = ["alice", "nobody", "carol", None, "alice"]
    batch = model.personalize_many(queries, users)
    for query, user, together in zip(queries, users, batch, strict=True):
        alone = model.personalize(query, user)
        assert together.path == alone.path
        np.testing.assert_allclose(together.vector, alone.vector, atol=1e-6)
        assert (together.taste is None) == (alone.taste is None)
        if alone.taste is not None:
            np.testing.assert_allclose(together.taste, alone.taste, atol=1e-6)
    assert {pq.path for pq in batch} == ({PATH_TEXT} if kind == "none" else {PATH_USER, PATH_TEXT})
