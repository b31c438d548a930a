"""Every metric the Grafana dashboard queries is exported by a real service, and every panel shows data.

The three services and the HTTP gateway run as real processes on loopback (tests/conftest.py), one Recommend call goes
through them so that labelled series exist, then each /metrics page is scraped. The dashboard's
PromQL is read for metric names (and the labels it groups or filters by), which must all appear
in what the services export. Then a real Prometheus (Debian's `prometheus`, the package that
provides promtool) scrapes the services under the job names of deploy/prometheus/prometheus.yml
while traffic flows, and every dashboard query must return data.
"""

import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures_model import train_tiny_version
from tests.servers import free_port, start_service
from whisperlite.core.clients.model_admin import ModelAdminClient
from whisperlite.core.clients.ranker import RankerClient
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards" / "whisperlite.json"
# Series Prometheus itself attaches or creates while scraping, not exported by the services.
SCRAPE_SERIES = {"up"}
SCRAPE_LABELS = {"job", "instance"}
CANARY_USER = "u0"  # a user of the synthetic data the canary ranker's versions are trained on

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used by a PromQL expression; Grafana's $__ variables are durations."""
    expr = _STRING.sub('""', expr.replace("$__rate_interval", "5m"))
    labels = {m.split("=")[0].split("!")[0].strip() for block in _MATCHERS.findall(expr) for m in block.split(",") if m.strip()}
    labels |= {name.strip() for group in _GROUPING.findall(expr) for name in group.split(",") if name.strip()}
    expr = _GROUPING.sub(" ", _MATCHERS.sub(" ", re.sub(r"\[[^\]]*\]", " ", expr)))
    metrics = {name for name, call in _IDENTIFIER.findall(expr) if not call and name not in _KEYWORDS}
    return metrics, labels


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def test_promql_names_reads_metrics_and_labels():
    metrics, labels = promql_names(
        'histogram_quantile(0.99, sum by (job, le) (rate(grpc_server_handling_seconds_bucket{grpc_service!="a.b(c)",grpc_code=~"x|y"}[$__rate_interval])))'
        " / on (job) group_left count by (job) (up == 1) or vector(0)"
    )
    assert metrics == {"grpc_server_handling_seconds_bucket", "up"}
    assert labels == {"job", "le", "grpc_service", "grpc_code"}


def scrape(url: str) -> dict[str, set[str]]:
    """Sample name -> label names seen on it (histograms expose _bucket/_sum/_count, counters _total)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


@pytest.fixture(scope="module")
def canary_ranker(tmp_path_factory, encoder_service, catalog_service):
    """A second ranker replica serving a trained model and shadow-scoring a candidate: the per-version panels' data."""
    root = tmp_path_factory.mktemp("canary-ranker")
    with grpc.insecure_channel(encoder_service.address) as channel:
        info = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel).GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=30)
    candidate, _live = (train_tiny_version(root / "models", info.model_name, info.dimension, seed=seed) for seed in (1, 2))
    ranker = start_service(
        "ranker", root / "logs", "--model-dir", str(root / "models"),
        "--query-encoder-addr", encoder_service.address, "--catalog-addr", catalog_service.address,
    )
    with ModelAdminClient(ranker.address) as admin:
        admin.set_traffic(candidate.name, 100.0, shadow=True)
    yield ranker
    ranker.stop()


def recommend_on_both(text_only_ranker, canary_ranker, query: str) -> None:
    for service, user in ((text_only_ranker, "metrics-test-user"), (canary_ranker, CANARY_USER)):
        with RankerClient(service.address, timeout_seconds=60) as ranker:
            ranker.recommend(user_id=user, query=query, top_k=5)


@pytest.fixture(scope="module")
def exported(encoder_service, catalog_service, text_only_ranker, canary_ranker, gateway, gateway_url) -> dict[str, dict[str, set[str]]]:
    recommend_on_both(text_only_ranker, canary_ranker, "black leather boots")
    httpx.post(f"{gateway_url}/v1/recommend", json={"query": "black leather boots", "top_k": 5}, timeout=60).raise_for_status()
    services = {service.name: service for service in (encoder_service, catalog_service, text_only_ranker, gateway)}
    return {name: scrape(service.metrics_url) for name, service in {**services, "ranker-canary": canary_ranker}.items()}


