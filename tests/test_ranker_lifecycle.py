"""Model lifecycle on a real ranker: a version dropped into --model-dir under continuous load, a broken
version refused, rollback from the CLI, canary and shadow traffic, and the per-version metrics."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures_model import train_tiny_version
from tests.servers import REPO, start_catalog, start_service
from whisperlite.core.model_versions import MANIFEST
from whisperlite.core.personalization import WEIGHTS, PersonalizationModel
from whisperlite.services.ranker.models import user_bucket
from whisperlite.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    model_admin_pb2,
    model_admin_pb2_grpc,
    query_encoder_pb2,
    query_encoder_pb2_grpc,
    ranker_pb2,
    ranker_pb2_grpc,
)

QUERIES = ["black leather boots", "a light summer dress", "men's watch"]
KNOWN_USERS = [f"u{i}" for i in range(8)]  # in the synthetic training data of every version
USERS = [*KNOWN_USERS, "someone-new"]
WORKERS = 4
COLOURS = ["black", "red", "navy", "white", "olive"]
MATERIALS = ["leather", "cotton", "linen", "wool", "silk", "denim"]
KINDS = ["boots", "summer dress", "watch", "jacket", "sneakers"]  # 5 x 6 x 5 = 150 catalog items


@pytest.fixture(scope="module")
def stack(tmp_path_factory, encoder_service):
    """A catalog of 150 items, two trained versions (the second kept aside), a ranker polling every 0.5 s."""
    root = tmp_path_factory.mktemp("lifecycle")
    with grpc.insecure_channel(encoder_service.address) as channel:
        encoder = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
        info = encoder.GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=30)
        embedded = encoder.Embed(query_encoder_pb2.EmbedRequest(texts=QUERIES), timeout=60).text_vectors
    query_vectors = {q: np.array(v.values, dtype=np.float32) for q, v in zip(QUERIES, embedded)}
    staging, models = root / "staging", root / "models"
    models.mkdir()
    old, new = (train_tiny_version(staging, info.model_name, info.dimension, seed=seed) for seed in (1, 2))
    old = old.rename(models / old.name)
    # Two short trainings end with almost the same scoring head; shifting one apart makes a response
    # personalized by one version but scored by the other fail the checks below, not only the reverse.
    state = torch.load(new / WEIGHTS, weights_only=True)
    state["logit_bias"] += 1.0
    torch.save(state, new / WEIGHTS)

    catalog = start_catalog(root / "logs", root / "catalog", encoder_service.address)
    titles = [f"{colour} {material} {kind}" for colour in COLOURS for material in MATERIALS for kind in KINDS]
    items = [common_pb2.Item(item_id=f"item-{i}", title=title) for i, title in enumerate(titles)]
    with grpc.insecure_channel(catalog.address) as channel:
        catalog_stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        catalog_stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=300)
        stored = catalog_stub.GetItems(
            catalog_pb2.GetItemsRequest(item_ids=[i.item_id for i in items], include_vectors=True), timeout=60
        ).items
    ranker = start_service(
        "ranker", root / "logs", "--model-dir", str(models), "--model-poll-seconds", "0.5",
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", catalog.address,
    )
    channel = grpc.insecure_channel(ranker.address)
    yield {
        "ranker": ranker, "models": models, "old": old, "new": new, "query_vectors": query_vectors,
        "item_vectors": {item.item_id: np.array(item.vector, dtype=np.float32) for item in stored},
        "admin": model_admin_pb2_grpc.ModelAdminServiceStub(channel),
        "recommend": ranker_pb2_grpc.RankerServiceStub(channel),
        "versions": {},  # version -> the model loaded here, to check responses against
    }
    channel.close()
    ranker.stop()
    catalog.stop()


def _version(directory) -> str:
    return json.loads((directory / MANIFEST).read_text())["version"]


def assert_produced_by_named_version(stack, user: str, query: str, response) -> None:
    """The scores are exactly what the named version computes: personalization and scoring came from one model."""
    version = response.model_version
    directory = next(d for d in stack["models"].iterdir() if d.is_dir() and _version(d) == version)
    model = stack["versions"].setdefault(version, PersonalizationModel.load(directory))
    personalized = model.personalize(stack["query_vectors"][query], user)
    vectors = np.stack([stack["item_vectors"][r.item.item_id] for r in response.items])
    np.testing.assert_allclose([r.score for r in response.items], model.score(personalized, vectors), atol=2e-3)


async def _recommend_until(address: str, done, stop_after: float):
    """WORKERS callers, each calling Recommend back to back; returns each one's (user, query, response) in order."""
    results = [[] for _ in range(WORKERS)]
    failures = []

    async def worker(index: int) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            deadline = time.monotonic() + stop_after
            call = 0
            while time.monotonic() < deadline and not done(results):
                user, query = USERS[(index + call) % len(USERS)], QUERIES[call % len(QUERIES)]
                call += 1
                try:
                    response = await stub.Recommend(ranker_pb2.RecommendRequest(user_id=user, query=query, top_k=10), timeout=60)
                except grpc.RpcError as error:
                    failures.append(f"{error.code().name}: {error.details()}")
                    continue
                results[index].append((user, query, response))

    await asyncio.gather(*(worker(i) for i in range(WORKERS)))
    return results, failures


