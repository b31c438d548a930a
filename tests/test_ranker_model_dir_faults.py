"""A real ranker whose --model-dir holds a folder it may not read and a copy of a version under that version's name:
each is listed refused, and start-up, the watcher and the admin calls go on with every other version."""

import json
import shlex
import shutil
import sys
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures_model import train_tiny_version
from tests.fixtures_permissions import command_prefix_denied, locked
from tests.servers import start_service
from whisperlite.core.model_versions import MANIFEST
from whisperlite.v1 import model_admin_pb2, model_admin_pb2_grpc, query_encoder_pb2, query_encoder_pb2_grpc


def _refused_loads(ranker) -> float:
    text = urllib.request.urlopen(ranker.metrics_url, timeout=10).read().decode()
    return next(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == "whisperlite_ranker_model_loads_total" and sample.labels == {"outcome": "refused"}
    )


def _renamed_copy(source, models, version: str):
    """A copy of a version under a new name, newer than any other (what the next training run drops in)."""
    target = shutil.copytree(source, models / version)
    manifest = json.loads((target / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps({**manifest, "version": version, "created": "2999-01-01T00:00:00+00:00"}))
    return target


def test_a_folder_it_may_not_read_and_a_copy_are_refused_and_every_other_version_serves(
    encoder_service, catalog_service, tmp_path, monkeypatch
):
    """Run as a non-root user, the ranker exited at start-up with a PermissionError traceback over one `chmod 000`
    folder (and once running, ListModels, LoadModel and every poll failed); a backup copy of a version made that
    version refused, so it could not be loaded."""
    with grpc.insecure_channel(encoder_service.address) as channel:
        encoder = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel).GetModelInfo(
            query_encoder_pb2.GetModelInfoRequest(), timeout=30
        )
    models = tmp_path / "models"
    older, newer = (train_tiny_version(models, encoder.model_name, encoder.dimension, seed=seed) for seed in (1, 2))
    backup = shutil.copytree(newer, models / "tiny-backup")
    with locked(shutil.copytree(newer, models / "tiny-locked")) as folder:
        # start_service runs `sys.executable -m whisperlite serve`: this one cannot read the folder.
        python_denied = tmp_path / "python-denied"
        python_denied.write_text(f'#!/bin/sh\nexec {shlex.join([*command_prefix_denied(folder), sys.executable])} "$@"\n')
        python_denied.chmod(0o755)
        with monkeypatch.context() as patch:
            patch.setattr(sys, "executable", str(python_denied))
            ranker = start_service(
                "ranker", tmp_path / "logs", "--model-dir", str(models), "--model-poll-seconds", "0.2",
                "--query-encoder-addr", encoder_service.address, "--catalog-addr", catalog_service.address,
            )
        try:
            with grpc.insecure_channel(ranker.address) as channel:
                admin = model_admin_pb2_grpc.ModelAdminServiceStub(channel)
                listed = {m.path: m for m in admin.ListModels(model_admin_pb2.ListModelsRequest(), timeout=30).models}
                assert listed[str(newer)].state == model_admin_pb2.MODEL_STATE_LIVE
                assert listed[str(folder)].state == model_admin_pb2.MODEL_STATE_REFUSED
                assert "cannot be read: PermissionError" in listed[str(folder)].error
                assert listed[str(backup)].state == model_admin_pb2.MODEL_STATE_REFUSED
                assert f"is also the version of {newer}" in listed[str(backup)].error

                dropped = _renamed_copy(older, models, "tiny-dropped")  # the watcher's polls go on past the folder
                deadline = time.monotonic() + 60
                while admin.GetTraffic(model_admin_pb2.GetTrafficRequest(), timeout=30).traffic.live_version != dropped.name:
                    assert time.monotonic() < deadline, ranker.log()[-3000:]
                    time.sleep(0.2)

                rolled_back = admin.LoadModel(model_admin_pb2.LoadModelRequest(version=newer.name), timeout=60)
                assert (rolled_back.model.path, rolled_back.previous_version) == (str(newer), dropped.name)
                assert _refused_loads(ranker) == 2  # the folder and the copy, each once
        finally:
            ranker.stop()
    assert "Traceback" not in ranker.log()
