"""The judgement page in real headless Chromium (Debian's package, driven by Playwright) over the real stack."""

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import grpc
import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.fixtures_gateway import WATCH_IDS
from whisperlite.v1 import ranker_pb2, ranker_pb2_grpc

CHROMIUM = Path("/usr/bin/chromium")  # `make install` installs it; `playwright install` would need the internet
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "gateway.png"
TIMEOUT_MS = 60_000  # a loaded 2-core machine embeds and ranks slowly


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def _item(page, position: str, rank: int):
    return page.locator(f"#list-{position} li").nth(rank - 1)


def test_type_a_request_judge_three_items_reload_and_find_them(page, gateway_url, gateway_items, tmp_path):
    # The page runs under its Content-Security-Policy: anything it loads or runs that the policy refuses is a console error.
    console_errors = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.on("response", lambda response: response.status >= 400 and console_errors.append(f"{response.status} {response.url}"))
    page.goto(gateway_url)
    page.get_by_label("Request").fill("something to wear")
    page.get_by_label("Recent item ids").fill(", ".join(WATCH_IDS[:2]))
    page.get_by_label("Items").fill("5")
    page.get_by_role("button", name="Recommend").click()

    expect(page.locator("#list-left li")).to_have_count(5)
    expect(page.locator("#list-right li")).to_have_count(5)
    expect(page.locator("#list-left h2")).to_have_text("Personalized")
    expect(page.locator("#list-right h2")).to_have_text("Non-personal (request text only)")
    expect(page.locator("#list-left .meta")).to_contain_text("path RECENT_ITEMS")
    expect(page.locator("#list-right .meta")).to_contain_text("path TEXT_ONLY")
    expect(_item(page, "left", 1).locator(".explain")).to_contain_text("personal affinity")
    titles = {item["title"] for item in gateway_items}
    assert _item(page, "left", 1).locator(".title").inner_text() in titles

    marks = [("left", 1, "Relevant", "true"), ("left", 2, "Not relevant", "false"), ("right", 1, "Relevant", "true")]
    for position, rank, label, _ in marks:
        page.get_by_role("button", name=f"{label}: {position} list, rank {rank}", exact=True).click()
    for position, rank, _, judged in marks:  # each mark shows once the gateway stored it
        expect(_item(page, position, rank)).to_have_attribute("data-judged", judged)
    assert "comparison=" in page.url

    page.screenshot(path=str(tmp_path / "gateway.png"), full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "gateway.png", SCREENSHOT)

    page.reload()
    for position, rank, _, judged in marks:
        expect(_item(page, position, rank)).to_have_attribute("data-judged", judged)
    expect(_item(page, "right", 2)).to_have_attribute("data-judged", "")
    expect(page.get_by_label("Request")).to_have_value("something to wear")
    assert console_errors == []


def test_another_site_cannot_frame_the_page(page, gateway_url, tmp_path):
    """Clickjacking: a page elsewhere that frames the study page under a decoy gets an empty frame."""
    framing = tmp_path / "framing.html"
    framing.write_text(f'<html><body><iframe id="frame" src="{gateway_url}/"></iframe></body></html>')
    page.goto(framing.as_uri())
    page.wait_for_function("() => performance.getEntriesByType('resource').some(entry => entry.name.startsWith(%r))" % gateway_url)
    frame = page.frame_locator("#frame")
    expect(frame.get_by_label("Request")).to_have_count(0)
    page.goto(gateway_url)  # the same page, not framed, shows
    expect(page.get_by_label("Request")).to_have_count(1)


def test_bad_input_in_the_form_shows_the_grpc_message(page, gateway_url, gateway_ranker, gateway_items):
    with grpc.insecure_channel(gateway_ranker.address) as channel, pytest.raises(grpc.RpcError) as direct:
        ranker_pb2_grpc.RankerServiceStub(channel).Recommend(ranker_pb2.RecommendRequest(query="boots", top_k=0), timeout=30)
    page.goto(gateway_url)
    page.get_by_label("Request").fill("boots")
    page.get_by_label("Items").fill("2")
    page.get_by_role("button", name="Recommend").click()
    expect(page.locator("#list-left li")).to_have_count(2)
    expect(page).to_have_url(re.compile(r"\?comparison=\d+$"))
    page.get_by_label("Items").fill("0")
    page.get_by_role("button", name="Recommend").click()
    expect(page.get_by_role("alert")).to_have_text(f"INVALID_ARGUMENT: {direct.value.details()}")
    expect(page.locator("#lists li")).to_have_count(0)
    # Nothing of the previous comparison is left to be reloaded or mistaken for this request's answer.
    expect(page.locator("#status")).to_have_text("")
    assert "comparison=" not in page.url