@pytest.fixture(scope="module")
def reloaded(stack):
    """Continuous Recommend load while the second version is moved into --model-dir (an atomic rename)."""
    new_version = _version(stack["new"])
    dropped = {}

    def done(results) -> bool:
        if not dropped and sum(map(len, results)) >= 20:  # the load is running: ship the new version
            dropped["at"] = stack["new"].rename(stack["models"] / stack["new"].name)
        # Stop once every caller has had 10 answers from the new version.
        return all(sum(r.model_version == new_version for _, _, r in calls) >= 10 for calls in results)

    results, failures = asyncio.run(_recommend_until(stack["ranker"].address, done, stop_after=180))
    stack["new"] = dropped.get("at", stack["new"])
    return results, failures


def test_a_version_dropped_under_load_is_swapped_in_without_a_failed_call(stack, reloaded):
    results, failures = reloaded
    old_version, new_version = _version(stack["old"]), _version(stack["new"])
    assert failures == []
    for calls in results:
        versions = [response.model_version for _, _, response in calls]
        assert set(versions) == {old_version, new_version}, versions
        switch = versions.index(new_version)
        assert versions == [old_version] * switch + [new_version] * (len(versions) - switch)  # old, then new, never back
    for calls in results:
        for user, query, response in calls:
            assert len(response.items) == 10
            assert_produced_by_named_version(stack, user, query, response)
    assert "picked up a new model version" in stack["ranker"].log()


