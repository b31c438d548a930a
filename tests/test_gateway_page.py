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
    expect(_item(page, "right", 1).locator(".explain")).to_contain_text(re.compile(r"^score -?\d+\.\d{3} · query match "))
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
    """Nothing on a blind page tells the lists apart but the items themselves: the score it showed did (the
    non-personal list's scores were all above the personalized ones)."""
    from tests.servers import start_gateway

    gateway = start_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, tmp_path / "state", "--blind")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"http://127.0.0.1:{gateway.port}/")
        page.get_by_label("Request").fill("something to wear")
        page.get_by_label("Recent item ids").fill(WATCH_IDS[0])
        with page.expect_response("**/v1/study/comparisons") as answer:
            page.get_by_role("button", name="Recommend").click()
        expect(page.locator("#list-left h2")).to_have_text("List A")
        expect(page.locator("#list-right h2")).to_have_text("List B")
        expect(page.locator("#list-left li")).to_have_count(10)
        expect(page.locator("#list-right li")).to_have_count(10)
        for shown in answer.value.json()["lists"]:  # what the page got holds no field that differs by side
            assert set(shown) == {"position", "items"}
            assert all(set(item) == {"rank", "item_id", "title", "relevant"} for item in shown["items"])
        expect(page.locator("#lists .explain")).to_have_count(0)
        for position in ("left", "right"):
            expect(page.locator(f"#list-{position} .meta")).to_have_text("")
            for rank in range(1, 11):  # an item shows its title and the two buttons, nothing else
                item = _item(page, position, rank)
                text = item.inner_text().replace(item.locator(".title").inner_text(), "", 1)
                assert text.split() == ["Relevant", "Not", "relevant"], (position, rank, text)
        lists = page.locator("#lists").inner_text()
        for label in ("Personalized", "Non-personal", "path", "model", "score", "affinity", "query match"):
            assert label not in lists
    finally:
        context.close()
        gateway.stop()


SHOPPER_TOKEN = "shopper-token-for-the-study-0123"
ADMIN_TOKEN = "admin-token-without-recommend-0123"


