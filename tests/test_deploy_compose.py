"""Deployment files, checked statically (no Docker engine here) with the real tools.

`deploy/check.sh` (what `make compose-check` runs) must pass on the repository and fail on broken
copies; the compose model as the real `docker-compose` binary resolves it must wire the services
as docs/deploy.md describes; every env var compose sets must be one the service reads.
"""

import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "deploy" / "check.sh"
from whisperlite.core.topology import BY_NAME, CATALOG, QUERY_ENCODER
from whisperlite.core.topology import SERVICES as TOPOLOGY

# compose service -> (server module, env prefix, metrics port)
SERVICES = {service.name: (service.module, service.env_prefix, service.metrics_port) for service in TOPOLOGY}
# The HTTP gateway: no gRPC health service, /metrics on its one HTTP port.
HTTP_SERVICES = {service.name for service in TOPOLOGY if not service.speaks_grpc}
# Set by Docker for the NVIDIA container toolkit and by the images themselves, not read by WhisperLite code.
NON_SERVICE_ENV = {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONUNBUFFERED", "PATH"}


def compose_binary() -> Path:
    import compose

    return Path(compose.__file__).parent / "docker-compose"


def compose_model(*files: str, project: Path = REPO, **variables: str) -> dict:
    """The compose model as the real binary resolves it (defaults plus `variables`; no .env file)."""
    env_file = project / ".check.env"
    env_file.write_text("")
    try:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **variables}
        args = [str(compose_binary()), "--env-file", str(env_file), "--project-directory", str(project)]
        for name in files:
            args += ["-f", str(project / name)]
        result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, env=env, check=True)
    finally:
        env_file.unlink()
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def base() -> dict:
    return compose_model("docker-compose.yml")


@pytest.fixture(scope="module")
def cpu() -> dict:
    return compose_model("docker-compose.yml", "docker-compose.cpu.yml")


def run_check(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CHECK), str(project)], capture_output=True, text=True, timeout=120)


def test_compose_check_passes_on_the_repository():
    result = run_check(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "docker-compose 2.40.3" in result.stdout
    for name in ("docker-compose.yml", "docker-compose.cpu.yml", "docker-compose.external-milvus.yml", "docker-compose.secure.yml", "prometheus.yml", "PromQL", "Dockerfiles"):
        assert re.search(rf"^ok .*{re.escape(name)}", result.stdout, re.M), result.stdout


BREAKAGES = {
    # file, text replaced, replacement, the check line that must fail
    "unknown depends_on condition": ("docker-compose.yml", "condition: service_completed_successfully", "condition: service_done", "docker-compose.yml"),
    "depends on a missing service": ("docker-compose.yml", "      bootstrap:\n        condition:", "      bootstrapper:\n        condition:", "docker-compose.yml"),
    "override with a wrong type": ("docker-compose.cpu.yml", "target: cpu", "target: [cpu]", "docker-compose.cpu.yml"),
    "external override drops the encoder dependency": (
        "docker-compose.external-milvus.yml", "    depends_on: !override\n", "    depends_on: !override\n      ranker-proxy:\n        condition: service_healthy\n", "external-milvus"
    ),
    "secure override mounts an undefined secret": (
        "docker-compose.secure.yml", "secrets: [whisperlite_ingest_token]", "secrets: [whisperlite_ingest]", "docker-compose.secure.yml"
    ),
    "bad prometheus duration": ("deploy/prometheus/prometheus.yml", "refresh_interval: 15s", "refresh_interval: soon", "prometheus.yml"),
    "dashboard query does not parse": (
        "deploy/grafana/dashboards/whisperlite.json", '"max(whisperlite_catalog_items)"', '"max(whisperlite_catalog_items"', "PromQL"
    ),
    "Dockerfile running as root": ("deploy/docker/catalog.Dockerfile", "USER 10001:10001", "USER root", "Dockerfiles"),
}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=list(BREAKAGES))
def test_compose_check_fails_on_a_broken_copy(tmp_path, breakage):
    path, old, new, failing_check = BREAKAGES[breakage]
    for name in ("docker-compose.yml", "docker-compose.cpu.yml", "docker-compose.external-milvus.yml", "docker-compose.secure.yml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    target = tmp_path / path
    text = target.read_text()
    assert old in text, f"{path} no longer contains {old!r}: update this test"
    target.write_text(text.replace(old, new, 1))

    result = run_check(tmp_path)

    assert result.returncode == 1, result.stdout
    assert re.search(rf"^FAIL .*{re.escape(failing_check)}", result.stdout, re.M), result.stdout


def test_images_are_pinned(base, cpu):
    for model in (base, cpu):
        for name, service in model["services"].items():
            image = service["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and tag and tag != "latest" and "/" not in tag, f"{name}: image {image!r} has no pinned tag"
    for dockerfile in (REPO / "deploy" / "docker").glob("*.Dockerfile"):
        for base_image in re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile.read_text(), re.M):
            assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base_image), f"{dockerfile.name}: {base_image}"