def test_an_answer_that_is_not_json_shows_what_came_back(page, gateway_url):
    """A proxy's HTML error page used to show as the browser's JSON parse error."""
    page.route("**/v1/study/comparisons", lambda route: route.fulfill(status=502, content_type="text/html", body="<html><body>Bad gateway</body></html>"))
    page.goto(gateway_url)
    page.get_by_label("Request").fill("boots")
    page.get_by_role("button", name="Recommend").click()
    expect(page.get_by_role("alert")).to_have_text("HTTP 502: Bad Gateway")


def test_blind_mode_shows_unlabelled_lists(browser, tmp_path, gateway_ranker, gateway_catalog, gateway_items):
    from tests.servers import start_gateway

    gateway = start_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, tmp_path / "state", "--blind")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"http://127.0.0.1:{gateway.port}/")
        page.get_by_label("Request").fill("something to wear")
        page.get_by_label("Recent item ids").fill(WATCH_IDS[0])
        page.get_by_role("button", name="Recommend").click()
        expect(page.locator("#list-left h2")).to_have_text("List A")
        expect(page.locator("#list-right h2")).to_have_text("List B")
        expect(page.locator("#list-left li")).to_have_count(10)
        lists = page.locator("#lists").inner_text()
        for label in ("Personalized", "Non-personal", "path", "affinity", "query match"):
            assert label not in lists
    finally:
        context.close()
        gateway.stop()


@pytest.fixture
def shop_origin(tmp_path):
    """A shop's front end on another origin (another loopback port): a real HTTP server of one empty page."""
    root = tmp_path / "shop"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>shop</title>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


FETCH_RECOMMEND = """async ([url, recent]) => {
    try {
        const response = await fetch(url + "/v1/recommend", {
            method: "POST", headers: {"content-type": "application/json", "x-request-id": "shop-call-1"},
            body: JSON.stringify({query: "something to wear", top_k: 3, recent_item_ids: recent}),
        });
        const body = await response.json();
        return {status: response.status, items: (body.items || []).length, requestId: response.headers.get("x-request-id")};
    } catch (error) {
        return {error: String(error)};
    }
}"""


def test_a_page_on_an_allowed_origin_calls_the_api_and_others_are_refused(browser, tmp_path, shop_origin, gateway_url, gateway_ranker,
                                                                          gateway_catalog, gateway_items):
    from tests.servers import start_gateway

    gateway = start_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, tmp_path / "state", "--cors-origins", shop_origin)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{shop_origin}/")
        # A JSON POST with a custom header: the browser asks first (preflight), then reads the answer and its request id.
        allowed = page.evaluate(FETCH_RECOMMEND, [f"http://127.0.0.1:{gateway.port}", WATCH_IDS[:1]])
        assert allowed == {"status": 200, "items": 3, "requestId": "shop-call-1"}, allowed
        # A refusal is readable by the page too, so it can show why.
        refused = page.evaluate(FETCH_RECOMMEND.replace("top_k: 3", "top_k: 0"), [f"http://127.0.0.1:{gateway.port}", []])
        assert refused == {"status": 400, "items": 0, "requestId": "shop-call-1"}, refused
        # The gateway without --cors-origins (the default): the browser refuses the shop's page the answer.
        assert "Failed to fetch" in page.evaluate(FETCH_RECOMMEND, [gateway_url, []]).get("error", ""), "the default must allow no other origin"
        # Preflights never reach the gateway's own middleware (CORS answers them): they are counted all the same,
        # under the route they ask about, refused ones too.
        base = f"http://127.0.0.1:{gateway.port}"
        stranger = httpx.options(f"{base}/v1/recommend", headers={"origin": "https://elsewhere.example", "access-control-request-method": "POST"})
        assert stranger.status_code == 400
        metrics = httpx.get(f"{base}/metrics").text
        allowed_preflights = re.search(r'^whisperlite_gateway_requests_total\{method="OPTIONS",route="/v1/recommend",status="200"\} (\S+)$', metrics, re.M)
        assert allowed_preflights and float(allowed_preflights[1]) >= 1, metrics
        assert re.search(r'^whisperlite_gateway_requests_total\{method="OPTIONS",route="/v1/recommend",status="400"\} 1\.0$', metrics, re.M), metrics
        assert re.search(r'^whisperlite_gateway_request_seconds_count\{method="OPTIONS",route="/v1/recommend"\} ', metrics, re.M), metrics
    finally:
        context.close()
        gateway.stop()


def test_cors_origins_are_checked_at_start_up(tmp_path, gateway_ranker, gateway_catalog):
    from tests.servers import launch_gateway

    gateway = launch_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, tmp_path / "state", "--cors-origins", "shop.example")
    try:
        assert gateway.process.wait(timeout=60) != 0
        assert "cors-origins: 'shop.example' is not an origin: write scheme://host[:port]" in gateway.log()
    finally:
        gateway.stop()