def test_every_service_exports_the_common_rpc_metrics(exported):
    for service, samples in exported.items():
        if service == "gateway":  # HTTP only: its own request metrics
            assert {"method", "route", "status"} <= samples["whisperlite_gateway_requests_total"]
            continue
        for name in ("grpc_server_handled_total", "grpc_server_started_total", "grpc_server_handling_seconds_bucket"):
            assert name in samples, f"{service} does not export {name}"
        assert {"grpc_service", "grpc_method", "grpc_code"} <= samples["grpc_server_handled_total"]


@pytest.mark.parametrize(("panel", "expr"), dashboard_queries(), ids=[f"{t}:{e[:40]}" for t, e in dashboard_queries()])
def test_dashboard_query_uses_only_exported_metrics(exported, panel, expr):
    metrics, labels = promql_names(expr)
    assert metrics, f"{panel}: no metric in {expr!r}"
    union: dict[str, set[str]] = {}
    for samples in exported.values():
        for name, sample_labels in samples.items():
            union.setdefault(name, set()).update(sample_labels)
    missing = metrics - set(union) - SCRAPE_SERIES
    assert not missing, f"panel {panel!r} queries {sorted(missing)}, which no service exports"
    available = set().union(*(union.get(m, set()) for m in metrics)) | SCRAPE_LABELS
    assert labels <= available, f"panel {panel!r} uses labels {sorted(labels - available)} that {sorted(metrics)} do not carry"


def test_dashboard_covers_what_operators_watch():
    """Request rate, errors, latency, encoder batching and cache, catalog size, ranker stages, model versions and the gateway are all on it."""
    used = set().union(*(promql_names(expr)[0] for _, expr in dashboard_queries()))
    assert {
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "whisperlite_encoder_batch_size_bucket",
        "whisperlite_encoder_cache_hits_total",
        "whisperlite_encoder_cache_misses_total",
        "whisperlite_catalog_items",
        "whisperlite_ranker_stage_seconds_bucket",
        "whisperlite_gateway_requests_total",
        "whisperlite_gateway_request_seconds_bucket",
        "whisperlite_ranker_model_requests_total",
        "whisperlite_ranker_model_seconds_bucket",
        "whisperlite_ranker_shadow_overlap_count",
    } <= used
    errors = [expr for _, expr in dashboard_queries() if 'grpc_code!="OK"' in expr]
    quantiles = {q for _, expr in dashboard_queries() for q in re.findall(r"histogram_quantile\((0\.\d+)", expr)}
    assert errors and {"0.5", "0.99"} <= quantiles


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, exported, encoder_service, catalog_service, text_only_ranker, canary_ranker, gateway, gateway_url):
    """A real Prometheus scraping the three services (two ranker replicas) and the gateway every second, with traffic flowing meanwhile."""
    root = tmp_path_factory.mktemp("prometheus")
    jobs = {
        "query-encoder": [encoder_service], "catalog": [catalog_service], "ranker": [text_only_ranker, canary_ranker], "gateway": [gateway],
    }  # fmt: skip
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{replica.metrics_port}" for replica in replicas]}]}
            for job, replicas in jobs.items()
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        ["prometheus", f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(root / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: len(query(url, "up == 1")) == 5, 60, f"Prometheus did not scrape all five processes:\n{(root / 'prometheus.log').read_text()[-2000:]}")
        with RankerClient(text_only_ranker.address, timeout_seconds=60) as ranker:
            for round_ in range(4):
                # a new text each round keeps the model busy (batch panels); the repeats hit the cache
                for text in (f"black leather boots, size {round_ + 38}", "a light summer dress", f"black leather boots, size {round_ + 38}"):
                    recommend_on_both(text_only_ranker, canary_ranker, text)
                with pytest.raises(grpc.RpcError):  # an error for the error panels
                    ranker.recommend(user_id="metrics-test-user", query="boots", top_k=0)
                httpx.post(f"{gateway_url}/v1/recommend", json={"query": "summer dress", "top_k": 5}, timeout=60).raise_for_status()
                time.sleep(1)
        time.sleep(2)  # a last scrape after the traffic
        yield url
    finally:
        process.terminate()
        process.wait(30)


def wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(message)


def query(url: str, expr: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.parametrize(("panel", "expr"), dashboard_queries(), ids=[f"{t}:{e[:40]}" for t, e in dashboard_queries()])
def test_dashboard_query_shows_data_in_prometheus(prometheus, panel, expr):
    series = query(prometheus, expr.replace("$__rate_interval", "30s"))
    values = [float(s["value"][1]) for s in series]
    assert any(math.isfinite(v) for v in values), f"panel {panel!r}: {expr!r} returned {series}"