def test_every_long_running_service_has_a_healthcheck(base):
    dockerfiles = {p.name.removesuffix(".Dockerfile"): p.read_text() for p in (REPO / "deploy" / "docker").glob("*.Dockerfile")}
    for name, service in base["services"].items():
        if name == "bootstrap":
            assert service["healthcheck"] == {"disable": True}
            continue
        assert "healthcheck" in service, name
        if name in HTTP_SERVICES:
            # The same command probes the gateway's /health over HTTP (503 while an upstream is not SERVING).
            assert "test" not in service["healthcheck"]
            probe = r'whisperlite health http://127\.0\.0\.1:\$\{' + SERVICES[name][1] + r'_PORT\}/health'
            assert re.search(r'HEALTHCHECK .*\n\s+CMD \["sh", "-c", "' + probe, dockerfiles[name]), name
        elif name in SERVICES:
            # Compose tunes the timing; the probe is the image's HEALTHCHECK over the gRPC health protocol.
            assert "test" not in service["healthcheck"]
            assert re.search(r'HEALTHCHECK .*\n\s+CMD \["sh", "-c", "whisperlite health 127\.0\.0\.1:\$\{' + SERVICES[name][1], dockerfiles[name]), name
        else:
            assert service["healthcheck"]["test"][0] == "CMD", name


