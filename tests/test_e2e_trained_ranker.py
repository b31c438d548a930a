"""A trained model served by the ranker: known users are personalized, and online scores equal offline ones.

The model ships a SASRec sequence part (`--sequence on`), so known users' scores are the fused ones: not in
the catalog's cosine order, and some chosen items come from past the candidates the catalog sends in full."""

import asyncio
import subprocess
import sys

import grpc
import numpy as np
import pandas as pd
import pytest

from tests.servers import REPO, start_catalog, start_service
from whisperlite.core.dataset import load_dataset
from whisperlite.trainer.embeddings import EmbeddingCache
from whisperlite.trainer.evaluate import score_items
from whisperlite.trainer.split import temporal_split
from whisperlite.shell.ingest import ingest
from whisperlite.core.personalization import TASTE_NONE, PersonalizationModel
from whisperlite.v1 import ranker_pb2, ranker_pb2_grpc

QUERY = "women's black leather boots"


@pytest.fixture(scope="module")
def subset(tmp_path_factory, prepared):
    """The 150 most active users of amazon_clothing_2014_msl and the items they touched."""
    amazon = prepared("amazon_clothing_2014_msl")
    users = amazon.interactions["user_id"].value_counts().index[:150]
    interactions = amazon.interactions[amazon.interactions["user_id"].isin(users)]
    items = amazon.items[amazon.items["item_id"].isin(interactions["item_id"])]
    directory = tmp_path_factory.mktemp("amazon-subset")
    items.to_csv(directory / "items.csv", index=False)
    interactions.to_csv(directory / "interactions.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def train_items(subset):
    """Each user's train items as `evaluate` splits them: what it leaves out of their ranking, and the ranker too."""
    dataset = load_dataset(subset)
    split = temporal_split(dataset)
    item_ids = dataset.items["item_id"].astype(str).to_numpy()
    return {user: set(item_ids[rows]) for user, rows in zip(split.user_ids, split.history, strict=True)}


def _top(scores: np.ndarray, item_ids: list[str], leave_out: set[str] = frozenset(), k: int = 10) -> np.ndarray:
    """The rows of the k best scores, `leave_out` excluded: evaluate's ranking."""
    return np.argsort(-np.where(np.isin(item_ids, list(leave_out)), -np.inf, scores), kind="stable")[:k]


@pytest.fixture(scope="module")
def embedding_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


def train(subset, embedding_cache_dir, models, *flags: str):
    """`whisperlite train` on the subset with a sequence part (`--sequence on`), as a user runs it."""
    subprocess.run(
        [sys.executable, "-m", "whisperlite", "train", "--data", str(subset), "--out", str(models), *flags,
         "--loss-mix", "given", "--sequence", "on", "--sequence-epochs", "3", "--cache-dir", str(embedding_cache_dir), "--quiet"],
        cwd=REPO, check=True, timeout=900,
    )
    return models


@pytest.fixture(scope="module")
def model_dir(subset, embedding_cache_dir, tmp_path_factory):
    # The attention taste: its history windows are gathered from the model directory at serving time.
    return train(subset, embedding_cache_dir, tmp_path_factory.mktemp("models"), "--max-epochs", "3", "--taste", "attention")


@pytest.fixture(scope="module")
def sequence_only_model_dir(subset, embedding_cache_dir, tmp_path_factory):
    """No taste at all: the user signal is the sequence part alone, which reads recent items by id."""
    return train(subset, embedding_cache_dir, tmp_path_factory.mktemp("sequence-only-models"), "--max-epochs", "1", "--taste", "none")


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def catalog_process(subset, encoder_service, logs, tmp_path_factory):
    catalog = start_catalog(logs, tmp_path_factory.mktemp("catalog"), encoder_service.address)
    ingest(subset, catalog.address)
    yield catalog
    catalog.stop()


def serve_ranker(logs, model_dir, encoder_service, catalog_process):
    # --candidates 10: a fused request's candidates past the cosine's best 10 come as ids, so a fused top 10
    # reaching past them makes the ranker fetch those items (the default, 50, rarely needs to on this data).
    return start_service(
        "ranker", logs, "--model-dir", str(model_dir), "--query-encoder-addr", encoder_service.address,
        "--catalog-addr", catalog_process.address, "--candidates", "10",
    )


@pytest.fixture(scope="module")
def ranker_process(model_dir, encoder_service, catalog_process, logs):
    ranker = serve_ranker(logs, model_dir, encoder_service, catalog_process)
    yield ranker
    ranker.stop()


@pytest.fixture(scope="module")
def trained_ranker(ranker_process):
    with grpc.insecure_channel(ranker_process.address) as channel:
        yield ranker_pb2_grpc.RankerServiceStub(channel)


@pytest.fixture(scope="module")
def model(model_dir):
    return PersonalizationModel.load(model_dir)


def test_known_user_is_served_from_the_trained_model(trained_ranker, model, subset):
    user = next(u for u in _subset_users(subset) if model.knows_user(u))
    response = trained_ranker.Recommend(ranker_pb2.RecommendRequest(user_id=user, query=QUERY, top_k=10), timeout=30)
    assert response.path == ranker_pb2.PERSONALIZATION_PATH_USER_EMBEDDING
    assert response.model_version == model.version
    assert len(response.items) == 10
    assert all(r.personal_affinity != 0.0 for r in response.items)
    assert [r.score for r in response.items] == sorted((r.score for r in response.items), reverse=True)


def test_unknown_user_with_recent_items_uses_the_model_taste_path(trained_ranker, subset):
    recent = _subset_items(subset)[:3]
    response = trained_ranker.Recommend(
        ranker_pb2.RecommendRequest(user_id="never-seen", query=QUERY, top_k=5, recent_item_ids=recent), timeout=30
    )
    assert response.path == ranker_pb2.PERSONALIZATION_PATH_RECENT_ITEMS
    no_evidence = trained_ranker.Recommend(ranker_pb2.RecommendRequest(user_id="never-seen", query=QUERY, top_k=5), timeout=30)
    assert no_evidence.path == ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY


def test_online_scores_equal_offline_evaluation_scores(trained_ranker, model, subset, embedding_cache_dir, train_items):
    """The ranker over gRPC and `evaluate`'s scoring path give the same ranking and scores, the user's train items
    excluded from both (include_history_items keeps them in both). Besides QUERY, each user asks for the title of one
    of their own train items (the reviewer's case: "skirt" from a user who bought skirts)."""
    items = pd.read_csv(subset / "items.csv", dtype=str, keep_default_na=False)
    cache = EmbeddingCache(cache_dir=embedding_cache_dir)
    item_vectors = cache.items(items)
    item_ids = items["item_id"].tolist()
    titles = dict(zip(item_ids, items["title"]))
    users = [u for u in _subset_users(subset) if model.knows_user(u)][:5]
    queries = [(user, query) for user in users for query in (QUERY, titles[min(train_items[user])])]
    query_vectors = cache.encoder.encode_texts([query for _, query in queries])
    reordered = history_served_before = 0
    assert model.sequence is not None
    for (user, query), query_vector in zip(queries, query_vectors, strict=True):
        personalized = model.personalize(query_vector, user)
        offline = score_items(model, query_vector, user, item_vectors, item_ids=item_ids)
        for include_history, leave_out in ((False, train_items[user]), (True, set())):
            order = _top(offline, item_ids, leave_out)
            response = trained_ranker.Recommend(
                ranker_pb2.RecommendRequest(user_id=user, query=query, top_k=10, include_history_items=include_history), timeout=30,
            )
            online_ids = [r.item.item_id for r in response.items]
            assert online_ids == items["item_id"].to_numpy()[order].tolist()
            np.testing.assert_allclose([r.score for r in response.items], offline[order], atol=1e-3)
            by_cosine = set(_top(item_vectors @ personalized.vector, item_ids, leave_out))
            reordered += len(set(order) - by_cosine)
        history_served_before += bool(set(online_ids) & train_items[user])  # what the ranker served before by default
    assert reordered > 0  # the fusion chose items the catalog sent without their vector: the ranker fetched them
    assert history_served_before > 0  # for these requests the default answer now differs from the old one, and is evaluate's


def test_recent_items_of_a_known_user_join_their_history_over_grpc(trained_ranker, model, subset, embedding_cache_dir, train_items):
    """A known user's recent_item_ids (most recent last) join the stored history: the ranker's scores equal
    the offline scores of that joined history and differ from the scores without the recent items."""
    items = pd.read_csv(subset / "items.csv", dtype=str, keep_default_na=False)
    cache = EmbeddingCache(cache_dir=embedding_cache_dir)
    item_vectors = cache.items(items)
    query_vector = cache.encoder.encode_texts([QUERY])[0]
    user = next(u for u in _subset_users(subset) if model.knows_user(u))
    recent = [0, 1, 2]  # catalog rows the user is sent as a session
    item_ids, recent_ids = items["item_id"].tolist(), items["item_id"].iloc[recent].tolist()
    offline = score_items(model, query_vector, user, item_vectors, recent_item_vectors=item_vectors[recent], item_ids=item_ids,
                          recent_item_ids=recent_ids)
    order = _top(offline, item_ids, train_items[user])  # the session's items are views, not left out
    response = trained_ranker.Recommend(
        ranker_pb2.RecommendRequest(user_id=user, query=QUERY, top_k=10, recent_item_ids=recent_ids), timeout=30,
    )
    assert response.path == ranker_pb2.PERSONALIZATION_PATH_USER_EMBEDDING
    assert [r.item.item_id for r in response.items] == items["item_id"].to_numpy()[order].tolist()
    np.testing.assert_allclose([r.score for r in response.items], offline[order], atol=1e-3)
    without = score_items(model, query_vector, user, item_vectors, item_ids=item_ids)
    assert np.abs(without - offline).max() > 1e-2  # the session changed the taste


def test_a_session_that_returns_to_an_item_keeps_its_order_and_repeats_over_grpc(trained_ranker, model, subset, embedding_cache_dir, train_items):
    """recent_item_ids ("c", "a", "c"): "c" is the newest item and counts twice. The catalog answers each id once, in
    its own order; the ranker used to build the session from that answer ("c", "a" or "a", "c")."""
    items = pd.read_csv(subset / "items.csv", dtype=str, keep_default_na=False)
    cache = EmbeddingCache(cache_dir=embedding_cache_dir)
    item_vectors = cache.items(items)
    query_vector = cache.encoder.encode_texts([QUERY])[0]
    user = next(u for u in _subset_users(subset) if model.knows_user(u))
    item_ids = items["item_id"].tolist()
    session = [5, 0, 5]

    def offline(rows: list[int]) -> np.ndarray:
        return score_items(model, query_vector, user, item_vectors, recent_item_vectors=item_vectors[rows], item_ids=item_ids,
                           recent_item_ids=[item_ids[row] for row in rows])

    expected = offline(session)
    for collapsed in ([5, 0], [0, 5]):
        assert np.abs(offline(collapsed) - expected).max() > 1e-3  # what the collapsed session would have scored differs
    order = _top(expected, item_ids, train_items[user])
    response = trained_ranker.Recommend(
        ranker_pb2.RecommendRequest(user_id=user, query=QUERY, top_k=10, recent_item_ids=[item_ids[row] for row in session]), timeout=30,
    )
    assert [r.item.item_id for r in response.items] == np.asarray(item_ids)[order].tolist()
    np.testing.assert_allclose([r.score for r in response.items], expected[order], atol=1e-3)


def test_a_model_without_a_taste_reads_recent_items_through_its_sequence_part_over_grpc(
    sequence_only_model_dir, encoder_service, catalog_process, logs, subset, embedding_cache_dir, train_items,
):
    """With no taste, recent_item_ids reach the model as ids (its SASRec state), for known and unknown users alike."""
    model = PersonalizationModel.load(sequence_only_model_dir)
    assert model.taste_mode == TASTE_NONE and model.sequence is not None
    items = pd.read_csv(subset / "items.csv", dtype=str, keep_default_na=False)
    cache = EmbeddingCache(cache_dir=embedding_cache_dir)
    item_vectors = cache.items(items)
    query_vector = cache.encoder.encode_texts([QUERY])[0]
    item_ids = items["item_id"].tolist()
    known = next(u for u in _subset_users(subset) if model.knows_user(u))
    recent_ids = items["item_id"].iloc[[3, 4, 5]].tolist()
    ranker = serve_ranker(logs, sequence_only_model_dir, encoder_service, catalog_process)
    try:
        with grpc.insecure_channel(ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            for user, path in ((known, ranker_pb2.PERSONALIZATION_PATH_USER_EMBEDDING), ("never-seen", ranker_pb2.PERSONALIZATION_PATH_RECENT_ITEMS)):
                offline = score_items(model, query_vector, user, item_vectors, item_ids=item_ids, recent_item_ids=recent_ids)
                order = _top(offline, item_ids, train_items.get(user, set()))  # a model without a taste leaves them out too
                response = stub.Recommend(
                    ranker_pb2.RecommendRequest(user_id=user, query=QUERY, top_k=10, recent_item_ids=recent_ids), timeout=30,
                )
                assert response.path == path and response.model_version == model.version
                assert [r.item.item_id for r in response.items] == items["item_id"].to_numpy()[order].tolist()
                np.testing.assert_allclose([r.score for r in response.items], offline[order], atol=1e-3)
                assert all(r.personal_affinity == 0.0 for r in response.items)  # no taste to be near
                without = score_items(model, query_vector, user, item_vectors, item_ids=item_ids)
                assert np.abs(without - offline).max() > 1e-2  # the recent items changed the sequence state
            alone = stub.Recommend(ranker_pb2.RecommendRequest(user_id="never-seen", query=QUERY, top_k=5), timeout=30)
            assert alone.path == ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY
    finally:
        ranker.stop()


def test_concurrent_recommends_are_personalized_together_and_answer_as_one_at_a_time(trained_ranker, ranker_process, model, subset):
    """Concurrent Recommends share Embed, personalization and search batches; each answer equals its own call alone."""
    users = [u for u in _subset_users(subset) if model.knows_user(u)][:6] + ["stranger-1", "stranger-2"]
    queries = [QUERY, "a silver necklace", "running shoes for men", "a warm wool coat"]
    requests = [ranker_pb2.RecommendRequest(user_id=user, query=queries[i % len(queries)], top_k=8) for i, user in enumerate(users)]
    alone = [trained_ranker.Recommend(request, timeout=30) for request in requests]

    async def together():
        async with grpc.aio.insecure_channel(ranker_process.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            return await asyncio.gather(*(stub.Recommend(request, timeout=30) for request in requests * 3))

    for response, expected in zip(asyncio.run(together()), alone * 3, strict=True):
        assert response.path == expected.path
        assert [r.item.item_id for r in response.items] == [r.item.item_id for r in expected.items]
        np.testing.assert_allclose([r.score for r in response.items], [r.score for r in expected.items], atol=1e-5)
        np.testing.assert_allclose(
            [r.personal_affinity for r in response.items], [r.personal_affinity for r in expected.items], atol=1e-5
        )
    assert {response.path for response in alone} == {
        ranker_pb2.PERSONALIZATION_PATH_USER_EMBEDDING, ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY
    }


def _subset_users(subset) -> list[str]:
    return pd.read_csv(subset / "interactions.csv", dtype=str)["user_id"].drop_duplicates().tolist()


def _subset_items(subset) -> list[str]:
    return pd.read_csv(subset / "items.csv", dtype=str)["item_id"].tolist()
