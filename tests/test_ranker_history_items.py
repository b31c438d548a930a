"""A known user's own history items (what the model was trained on as theirs) are left out of the ranker's answer
by default, as `whisperlite evaluate` ranks; `include_history_items` keeps them; a model exported before it named
its history items serves as before. Real ranker, catalog and encoder on loopback, a tiny trained model."""

import json
import logging
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest

from tests.fixtures_model import synthetic_experiment, train_tiny_version
from tests.servers import REPO, start_catalog, start_service
from whisperlite.core.personalization import HISTORY_ITEM_IDS, MAX_USER_ID_JSON_BYTES, PersonalizationModel
from whisperlite.services.gateway.schema import RecommendRequest, to_proto
from whisperlite.trainer.evaluate import score_items
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, query_encoder_pb2, query_encoder_pb2_grpc, ranker_pb2, ranker_pb2_grpc

SEED = 1
QUERY = "something for the weekend"
TOP_K = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory, encoder_service):
    """The synthetic catalog (its own vectors) in a real catalog; a tiny model trained on it; a ranker on that model
    and one on a copy without history_item_ids.json (a version exported before the file existed)."""
    root = tmp_path_factory.mktemp("history-items")
    with grpc.insecure_channel(encoder_service.address) as channel:
        encoder = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        info = encoder.GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=30)
        query_vector = np.array(encoder.Embed(query_encoder_pb2.EmbedRequest(texts=[QUERY]), timeout=60).text_vectors[0].values, np.float32)
    experiment = synthetic_experiment(seed=SEED, dim=info.dimension)
    with_ids = train_tiny_version(root / "models", info.model_name, info.dimension, seed=SEED)
    without_ids = shutil.copytree(with_ids, root / "old-models" / with_ids.name)
    (without_ids / HISTORY_ITEM_IDS).unlink()

    catalog = start_catalog(root / "logs", root / "catalog", encoder_service.address)
    items = [
        common_pb2.Item(item_id=item_id, title=title, vector=vector.tolist())
        for item_id, title, vector in zip(experiment.dataset.items["item_id"], experiment.dataset.items["title"], experiment.item_vectors)
    ]
    with grpc.insecure_channel(catalog.address) as channel:
        catalog_pb2_grpc.CatalogServiceStub(channel).UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=300)
    rankers = {
        name: start_service("ranker", root / "logs", "--model-dir", str(directory.parent), "--query-encoder-addr", encoder_service.address,
                            "--catalog-addr", catalog.address)
        for name, directory in (("current", with_ids), ("old", without_ids))
    }
    channels = {name: grpc.insecure_channel(ranker.address) for name, ranker in rankers.items()}
    yield {
        "experiment": experiment, "query_vector": query_vector, "model": PersonalizationModel.load(with_ids), "version": with_ids,
        "rankers": rankers, "stubs": {name: ranker_pb2_grpc.RankerServiceStub(channel) for name, channel in channels.items()},
    }
    for channel in channels.values():
        channel.close()
    for ranker in rankers.values():
        ranker.stop()
    catalog.stop()


def _train_items(experiment, user: str) -> set[str]:
    """The user's train items, from the split itself (what evaluate leaves out), not from the model's files."""
    row = experiment.split.user_ids.index(user)
    return {f"i{item}" for item in experiment.split.history[row]}


def _offline_top(stack, user: str, leave_out: set[str]) -> list[str]:
    """`evaluate`'s ranking of the whole catalog for this request, `leave_out` excluded."""
    experiment = stack["experiment"]
    item_ids = experiment.dataset.items["item_id"].tolist()
    scores = score_items(stack["model"], stack["query_vector"], user, experiment.item_vectors, item_ids=item_ids)
    scores[[i for i, item_id in enumerate(item_ids) if item_id in leave_out]] = -np.inf
    return [item_ids[i] for i in np.argsort(-scores, kind="stable")[:TOP_K]]


def _served(stub, user: str, **fields) -> list[str]:
    response = stub.Recommend(ranker_pb2.RecommendRequest(user_id=user, query=QUERY, top_k=TOP_K, **fields), timeout=30)
    return [scored.item.item_id for scored in response.items]


def _users_with_history_in_their_top(stack) -> list[str]:
    """Known users whose unfiltered top items hold some of their own train items: the case the old ranker got wrong."""
    experiment = stack["experiment"]
    users = [user for user in experiment.split.user_ids[:40] if set(_offline_top(stack, user, set())) & _train_items(experiment, user)]
    assert len(users) >= 3  # the taste pulls a user's own items up: the check below is not vacuous
    return users[:5]


