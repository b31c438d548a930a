"""How the ranker starts: it waits for services that are still starting, and refuses to serve what it
cannot serve correctly, with a message and no traceback."""

import re
import subprocess
import time

import grpc
import pytest

from tests.servers import ServiceProcess, free_port, launch_service, start_service
from whisperlite.core.clients.health import wait_until_serving
from whisperlite.v1 import ranker_pb2, ranker_pb2_grpc


def exit_of(service: ServiceProcess, timeout: float = 120.0) -> tuple[int, str]:
    try:
        returncode = service.process.wait(timeout)
    except subprocess.TimeoutExpired:
        service.stop()
        pytest.fail(f"{service.name} kept running; log:\n{service.log()[-3000:]}")
    return returncode, service.log()


def wait_for_log(service: ServiceProcess, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in service.log():
        if service.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{service.name} never logged {text!r}; log:\n{service.log()[-3000:]}")
        time.sleep(0.2)


def test_waits_for_a_catalog_still_opening_its_collection(encoder_service, tmp_path):
    logs = tmp_path / "logs"
    # The catalog opens (and creates) its collection only once its own encoder answers, so holding
    # that encoder back holds the catalog in the "still opening" state for as long as the test needs.
    held_encoder_port = free_port()
    catalog = launch_service(
        "catalog", logs, "--data-dir", str(tmp_path / "store"), "--query-encoder-addr", f"localhost:{held_encoder_port}"
    )
    ranker = launch_service(
        "ranker", logs, "--model-dir", str(tmp_path / "no-model"),
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", catalog.address,
    )
    held_encoder = None
    try:
        wait_for_log(ranker, "still opening its collection")
        held_encoder = start_service("query-encoder", logs, port=held_encoder_port)
        assert wait_until_serving(ranker.address, 120, alive=lambda: ranker.process.poll() is None), ranker.log()[-3000:]
        with grpc.insecure_channel(ranker.address) as channel:
            response = ranker_pb2_grpc.RankerServiceStub(channel).Recommend(
                ranker_pb2.RecommendRequest(user_id="u1", query="red dress", top_k=3), timeout=30
            )
        assert list(response.items) == []  # the new catalog is empty
    finally:
        for service in (ranker, catalog, held_encoder):
            if service is not None:
                service.stop()


def test_gives_up_when_the_catalog_never_answers(encoder_service, tmp_path):
    ranker = launch_service(
        "ranker", tmp_path / "logs", "--model-dir", str(tmp_path / "no-model"), "--startup-timeout-seconds", "3",
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", f"localhost:{free_port()}",
    )
    returncode, log = exit_of(ranker)
    assert returncode != 0
    # Calls wait for a connection until their deadline, so the last one ends in either code.
    assert re.search(r"ranker: not ready after \d+ s: catalog at localhost:\d+: GetStats failed: (UNAVAILABLE|DEADLINE_EXCEEDED)", log), log[-2000:]
    assert "Traceback" not in log


def test_refuses_a_catalog_holding_another_encoders_vectors(encoder_service, tmp_path):
    logs = tmp_path / "logs"
    catalog = start_service(
        "catalog", logs, "--data-dir", str(tmp_path / "store"), "--query-encoder-addr", "",
        "--dimension", "384", "--encoder-model", "another/encoder-384",
    )
    try:
        ranker = launch_service(
            "ranker", logs, "--model-dir", str(tmp_path / "no-model"),
            "--query-encoder-addr", encoder_service.address, "--catalog-addr", catalog.address,
        )
        returncode, log = exit_of(ranker)
    finally:
        catalog.stop()
    assert returncode != 0
    assert "catalog vectors come from 'another/encoder-384' (384-d) but the query encoder serves" in log, log[-2000:]
    assert "Traceback" not in log


def test_a_model_folder_without_a_version_serves_text_only(encoder_service, catalog_service, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / ".gitkeep").touch()
    ranker = start_service(
        "ranker", tmp_path / "logs", "--model-dir", str(models),
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", catalog_service.address,
        "--max-query-chars", "5000",  # above the encoder's 2,000: lowered to it at start-up
    )
    try:
        with grpc.insecure_channel(ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            response = stub.Recommend(ranker_pb2.RecommendRequest(user_id="u1", query="red dress", top_k=3), timeout=30)
            with pytest.raises(grpc.RpcError) as long_query:
                stub.Recommend(ranker_pb2.RecommendRequest(user_id="u1", query="dress " * 500, top_k=3), timeout=30)
        assert response.path == ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY
        assert response.model_version == ""
        assert "no trained model" in ranker.log()
        # Named as the caller sent it, not as the encoder's "texts[0]", a field the caller never sent.
        assert (long_query.value.code(), long_query.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "query: at most 2000 characters, got 2999")
        assert "--max-query-chars is above what the query encoder embeds" in ranker.log()
    finally:
        ranker.stop()


def _manifest_not_json(root):
    version = root / "models" / "v1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text("{truncated")
    return version.parent, "JSONDecodeError"


def _weights_missing(root):
    version = root / "v1"
    version.mkdir()
    (version / "manifest.json").write_text(
        '{"config": {"network": {}}, "dimension": 384, "created": "2026-01-01", "version": "v1", "encoder": "sentence-transformers/all-MiniLM-L6-v2"}'
    )
    return version, "FileNotFoundError"


def _manifest_not_an_object(root):
    version = root / "v1"
    version.mkdir()
    (version / "manifest.json").write_text("[]")
    return version.parent, "ValueError: manifest.json: must be a JSON object, got list"


def _manifest_without_version(root):
    version = root / "v1"
    version.mkdir()
    (version / "manifest.json").write_text('{"created": "2026-01-01", "encoder": "sentence-transformers/all-MiniLM-L6-v2"}')
    return version.parent, "ValueError: manifest.json: version must be 1 to 256 printable characters, got 'None'"


@pytest.mark.parametrize("make_model", [_manifest_not_json, _weights_missing, _manifest_not_an_object, _manifest_without_version])
def test_an_unreadable_model_stops_start_up(make_model, encoder_service, catalog_service, tmp_path):
    model_dir, error_name = make_model(tmp_path)
    ranker = launch_service(
        "ranker", tmp_path / "logs", "--model-dir", str(model_dir),
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", catalog_service.address,
    )
    returncode, log = exit_of(ranker)
    assert returncode != 0
    # A folder whose only version does not read names the version and why (a version that reads beside it is served).
    assert re.search(rf"ranker: model {re.escape(str(model_dir))} cannot be loaded: .*{re.escape(error_name)}", log), log[-2000:]
    assert "Traceback" not in log


def test_refuses_limits_that_would_reject_every_request(tmp_path):
    ranker = launch_service("ranker", tmp_path / "logs", "--candidates", "0", "--model-dir", str(tmp_path / "no-model"))
    returncode, log = exit_of(ranker)
    assert returncode != 0
    assert "ranker: candidates: must be at least 1, got 0" in log and "Traceback" not in log


def test_refuses_a_catalog_address_that_is_another_service(encoder_service, tmp_path):
    ranker = launch_service(
        "ranker", tmp_path / "logs", "--model-dir", str(tmp_path / "no-model"),
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", encoder_service.address,
    )
    returncode, log = exit_of(ranker)
    assert returncode != 0
    assert f"ranker: catalog at {encoder_service.address}: GetStats failed: UNIMPLEMENTED" in log, log[-2000:]
    assert "Traceback" not in log
