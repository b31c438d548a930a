"""--access-log: one line per request, the gateway's own refusals included, carrying the request id the caller got."""

import json

import httpx

from tests.servers import start_gateway


def test_the_access_log_names_a_request_the_gateway_refused_by_its_request_id(tmp_path, text_only_ranker, catalog_service):
    """A request the gateway refused (its body) returned a request id that no log held: only the ranker logged."""
    gateway = start_gateway(tmp_path / "logs", text_only_ranker.address, catalog_service.address, tmp_path / "state", "--access-log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=30) as client:
            refused = client.post("/v1/recommend", json={"query": "boots", "top_k": "many"}, headers={"x-request-id": "probe-bad-7"})
            answered = client.post("/v1/recommend", json={"query": "boots", "top_k": 3}, headers={"x-request-id": "probe-good-8"})
        assert (refused.status_code, answered.status_code) == (400, 200)
    finally:
        gateway.stop()
    lines = [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{") and '"message": "request"' in line]
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["probe-bad-7"]["status"] == 400 and by_id["probe-bad-7"]["route"] == "/v1/recommend"
    assert by_id["probe-good-8"]["status"] == 200 and by_id["probe-good-8"]["method"] == "POST"