def _corrupt_copy(stack, name: str):
    """A copy of the live version with NaN weights and a newer `created`: it loads, but scores NaN."""
    staging = stack["models"].parent / "corrupt" / name
    shutil.copytree(stack["new"], staging)
    manifest = json.loads((staging / MANIFEST).read_text())
    manifest.update(version=name, created="2999-01-01T00:00:00+00:00")
    (staging / MANIFEST).write_text(json.dumps(manifest))
    state = torch.load(staging / WEIGHTS, weights_only=True)
    state["fuse.0.weight"].fill_(float("nan"))
    torch.save(state, staging / WEIGHTS)
    return staging.rename(stack["models"] / name)


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def test_a_corrupt_version_is_refused_while_the_old_keeps_serving(stack, reloaded):
    live = _version(stack["new"])
    _corrupt_copy(stack, "tiny-corrupt")
    admin = stack["admin"]

    def refused():
        models = admin.ListModels(model_admin_pb2.ListModelsRequest(), timeout=30).models
        return next((m for m in models if m.version == "tiny-corrupt" and m.state == model_admin_pb2.MODEL_STATE_REFUSED), None)

    entry = _wait_for(refused, what="the corrupt version to be refused")
    assert "network.pt: fuse.0.weight contains NaN or inf" in entry.error
    response = stack["recommend"].Recommend(ranker_pb2.RecommendRequest(user_id="u1", query=QUERIES[0], top_k=5), timeout=30)
    assert response.model_version == live
    with pytest.raises(grpc.RpcError) as caught:
        admin.LoadModel(model_admin_pb2.LoadModelRequest(version="tiny-corrupt"), timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"still serving {live}" in caught.value.details()
    assert admin.GetTraffic(model_admin_pb2.GetTrafficRequest(), timeout=30).traffic.live_version == live


def _cli(stack, action: str, *args: str, flags_after_action: bool = False) -> str:
    ranker = ("--ranker", stack["ranker"].address)
    command = (action, *ranker, *args) if flags_after_action else (*ranker, action, *args)
    result = subprocess.run(
        [sys.executable, "-m", "whisperlite", "model", *command],
        cwd=REPO, capture_output=True, text=True, timeout=180, env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_rollback_and_load_from_the_cli(stack, reloaded):
    old_version, new_version = _version(stack["old"]), _version(stack["new"])
    stack["admin"].LoadModel(model_admin_pb2.LoadModelRequest(version=new_version), timeout=60)
    assert _cli(stack, "rollback").strip() == f"live: {old_version} (was {new_version})"
    response = stack["recommend"].Recommend(ranker_pb2.RecommendRequest(user_id="u2", query=QUERIES[1], top_k=5), timeout=30)
    assert response.model_version == old_version
    assert_produced_by_named_version(stack, "u2", QUERIES[1], response)
    listing = _cli(stack, "list", flags_after_action=True)  # `model list --ranker R` was refused: the flag went before
    assert f"live       {old_version}" in listing and f"available  {new_version}" in listing
    assert _cli(stack, "load", new_version).strip() == f"live: {new_version} (was {old_version})"
    assert _cli(stack, "rollback", "--to", old_version).strip() == f"live: {old_version} (was {new_version})"
    _cli(stack, "load", new_version)


def test_canary_sends_each_user_to_one_version(stack, reloaded):
    old_version, new_version = _version(stack["old"]), _version(stack["new"])
    stack["admin"].LoadModel(model_admin_pb2.LoadModelRequest(version=new_version), timeout=60)
    shown = _cli(stack, "traffic", "--candidate", old_version, "--percent", "50")
    assert f"candidate: {old_version} answers 50% of users" in shown
    try:
        users = [f"u{i}" for i in range(30)]
        for repeat in range(2):
            for user in users:
                response = stack["recommend"].Recommend(
                    ranker_pb2.RecommendRequest(user_id=user, query=QUERIES[2], top_k=5), timeout=30
                )
                expected = old_version if user_bucket(user) < 50 else new_version
                assert response.model_version == expected, (user, repeat)
        traffic = stack["admin"].GetTraffic(model_admin_pb2.GetTrafficRequest(), timeout=30).traffic
        assert (traffic.live_version, traffic.candidate_version, traffic.candidate_percent, traffic.shadow) == (
            new_version, old_version, 50.0, False
        )
    finally:
        _cli(stack, "traffic", "--clear")
    assert stack["admin"].GetTraffic(model_admin_pb2.GetTrafficRequest(), timeout=30).traffic.candidate_version == ""


def _samples(stack) -> dict:
    text = urllib.request.urlopen(stack["ranker"].metrics_url, timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_shadow_mode_never_answers_and_records_overlap_and_latency(stack, reloaded):
    old_version, new_version = _version(stack["old"]), _version(stack["new"])
    stack["admin"].LoadModel(model_admin_pb2.LoadModelRequest(version=new_version), timeout=60)
    stack["admin"].SetTraffic(
        model_admin_pb2.SetTrafficRequest(candidate_version=old_version, candidate_percent=100, shadow=True), timeout=60
    )
    try:
        assert f"candidate: {old_version} shadow-scores 100% of users" in _cli(stack, "traffic")
        for i in range(20):
            user = KNOWN_USERS[i % len(KNOWN_USERS)]
            response = stack["recommend"].Recommend(ranker_pb2.RecommendRequest(user_id=user, query=QUERIES[i % 3], top_k=10), timeout=30)
            assert response.model_version == new_version
        overlap = (("candidate", old_version), ("live", new_version))
        samples = _wait_for(
            lambda: (s := _samples(stack)).get(("whisperlite_ranker_shadow_overlap_count", overlap), 0) >= 20 and s,
            what="20 shadow scorings on /metrics",
        )
        mean_overlap = samples[("whisperlite_ranker_shadow_overlap_sum", overlap)] / samples[("whisperlite_ranker_shadow_overlap_count", overlap)]
        assert 0.0 <= mean_overlap <= 1.0
        assert samples[("whisperlite_ranker_shadow_seconds_count", (("candidate", old_version),))] >= 20
        assert samples[("whisperlite_ranker_model_role", (("role", "shadow"), ("version", old_version)))] == 100.0
        assert samples[("whisperlite_ranker_model_requests_total", (("version", new_version),))] >= 20
        assert samples[("whisperlite_ranker_model_seconds_count", (("version", old_version),))] >= 1
    finally:
        stack["admin"].SetTraffic(model_admin_pb2.SetTrafficRequest(), timeout=30)


@pytest.mark.parametrize(
    "call, request_message, code, message",
    [
        ("LoadModel", model_admin_pb2.LoadModelRequest(version="no-such-version"), grpc.StatusCode.NOT_FOUND, "version: no version 'no-such-version'"),
        ("LoadModel", model_admin_pb2.LoadModelRequest(), grpc.StatusCode.INVALID_ARGUMENT, "version: must name a version"),
        ("SetTraffic", model_admin_pb2.SetTrafficRequest(candidate_version="x", candidate_percent=150),
         grpc.StatusCode.INVALID_ARGUMENT, "candidate_percent: must be between 0 and 100, got 150"),
        ("SetTraffic", model_admin_pb2.SetTrafficRequest(candidate_version="no-such-version", candidate_percent=5),
         grpc.StatusCode.NOT_FOUND, "candidate_version: no version 'no-such-version'"),
    ],
)
def test_bad_admin_calls_get_a_precise_status(stack, reloaded, call, request_message, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stack["admin"], call)(request_message, timeout=30)
    assert caught.value.code() == code
    assert message in caught.value.details()
