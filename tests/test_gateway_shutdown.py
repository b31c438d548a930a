"""The gateway's signals. SIGTERM: requests in flight are answered, new ones get 503 with Retry-After, exit code 0.
SIGHUP: re-reads the token file, never stops the gateway."""

import signal
import threading
import time

import httpx

from tests.servers import start_gateway


def test_sigterm_answers_what_is_in_flight_refuses_the_rest_with_503_and_exits_0(tmp_path, text_only_ranker, catalog_service):
    """uvicorn closed the listener at the signal (a request sent 0.12 s after it got no answer at all) and exited -15."""
    gateway = start_gateway(tmp_path / "logs", text_only_ranker.address, catalog_service.address, tmp_path / "state", "--grace-seconds", "20")
    url = f"http://127.0.0.1:{gateway.port}"
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def caller(number: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            sent = 0
            while not stop.is_set():
                sent += 1
                try:
                    response = client.post("/v1/recommend", json={"query": f"a warm wool coat {number} {sent}", "top_k": 5})
                except httpx.ConnectError:
                    outcomes.append((time.monotonic(), "refused connection"))  # the listener is closed: nothing was accepted
                    time.sleep(0.05)
                    continue
                except httpx.TransportError as error:
                    outcomes.append((time.monotonic(), f"dropped: {type(error).__name__}"))
                    continue
                if response.status_code == 503:
                    assert response.headers["Retry-After"] == "1"
                    assert response.json()["error"] == {"code": "UNAVAILABLE", "message": "the gateway is shutting down: retry, at another replica if there is one"}
                    stop.wait(1.0)  # as Retry-After asks
                else:
                    assert response.status_code == 200, response.text
                outcomes.append((time.monotonic(), str(response.status_code)))

    callers = [threading.Thread(target=caller, args=(n,)) for n in range(6)]
    for thread in callers:
        thread.start()
    time.sleep(2.0)
    signalled = time.monotonic()
    gateway.process.terminate()
    code = gateway.process.wait(60)
    time.sleep(0.3)
    stop.set()
    for thread in callers:
        thread.join(60)
    after = [outcome for at, outcome in outcomes if at > signalled]
    assert code == 0, gateway.log()[-3000:]
    assert "200" in [outcome for at, outcome in outcomes if at < signalled]
    assert "503" in after, after[:20]  # the drain answered while it waited for the requests in flight
    assert not [outcome for _, outcome in outcomes if outcome.startswith("dropped")], after


def test_sighup_without_a_token_file_leaves_the_gateway_serving(tmp_path, text_only_ranker, catalog_service):
    """It ended the process (SIGHUP's default action): 6 requests in flight dropped, and `up` counted a crash."""
    gateway = start_gateway(tmp_path / "logs", text_only_ranker.address, catalog_service.address, tmp_path / "state")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=30) as client:
            for _ in range(3):
                gateway.process.send_signal(signal.SIGHUP)
                time.sleep(0.3)
                assert gateway.process.poll() is None, gateway.log()[-3000:]
                assert client.post("/v1/recommend", json={"query": "a warm wool coat", "top_k": 3}).status_code == 200
        assert "SIGHUP: no --auth-tokens-file to re-read" in gateway.log()
    finally:
        gateway.stop()