def test_a_known_users_history_items_are_left_out_and_the_ranking_is_evaluates(stack):
    experiment = stack["experiment"]
    for user in _users_with_history_in_their_top(stack):
        history = _train_items(experiment, user)
        served = _served(stack["stubs"]["current"], user)
        assert not set(served) & history
        # The served top_k is evaluate's (train items excluded), so the offline metrics measure what users get; the
        # history items took detailed hits, so the ranker fetched the items that replaced them.
        assert served == _offline_top(stack, user, history)


def test_include_history_items_keeps_them(stack):
    experiment = stack["experiment"]
    for user in _users_with_history_in_their_top(stack):
        served = _served(stack["stubs"]["current"], user, include_history_items=True)
        assert served == _offline_top(stack, user, set())
        assert set(served) & _train_items(experiment, user)


def test_recent_items_and_unknown_users_are_not_left_out(stack):
    """Session items are views, not purchases: they may come back; a user the model does not know has no history."""
    experiment = stack["experiment"]
    user = _users_with_history_in_their_top(stack)[0]
    top_unfiltered = _offline_top(stack, user, set())
    stranger = _served(stack["stubs"]["current"], "never-seen")
    assert stranger == _offline_top(stack, "never-seen", set())
    recent = [item for item in top_unfiltered if item not in _train_items(experiment, user)][:2]
    response = stack["stubs"]["current"].Recommend(
        ranker_pb2.RecommendRequest(user_id="never-seen", query=QUERY, top_k=TOP_K, recent_item_ids=recent), timeout=30
    )
    assert response.path == ranker_pb2.PERSONALIZATION_PATH_RECENT_ITEMS
    served_ids = _served(stack["stubs"]["current"], user, recent_item_ids=recent)
    assert not set(served_ids) & _train_items(experiment, user)


def test_a_model_without_history_item_ids_serves_as_before(stack):
    user = _users_with_history_in_their_top(stack)[0]
    assert _served(stack["stubs"]["old"], user) == _offline_top(stack, user, set())
    assert stack["rankers"]["old"].log().count("names no history items") == 1
    assert "names no history items" not in stack["rankers"]["current"].log()


def test_the_history_item_ids_file_is_checked_at_load(stack, tmp_path, caplog):
    version = tmp_path / "version"
    shutil.copytree(stack["version"], version)
    ids = json.loads((version / HISTORY_ITEM_IDS).read_text())
    assert PersonalizationModel.load(version).history_item_ids(stack["experiment"].split.user_ids[0])
    for broken, message in (
        (json.dumps(ids[:-1]), f"expected {len(ids)} item ids"),
        (json.dumps([*ids[:-1], 7]), "must be a JSON list of item ids"),
        (json.dumps({"ids": ids}), "must be a JSON list of item ids"),
        ("[\"i1\", ", "not valid JSON"),
        ("[" + " " * (len(ids) * MAX_USER_ID_JSON_BYTES + 1) + "]", "is more than"),  # refused unread
    ):
        (version / HISTORY_ITEM_IDS).write_text(broken)
        with pytest.raises(ValueError, match=message):
            PersonalizationModel.load(version)
    (version / HISTORY_ITEM_IDS).unlink()
    with caplog.at_level(logging.WARNING, logger="whisperlite.model"):
        old = PersonalizationModel.load(version)
    assert old.history_item_ids(stack["experiment"].split.user_ids[0]) == frozenset()
    assert [record.message for record in caplog.records].count(
        "the model names no history items: users' own history items are not left out of their results") == 1


def test_the_cli_and_the_gateway_body_carry_the_flag(stack):
    """`whisperlite recommend --include-history` (through RankerClient) and the gateway's JSON field reach the ranker."""
    user = _users_with_history_in_their_top(stack)[0]
    address = stack["rankers"]["current"].address

    def cli(*flags: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-m", "whisperlite", "recommend", "--ranker", address, "--user", user, "--query", QUERY,
             "-k", str(TOP_K), "--json", *flags],
            cwd=REPO, check=True, capture_output=True, text=True, timeout=120,
        ).stdout
        return [scored["item"]["item_id"] for scored in json.loads(out)["items"]]

    assert cli() == _served(stack["stubs"]["current"], user)
    assert cli("--include-history") == _served(stack["stubs"]["current"], user, include_history_items=True)
    assert to_proto(RecommendRequest(user_id=user, query=QUERY, top_k=TOP_K, include_history_items=True)).include_history_items
    assert not to_proto(RecommendRequest(user_id=user, query=QUERY, top_k=TOP_K)).include_history_items