def test_dockerfiles_are_multi_stage_and_run_as_non_root():
    for dockerfile in (REPO / "deploy" / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        assert len(re.findall(r"^FROM ", text, re.M)) >= 2, f"{dockerfile.name} is not multi-stage"
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and all(u.split(":")[0] not in ("0", "root") for u in users), dockerfile.name
        assert "COPY --from=build" in text
    encoder = (REPO / "deploy" / "docker" / "query-encoder.Dockerfile").read_text()
    assert re.search(r"^FROM runtime AS cuda$", encoder, re.M) and re.search(r"^FROM runtime AS cpu$", encoder, re.M)
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in encoder


def test_images_install_the_pinned_torch_and_constraints():
    pinned = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert re.search(rf"^torch=={re.escape(pinned)}\+cpu$", (REPO / "constraints.txt").read_text(), re.M)
    for dockerfile in (REPO / "deploy" / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        # The serving images take the [serve] extra (the ranker's [train], for its bootstrap job).
        assert re.search(r'--extra-index-url https://download.pytorch.org/whl/cpu --constraint constraints.txt "\.\[(serve|train)\]"', text), dockerfile.name
    encoder = (REPO / "deploy" / "docker" / "query-encoder.Dockerfile").read_text()
    # The CUDA image swaps only torch's local version label (+cpu -> +cuXYZ), same version.
    assert re.findall(r"^ARG TORCH_VERSION=(\S+)", encoder, re.M) == [pinned]
    assert 's/^torch==.*/torch==${TORCH_VERSION}+${TORCH_CUDA}/' in encoder


def test_services_start_in_dependency_order(base):
    services = base["services"]

    def conditions(name):
        return {dep: spec["condition"] for dep, spec in services[name].get("depends_on", {}).items()}

    assert conditions("milvus") == {"etcd": "service_healthy", "minio": "service_healthy"}
    assert conditions("catalog") == {"milvus": "service_healthy", "query-encoder": "service_healthy"}
    assert conditions("bootstrap") == {"catalog": "service_healthy"}
    assert conditions("ranker") == {
        "query-encoder": "service_healthy",
        "catalog": "service_healthy",
        "bootstrap": "service_completed_successfully",
    }


def test_catalog_uses_the_milvus_server_and_ranker_balances_over_encoder_replicas(base):
    services = base["services"]
    assert services["catalog"]["environment"]["CATALOG_MILVUS_URI"] == "http://milvus:19530"
    ranker_env = services["ranker"]["environment"]
    # A bare service name: create_channel resolves it through DNS (one A record per replica) round-robin.
    for downstream in (QUERY_ENCODER, CATALOG):
        assert ranker_env[downstream.address_env] == f"{downstream.name}:{downstream.port}"
    assert services["query-encoder"]["deploy"]["replicas"] >= 2
    assert services["ranker"]["deploy"]["replicas"] >= 2


def test_gpu_reservation_and_cpu_override(base, cpu):
    gpu_encoder, cpu_encoder = base["services"]["query-encoder"], cpu["services"]["query-encoder"]
    devices = gpu_encoder["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]
    assert gpu_encoder["build"]["target"] == "cuda" and gpu_encoder["environment"]["QUERY_ENCODER_DEVICE"] == "cuda"

    assert not cpu_encoder["deploy"]["resources"].get("reservations", {}).get("devices")
    assert cpu_encoder["build"]["target"] == "cpu" and cpu_encoder["environment"]["QUERY_ENCODER_DEVICE"] == "cpu"
    assert cpu_encoder["image"] != gpu_encoder["image"]
    assert cpu_encoder["deploy"]["replicas"] == gpu_encoder["deploy"]["replicas"]
    # Nothing but the encoder differs between the two.
    for name in base["services"]:
        if name != "query-encoder":
            assert base["services"][name] == cpu["services"][name], name


def test_external_milvus_override_turns_the_bundled_one_off(base):
    external = compose_model("docker-compose.yml", "docker-compose.external-milvus.yml", CATALOG_MILVUS_URI="https://milvus.example:19530")
    assert set(base["services"]) - set(external["services"]) == {"etcd", "minio", "milvus"}
    catalog = external["services"]["catalog"]
    assert catalog["environment"]["CATALOG_MILVUS_URI"] == "https://milvus.example:19530"
    assert set(catalog["depends_on"]) == {"query-encoder"}

    with pytest.raises(subprocess.CalledProcessError) as missing:
        compose_model("docker-compose.yml", "docker-compose.external-milvus.yml")
    assert "set CATALOG_MILVUS_URI" in missing.value.stderr


def test_state_lives_in_named_volumes(base):
    volumes = set(base["volumes"])
    expected = {"etcd": "/etcd", "minio": "/minio_data", "milvus": "/var/lib/milvus", "prometheus": "/prometheus", "grafana": "/var/lib/grafana"}
    for name, target in expected.items():
        mounts = {m["target"]: m for m in base["services"][name]["volumes"]}
        assert mounts[target]["type"] == "volume" and mounts[target]["source"] in volumes, name
    ranker_models = {m["target"]: m for m in base["services"]["ranker"]["volumes"]}["/models"]
    bootstrap_models = {m["target"]: m for m in base["services"]["bootstrap"]["volumes"]}["/models"]
    assert ranker_models["source"] == bootstrap_models["source"] == "models"
    assert ranker_models.get("read_only") and not bootstrap_models.get("read_only")


def _env_vars_read_by(module_name: str) -> set[str]:
    """Env vars a service reads: its parser's help names each one as "(env NAME)"."""
    parser = importlib.import_module(module_name).build_parser()
    return set(re.findall(r"env ([A-Z][A-Z0-9_]+)", " ".join(parser.format_help().split())))


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_compose_sets_only_env_vars_the_service_reads(base, service):
    module_name, prefix, metrics_port = SERVICES[service]
    read = _env_vars_read_by(module_name)
    assert f"{prefix}_PORT" in read and (service in HTTP_SERVICES or f"{prefix}_METRICS_PORT" in read)

    set_by_compose = set(base["services"][service]["environment"])
    dockerfile = (REPO / "deploy" / "docker" / f"{service}.Dockerfile").read_text()
    set_by_image = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)=", dockerfile, re.M)) - {"PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
    unknown = (set_by_compose | set_by_image) - read - NON_SERVICE_ENV
    assert not unknown, f"{service} does not read {sorted(unknown)}"
    if service in HTTP_SERVICES:  # one HTTP port serves the API and /metrics
        assert f"{prefix}_PORT={metrics_port}" in dockerfile
        assert re.search(rf"^EXPOSE {BY_NAME[service].port}$", dockerfile, re.M), "EXPOSE must name the topology's port"
    else:
        assert f"{prefix}_METRICS_PORT={metrics_port}" in dockerfile
        assert f"{prefix}_PORT={BY_NAME[service].port}" in dockerfile
        assert re.search(rf"^EXPOSE {BY_NAME[service].port} {metrics_port}$", dockerfile, re.M), "EXPOSE must name the topology's ports"


def test_prometheus_discovers_every_replica_of_every_service(base):
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service, (_, _, metrics_port) in SERVICES.items():
        assert service in base["services"]
        (sd,) = jobs[service]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A" and sd["port"] == metrics_port
    assert jobs["milvus"]["static_configs"] == [{"targets": ["milvus:9091"]}]
    prometheus_mounts = {m["target"]: m["source"] for m in base["services"]["prometheus"]["volumes"]}
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == str(REPO / "deploy" / "prometheus" / "prometheus.yml")


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(base):
    grafana = REPO / "deploy" / "grafana"
    (datasource,) = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["uid"] == "prometheus"
    (provider,) = yaml.safe_load((grafana / "provisioning" / "dashboards" / "whisperlite.yml").read_text())["providers"]
    mounts = {m["target"]: m["source"] for m in base["services"]["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == str(grafana / "dashboards")
    assert mounts["/etc/grafana/provisioning"] == str(grafana / "provisioning")
    dashboard = json.loads((grafana / "dashboards" / "whisperlite.json").read_text())
    datasources = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert datasources == {"prometheus"}


def test_gateway_fronts_the_ranker_and_catalog_and_keeps_judgements_in_a_volume(base):
    gateway = base["services"]["gateway"]
    assert gateway["environment"]["RANKER_ADDR"] == "ranker:50050" and gateway["environment"]["CATALOG_ADDR"] == "catalog:50052"
    assert {dep: spec["condition"] for dep, spec in gateway["depends_on"].items()} == {"ranker": "service_healthy", "catalog": "service_healthy"}
    (port,) = gateway["ports"]
    assert port["target"] == 8080 and port["host_ip"] == "127.0.0.1"
    state = {m["target"]: m for m in gateway["volumes"]}["/state"]
    assert state["type"] == "volume" and state["source"] in base["volumes"]
    dockerfile = (REPO / "deploy" / "docker" / "gateway.Dockerfile").read_text()
    assert "GATEWAY_STATE_DIR=/state" in dockerfile