def test_on_a_secured_gateway_the_page_asks_for_a_token_and_sends_it(browser, tmp_path, gateway_ranker, gateway_catalog, gateway_items):
    """With --auth-tokens-file every /v1/study route needs a token with the 'recommend' scope, and the page sent
    none and could take none: on a secured stack it showed only UNAUTHENTICATED. It now asks for a token when the
    gateway refuses it, keeps it in the tab's sessionStorage and sends it as a bearer token with every call."""
    from tests.servers import start_gateway

    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{SHOPPER_TOKEN} recommend\n{ADMIN_TOKEN} admin\n")
    gateway = start_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, tmp_path / "state", "--auth-tokens-file", str(tokens))
    base = f"http://127.0.0.1:{gateway.port}"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        policy_errors, study_calls = [], []
        page.on("console", lambda message: message.type == "error" and "Content Security Policy" in message.text and policy_errors.append(message.text))
        page.on("request", lambda request: "/v1/study/" in request.url and study_calls.append((request.url, request.headers.get("authorization"))))
        alert, token_form = page.get_by_role("alert"), page.locator("#token-form")

        page.goto(f"{base}/")  # its first call (the users to offer) is refused: the page says why and asks
        expect(alert).to_have_text(
            "This gateway needs an access token (UNAUTHENTICATED: missing 'authorization' metadata: send 'authorization: Bearer <token>'). "
            "Paste a token with the 'recommend' scope."
        )
        expect(token_form).to_be_visible()
        expect(page.get_by_label("Access token")).to_be_focused()

        page.get_by_label("Access token").fill(ADMIN_TOKEN)
        page.get_by_role("button", name="Use token").click()
        expect(alert).to_have_text(
            "This token may not use the study (PERMISSION_DENIED: GET /v1/study/users needs the 'recommend' scope; this token has admin). "
            "Paste a token with the 'recommend' scope."
        )
        expect(token_form).to_be_visible()
        page.get_by_label("Access token").fill("not-a-token-this-gateway-knows")
        page.get_by_role("button", name="Use token").click()
        expect(alert).to_have_text(
            "The gateway does not accept this token (UNAUTHENTICATED: unknown or revoked bearer token). Paste a valid token with the 'recommend' scope."
        )
        assert page.evaluate("sessionStorage.length") == 0, "a refused token is not kept"

        page.get_by_label("Access token").fill(f"Bearer {SHOPPER_TOKEN}")  # as copied from a curl line, prefix and all
        page.get_by_role("button", name="Use token").click()
        expect(token_form).to_be_hidden()
        expect(alert).to_be_hidden()
        expect(page.locator("#token-state")).to_be_visible()
        page.get_by_label("Request").fill("something to wear")
        page.get_by_label("Recent item ids").fill(WATCH_IDS[0])
        page.get_by_label("Items").fill("4")
        page.get_by_role("button", name="Recommend").click()
        expect(page.locator("#list-left li")).to_have_count(4)
        expect(page.locator("#list-left .meta")).to_contain_text("path RECENT_ITEMS")
        page.get_by_role("button", name="Relevant: left list, rank 1", exact=True).click()
        expect(_item(page, "left", 1)).to_have_attribute("data-judged", "true")
        comparison = re.search(r"\?comparison=(\d+)$", page.url)[1]
        stored = httpx.get(f"{base}/v1/study/comparisons/{comparison}", headers={"authorization": f"Bearer {SHOPPER_TOKEN}"}, timeout=30).json()
        assert stored["judged"] == 1 and stored["lists"][0]["items"][0]["relevant"] is True

        # The token goes in the Authorization header of every call and nowhere else: not the address, not localStorage.
        tried = [authorization for _, authorization in study_calls]
        assert tried[:3] == [None, f"Bearer {ADMIN_TOKEN}", "Bearer not-a-token-this-gateway-knows"], tried
        accepted = study_calls[3:]  # the users (made again), the comparison, the judgement
        assert [url.removeprefix(f"{base}/v1/study/") for url, _ in accepted] == ["users", "comparisons", f"comparisons/{comparison}/judgements"]
        assert all(authorization == f"Bearer {SHOPPER_TOKEN}" for _, authorization in accepted), accepted
        assert all(SHOPPER_TOKEN not in url for url, _ in study_calls)
        assert SHOPPER_TOKEN not in page.url
        assert page.evaluate("localStorage.length") == 0
        assert page.evaluate("sessionStorage.getItem('whisperlite.study.token')") == SHOPPER_TOKEN

        page.reload()  # the same tab keeps its token
        expect(_item(page, "left", 1)).to_have_attribute("data-judged", "true")
        expect(token_form).to_be_hidden()

        # Another tab has its own sessionStorage: it asks again, then shows the comparison it was opened on.
        other = context.new_page()
        other.set_default_timeout(TIMEOUT_MS)
        other.goto(f"{base}/?comparison={comparison}")
        expect(other.get_by_role("alert")).to_contain_text("This gateway needs an access token")
        expect(other.locator("#lists li")).to_have_count(0)
        other.get_by_label("Access token").fill(SHOPPER_TOKEN)
        other.get_by_role("button", name="Use token").click()
        expect(_item(other, "left", 1)).to_have_attribute("data-judged", "true")
        expect(other.get_by_role("alert")).to_be_hidden()

        # Forgetting the token: the next call is refused and the page asks again.
        page.get_by_role("button", name="Forget token").click()
        expect(token_form).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        page.get_by_role("button", name="Not relevant: left list, rank 1", exact=True).click()
        expect(alert).to_contain_text("This gateway needs an access token")
        expect(_item(page, "left", 1)).to_have_attribute("data-judged", "true")  # the refused mark was not stored
        # The mark refused for want of a token is made once one is given.
        page.get_by_label("Access token").fill(SHOPPER_TOKEN)
        page.get_by_role("button", name="Use token").click()
        expect(_item(page, "left", 1)).to_have_attribute("data-judged", "false")
        assert policy_errors == []
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
