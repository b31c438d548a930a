"""The HTTP/JSON gateway against the real ranker, catalog and encoder: same answers and messages as gRPC."""

import asyncio
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent import futures

import grpc
import httpx
import pytest

from tests.fixtures_gateway import WATCH_IDS
from tests.servers import free_port, launch_gateway, start_service
from whisperlite.services.gateway.schema import PROTO_OF
from whisperlite.services.gateway.status import http_status
from whisperlite.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc


@pytest.fixture(scope="module")
def http(gateway_url):
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def ranker(gateway_ranker):
    with grpc.insecure_channel(gateway_ranker.address) as channel:
        yield ranker_pb2_grpc.RankerServiceStub(channel)


def _model_of(schema: dict, components: dict) -> str | None:
    """The component a property refers to (directly, through anyOf with null, or as array items)."""
    for candidate in [schema, *schema.get("anyOf", []), schema.get("items", {})]:
        if "$ref" in candidate:
            return candidate["$ref"].rsplit("/", 1)[-1]
    return None


def test_openapi_schema_has_the_protos_field_names(http):
    openapi = http.get("/openapi.json").json()
    components = openapi["components"]["schemas"]
    names = {model.__name__: message for model, message in PROTO_OF.items()}
    for model_name, message in names.items():
        properties = components[model_name]["properties"]
        fields = message.DESCRIPTOR.fields_by_name
        assert set(properties) == set(fields), f"{model_name} drifted from {message.DESCRIPTOR.full_name}"
        for name, field in fields.items():
            if field.message_type is not None and not field.message_type.GetOptions().map_entry:
                # A nested message is the model that mirrors that message.
                assert names[_model_of(properties[name], components)].DESCRIPTOR is field.message_type, f"{model_name}.{name}"
    assert components["RecommendResponse"]["properties"]["path"]["enum"] == list(ranker_pb2.PersonalizationPath.keys())
    paths = openapi["paths"]
    assert paths["/v1/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendRequest")
    assert {"/v1/items/{item_id}", "/v1/items", "/health"} <= set(paths), sorted(paths)


def test_recommend_over_http_answers_what_grpc_answers(http, ranker, gateway_items):
    body = {"user_id": "", "query": "a watch for a formal dinner", "top_k": 5, "filter": {"max_price": 45.0}}
    response = http.post("/v1/recommend", json=body, headers={"x-request-id": "study-42"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "study-42"
    data = response.json()
    assert data["request_id"] == "study-42"  # the ranker received the caller's id
    direct = ranker.Recommend(
        ranker_pb2.RecommendRequest(query=body["query"], top_k=5, filter=common_pb2.ItemFilter(max_price=45.0)), timeout=30
    )
    assert [i["item"]["item_id"] for i in data["items"]] == [i.item.item_id for i in direct.items]
    assert [i["score"] for i in data["items"]] == pytest.approx([i.score for i in direct.items], abs=1e-5)
    assert data["path"] == "PERSONALIZATION_PATH_TEXT_ONLY"
    assert all(i["item"]["price"] <= 45.0 for i in data["items"])
    assert data["items"][0]["item"]["category"] == "watches"
    assert data["missing_recent_item_ids"] == []
    session = http.post("/v1/recommend", json={"query": "a watch", "top_k": 3, "recent_item_ids": [gateway_items[0]["item_id"], "gw-gone"]})
    assert session.status_code == 200 and session.json()["missing_recent_item_ids"] == ["gw-gone"], session.text


def test_a_request_id_is_minted_when_the_caller_sends_none(http, gateway_items):
    response = http.post("/v1/recommend", json={"query": "winter coat", "top_k": 2})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_an_unusable_request_id_is_refused(http):
    response = http.post("/v1/recommend", json={"query": "coat", "top_k": 2}, headers={"x-request-id": "has spaces in it"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("x-request-id: must be")


def test_a_request_id_sent_twice_is_refused(http):
    """Both were accepted and the first one used, while a proxy or log reader in front may have keyed on the other."""
    response = http.post("/v1/recommend", json={"query": "coat", "top_k": 2}, headers=[("x-request-id", "a-1"), ("X-Request-Id", "a-2")])
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {
        "code": "INVALID_ARGUMENT",
        "message": "x-request-id: given 2 times; send it once (a request id names one request: logs and traces key on it)",
    }
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])  # the refusal's own id, neither of the two


@pytest.mark.parametrize(
    "body",
    [
        {"query": "boots", "top_k": 0},
        {"query": "   ", "top_k": 5},
        {"query": "boots", "top_k": 100_000},
        {"query": "boots", "top_k": 5, "filter": {"min_price": 50, "max_price": 10}},
        {"query": "boots", "top_k": 5, "recent_item_ids": [""]},
        {"query": "boots", "top_k": 5, "filter": {"categories": ["watches", "   "]}},
        {"query": "boots", "top_k": 5, "filter": {"exclude_item_ids": [""]}},
    ],
)
def test_bad_input_gets_the_grpc_status_and_message(http, ranker, body):
    response = http.post("/v1/recommend", json=body)
    with pytest.raises(grpc.RpcError) as direct:
        filter_ = common_pb2.ItemFilter(**body.pop("filter", {}))
        ranker.Recommend(ranker_pb2.RecommendRequest(filter=filter_, **body), timeout=30)
    assert direct.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "INVALID_ARGUMENT", "message": direct.value.details()}}


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ([""], "filter.categories[0]: is empty; a category must contain a visible character (send no categories to keep every category)"),
        (["watches", "\u200b"], "filter.categories[1]: '\\u200b' has no visible character; a category must contain one, not only spaces or "
                                "invisible (format) characters (send no categories to keep every category)"),
    ],
)
def test_a_filter_category_that_names_none_is_refused_naming_it(http, gateway_items, categories, message):
    """An empty category was a filter for the items stored without one (none here: the answer was an empty 200)."""
    response = http.post("/v1/recommend", json={"query": "a watch", "top_k": 5, "filter": {"categories": categories}})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"code": "INVALID_ARGUMENT", "message": message}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"query": "boots", "top_k": "five"}, ["top_k"]),
        ({"query": "boots", "topk": 5}, ["topk"]),
        ({"query": "boots", "top_k": 2**40}, ["top_k"]),
        ({"query": ["boots"], "top_k": 5, "filter": {"categories": "shoes"}}, ["query", "filter.categories"]),
    ],
)
def test_json_that_does_not_fit_the_proto_names_the_field(http, body, fields):
    response = http.post("/v1/recommend", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    for field in fields:
        assert field in error["message"]


def test_a_body_that_is_not_json_is_invalid_argument(http):
    response = http.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"query": "red dress", "query": "boots", "top_k": 2}', "query"),
        (b'{"query": "red dress", "top_k": 2, "top_k": 3}', "top_k"),
        (b'{"query": "red dress", "filter": {"min_price": 1, "min_price": 500}}', "filter.min_price"),
        (b'{"items": [{"item_id": "a"}, {"item_id": "b", "attributes": {"size": "S", "size": "M"}}]}', "items[1].attributes.size"),
    ],
)
def test_a_field_given_twice_is_invalid_argument_naming_it(http, raw, field):
    """The last one won: {"query": "red dress", "query": "boots"} searched boots, {"top_k": 2, "top_k": 3} gave 3. A nested
    field is named by its path (it was named `min_price` alone)."""
    path = "/v1/items" if raw.startswith(b'{"items"') else "/v1/recommend"
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"code": "INVALID_ARGUMENT", "message": f"{field}: given more than once in one JSON object; send each field once"}


def test_get_item_and_a_missing_item(http, gateway_items):
    response = http.get("/v1/items/gw-boots-0")
    assert response.status_code == 200
    item = response.json()
    assert (item["title"], item["category"], item["price"], item["vector"]) == ("Black leather ankle boots", "boots", 20.0, [])
    with_vector = http.get("/v1/items/gw-boots-0", params={"include_vectors": "true"}).json()
    assert len(with_vector["vector"]) == 384
    missing = http.get("/v1/items/no-such-item")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "NOT_FOUND", "message": "item_id: 'no-such-item' is not in the catalog"}}


def test_query_strings_are_refused_in_the_error_shape_and_the_page_s_own_address_is_not_the_api_s(http, gateway_items):
    """The /v1 routes read their query strings as strictly as bodies; the page's address carries ?comparison=ID."""
    twice = http.get("/v1/items/gw-boots-0?include_vectors=false&include_vectors=true")
    assert twice.status_code == 400
    assert twice.json() == {"error": {"code": "INVALID_ARGUMENT", "message": "include_vectors: given 2 times; send it once"}}
    assert http.get("/v1/items/gw-boots-0?include_vectors=false").json()["vector"] == []
    assert http.get("/?comparison=1").status_code == 200


def test_an_id_with_a_slash_and_unknown_routes(http, gateway_items):
    assert http.post("/v1/items", json={"items": [{"item_id": "gw/with/slashes", "title": "Striped silk scarf"}]}).status_code == 200
    assert http.get("/v1/items/gw/with/slashes").json()["title"] == "Striped silk scarf"
    unknown = http.get("/v1/no-such-route")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": {"code": "NOT_FOUND", "message": "no route GET /v1/no-such-route (the routes: /docs)"}}
    assert http.post("/v1/recommend/", json={"query": "boots", "top_k": 1}).status_code == 404  # not an empty 307
    assert http.head("/health").status_code == 200 and http.head("/").status_code == 200  # what load balancers probe with
    for path in ("/v1/items/gw/with/slashes", "/metrics", "/v1/study/users", "/health/liveness"):  # every GET route takes HEAD
        head = http.head(path)
        assert head.status_code == 200 and head.content == b"", (path, head.status_code)
    assert http.head("/v1/items/no-such-item").status_code == 404
    # Starlette's route patterns let a final newline through: /v1/items/ID%0A was the item ID.
    for path in ("/v1/items/gw/with/slashes%0A", "/v1/recommend%0A", "/v1/items/a%00b"):
        refused = http.get(path)
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["error"]["message"].startswith("path: must not hold control characters, got '/v1/")
    wrong_method = http.delete("/v1/recommend")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"] == {"code": "UNIMPLEMENTED", "message": "DELETE is not allowed on /v1/recommend; use POST"}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        ("GET", "/v1/study/comparisons/99999999999999999999", None, {}, 400, "comparison_id: Input should be less than or equal to"),
        ("PUT", "/v1/study/comparisons/1/judgements", {"position": "left", "rank": 10**20, "relevant": True}, {}, 400, "rank: Input should be less than or equal to"),
        ("PUT", "/v1/study/comparisons/1/judgements", {"position": "left", "rank": 1, "relevant": "no"}, {}, 400, "relevant: Input should be a valid boolean"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": True}, {}, 400, "top_k: Value error, expected a number, got true/false"),
        ("POST", "/v1/recommend", {"query": 5, "top_k": 1}, {}, 400, "query: Input should be a valid string"),
        ("POST", "/v1/recommend", b'{"query": "boots", "top_k"', {}, 400, "body: not valid JSON (EOF while parsing"),
        ("POST", "/v1/recommend", b'{"query": "\xff", "top_k": 1}', {}, 400, "body: not valid JSON"),
        ("POST", "/v1/recommend", b"query=boots", {"content-type": "application/x-www-form-urlencoded"}, 415, "content-type: must be application/json"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1}, {"authorization": b"Bearer \xff\x7f"}, 401, "authorization: a non-ASCII character at position 8 of 9"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1}, {"authorization": "Bearer " + "t" * 20_000}, 401, "authorization: at most 7168 characters, got 20007"),
        ("GET", "/v1/items/" + "x" * 300, None, {}, 400, "item_id: at most 256 characters, got 300"),
        # uvicorn read these bytes as U+FFFD, so /v1/items/a%ff and /v1/items/a%fe were one item.
        ("GET", "/v1/items/a%ff", None, {}, 400, "path: its %-escapes are not UTF-8 (invalid start byte at byte 11)"),
        # Protobuf's JSON parser refused the floats with "use quoted "NaN" instead", which the caller had done.
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1, "filter": {"min_price": "NaN"}}, {}, 400, "filter.min_price: must be a finite number, got nan"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1, "filter": {"max_price": "-Infinity"}}, {}, 400, "filter.max_price: must be a finite number, got -inf"),
        # no price is negative: the range matched nothing and answered 200 with no items
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1, "filter": {"min_price": -5, "max_price": -1}}, {}, 400,
         "filter.min_price: must be at least 0 (prices are never negative), got -5"),
        ("POST", "/v1/recommend", b'{"query": "boots", "top_k": 1}', {"content-type": "application/json", "content-encoding": "gzip"}, 415,
         "content-encoding: 'gzip' is not accepted; send the body uncompressed"),
        # The first header won: a body the second one declared gzip was read as JSON.
        ("POST", "/v1/recommend", b'{"query": "boots", "top_k": 1}', [("content-encoding", "identity"), ("content-encoding", "gzip")], 400,
         "content-encoding: given 2 times; send it once"),
        ("POST", "/v1/recommend", b'{"query": "boots", "top_k": 1}', [("content-type", "application/json"), ("content-type", "text/plain")], 400,
         "content-type: given 2 times; send it once"),
        # A boolean only as JSON's true/false: "no", 1 and 0.0 were all taken.
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1, "include_history_items": "no"}, {}, 400, "include_history_items: Input should be a valid boolean"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1, "include_history_items": 1}, {}, 400, "include_history_items: Input should be a valid boolean"),
        # Numbers in strings only as JSON writes them (proto3's JSON mapping): "1_0" was 10, " 2 " and "+2" were 2.
        ("POST", "/v1/recommend", {"query": "boots", "top_k": "1_0"}, {}, 400, "top_k: Value error, expected a number, or a string of one as JSON writes it"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": " 2 "}, {}, 400, "got ' 2 '"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": "+2"}, {}, 400, "got '+2'"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1, "filter": {"max_price": "1_000"}}, {}, 400, "filter.max_price: Value error, expected a number"),
        ("POST", "/v1/items", {"items": [{"item_id": "gw-lax-price", "price": "1_0"}]}, {}, 400, "items[0].price: Value error, expected a number"),
        # Past an upstream's per-call limit: refused before the body is converted.
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1, "recent_item_ids": ["gw-boots-0"] * 51}, {}, 400,
         "recent_item_ids: at most 50 values, got 51"),
        ("POST", "/v1/recommend", {"query": "boots", "top_k": 1, "filter": {"exclude_item_ids": ["x"] * 1001}}, {}, 400,
         "filter.exclude_item_ids: at most 1000 values, got 1001"),
        ("POST", "/v1/items", {"items": [{}] * 1001}, {}, 400, "items: at most 1000 values, got 1001"),
        # Query strings and path integers as strict as bodies: the last of a repeated parameter won, a misspelt one was
        # dropped, yes/1/on were true, and comparisons/%201, /+1 and /01 were comparison 1.
        ("GET", "/v1/items/gw-boots-0?include_vectors=true&include_vectors=false", None, {}, 400, "include_vectors: given 2 times; send it once"),
        ("GET", "/v1/items/gw-boots-0?include_vector=true", None, {}, 400,
         "include_vector: not a query parameter of /v1/items/{item_id}; it takes include_vectors"),
        ("GET", "/v1/items/gw-boots-0?include_vectors=yes", None, {}, 400, "include_vectors: must be true or false, got 'yes'"),
        ("GET", "/v1/items/gw-boots-0?include_vectors=1", None, {}, 400, "include_vectors: must be true or false, got '1'"),
        ("GET", "/v1/items/gw-boots-0?include_vectors", None, {}, 400, "include_vectors: must be true or false, got ''"),
        ("GET", "/v1/study/users?user_id=u1", None, {}, 400, "user_id: not a query parameter of /v1/study/users; it takes none"),
        ("POST", "/v1/recommend?top_k=5", {"query": "boots", "top_k": 1}, {}, 400, "top_k: not a query parameter of /v1/recommend; it takes none"),
        ("GET", "/v1/study/comparisons/%201", None, {}, 400,
         "comparison_id: Value error, expected a whole number as JSON writes it (1, 42), got ' 1'"),
        ("GET", "/v1/study/comparisons/+1", None, {}, 400, "comparison_id: Value error, expected a whole number as JSON writes it (1, 42), got '+1'"),
        ("GET", "/v1/study/comparisons/01", None, {}, 400, "comparison_id: Value error, expected a whole number as JSON writes it (1, 42), got '01'"),
        ("PUT", "/v1/study/comparisons/1_0/judgements", {"position": "left", "rank": 1, "relevant": True}, {}, 400,
         "comparison_id: Value error, expected a whole number as JSON writes it (1, 42), got '1_0'"),
    ],
    ids=[
        "comparison-id-past-int64", "rank-past-int64", "relevant-as-a-word", "top-k-as-a-bool", "query-as-a-number", "cut-json",
        "not-utf8", "form-body", "authorization-not-ascii", "authorization-too-long", "item-id-too-long", "path-not-utf8",
        "nan-as-text", "minus-infinity-as-text", "negative-price-range", "compressed-body", "content-encoding-twice", "content-type-twice",
        "bool-as-a-word", "bool-as-a-number", "int-with-underscore", "int-with-spaces", "int-with-plus", "float-with-underscore",
        "item-price-with-underscore", "too-many-recent-items", "too-many-excluded-ids", "too-many-items",
        "query-parameter-twice", "query-parameter-misspelt", "query-bool-as-a-word", "query-bool-as-a-number", "query-bool-without-a-value",
        "query-parameter-of-a-route-with-none", "query-parameter-beside-a-body", "path-int-with-a-space", "path-int-with-plus",
        "path-int-with-a-leading-zero", "path-int-with-underscore",
    ],
)
def test_hostile_requests_get_a_precise_answer_with_a_request_id(gateway_url, method, path, body, headers, status, message):
    """Each of these used to be a 500 (an overflow in the store, an Authorization header gRPC cannot carry: uvicorn then also
    reset the connection and the answer had no request id), a 429 (retried for ever), or was accepted (`"relevant": "no"`)."""
    content = body if isinstance(body, bytes) else None
    with httpx.Client(base_url=gateway_url, timeout=60) as client:  # one connection: it must survive the answer
        response = client.request(method, path, json=None if content else body, content=content, headers=headers)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]["message"]
        assert response.headers["x-request-id"]
        assert client.get("/health").status_code == 200


def test_a_request_framed_both_ways_is_refused_and_its_connection_closed(gateway):
    """Content-Length and Transfer-Encoding together: the gateway read the chunked body and kept the connection, so a
    proxy in front that framed it by Content-Length could have a second request smuggled past it (RFC 9112, 6.1)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n1e\r\n" + b'{"query": "boots", "top_k": 1}' + b"\r\n0\r\n\r\n"
                     b"GET /health/liveness HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert b"send Content-Length or Transfer-Encoding, not both" in received
    assert received.count(b"HTTP/1.1 ") == 1, "the pipelined request behind it was not answered: the connection closed"


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /health/liveness HTTP/1.1\r\n\r\n",  # no Host
    ],
    ids=["negative-content-length", "content-length-twice", "bad-chunk-size", "no-host"],
)
def test_a_request_that_is_not_valid_http_gets_the_json_error_with_a_request_id(gateway, head):
    """uvicorn answered these "Invalid HTTP request received." in plain text, without a request id or security headers."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    answer = httpx.Response(400, content=received.partition(b"\r\n\r\n")[2])
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert b"\r\ncontent-type: application/json\r\n" in received and re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", received)
    assert b"\r\nx-content-type-options: nosniff\r\n" in received.lower()
    assert answer.json()["error"]["code"] == "INVALID_ARGUMENT" and "not valid HTTP/1.1" in answer.json()["error"]["message"]


def test_range_errors_on_the_page_s_files_come_in_the_error_shape(http):
    """Starlette answered these in plain text (or nothing, for 416), unlike every other failure."""
    for headers, status, message in (
        ({"range": "bytes=5-1"}, 400, "Range header: start must be less than end"),
        ({"range": "bytes=abc"}, 400, "Range header: range must be requested"),
        ({"range": "bytes=99999999-"}, 416, "range: not within the file"),
    ):
        answer = http.get("/static/study.js", headers=headers)
        assert answer.status_code == status and answer.json()["error"]["message"] == message, (headers, answer.text)
        assert answer.headers["x-request-id"]
    assert http.get("/static/study.js", headers={"range": "bytes=99999999-"}).headers["content-range"].startswith("bytes */")
    assert http.get("/static/study.js", headers={"range": "bytes=0-9"}).status_code == 206


def test_an_absolute_form_target_is_read_as_its_path(gateway):
    """RFC 9112 has a server accept `GET http://host/path`; it was a 404 naming "http://host/path" as the path."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"GET http://other.example/health/liveness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]
    assert received.endswith(b'{"status":"SERVING"}'), received[-200:]


def test_a_target_that_is_no_url_is_400_in_the_error_shape(gateway):
    """`GET http://[/health` (an unclosed IPv6 host) was a 500 in plain text with a traceback in the log, without a request
    id or the security headers, and not counted."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"GET http://[/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), received[:300]
    assert json.loads(body) == {"error": {"code": "INVALID_ARGUMENT", "message": "request target: not a URL (Invalid IPv6 URL), got 'http://[/health'"}}
    headers = dict(line.lower().split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]) and headers["x-content-type-options"] == "nosniff", headers
    metrics = httpx.get(f"http://127.0.0.1:{gateway.port}/metrics", timeout=30).text
    assert re.search(r'^whisperlite_gateway_requests_total\{method="GET",route="unmatched",status="400"\} ', metrics, re.M), metrics
    assert "Invalid IPv6 URL" not in gateway.log()


def _liveness_while(gateway_url: str, send: Callable[[], httpx.Response]) -> tuple[httpx.Response, float, float]:
    """(send's answer, the seconds it took, the slowest /health/liveness asked meanwhile, one after another)."""
    with futures.ThreadPoolExecutor(1) as pool, httpx.Client(base_url=gateway_url, timeout=60) as client:
        client.get("/health/liveness")  # connected before the body goes
        started = time.perf_counter()
        answer = pool.submit(send)
        slowest = 0.0
        while not answer.done():
            asked = time.perf_counter()
            assert client.get("/health/liveness").status_code == 200
            slowest = max(slowest, time.perf_counter() - asked)
        return answer.result(), time.perf_counter() - started, slowest


def test_a_body_past_an_upstream_limit_is_refused_before_it_is_converted(gateway_url):
    """85,000 empty items (255 KB) were converted whole on the event loop before the catalog (or, on a secured stack, the
    missing token) refused them: 5.8 s, while /health/liveness waited as long."""
    raw = b'{"items": [' + b",".join([b"{}"] * 85_000) + b"]}"
    answer, seconds, slowest = _liveness_while(
        gateway_url, lambda: httpx.post(f"{gateway_url}/v1/items", content=raw, headers={"content-type": "application/json"}, timeout=60)
    )
    assert answer.status_code == 400 and answer.json()["error"]["message"] == "items: at most 1000 values, got 85000", answer.text
    assert seconds < 1.5 and slowest < 0.5, (seconds, slowest)


def test_a_small_body_of_many_values_is_converted_off_the_event_loop(gateway_url):
    """A 240 KB vector of 120,000 numbers was under the 256 KiB read on the loop, and its conversion held the loop ~1 s:
    bodies of many values go to the worker thread whatever their size."""
    raw = b'{"items": [{"item_id": "gw-long-vector", "vector": [' + b",".join([b"0"] * 120_000) + b"]}]}"
    answer, _, slowest = _liveness_while(
        gateway_url, lambda: httpx.post(f"{gateway_url}/v1/items", content=raw, headers={"content-type": "application/json"}, timeout=60)
    )
    assert answer.status_code == 400 and "vector" in answer.json()["error"]["message"], answer.text  # the catalog's dimension
    assert slowest < 0.5, slowest


def test_an_item_without_a_price_has_price_null(http):
    """As docs/gateway.md says; the JSON left the key out, as protobuf does for an unset optional field."""
    assert http.post("/v1/items", json={"items": [{"item_id": "gw-no-price", "title": "a plain grey scarf"}]}).status_code == 200
    item = http.get("/v1/items/gw-no-price").json()
    assert "price" in item and item["price"] is None, item
    found = http.post("/v1/recommend", json={"query": "a plain grey scarf", "top_k": 3}).json()["items"]
    assert all("price" in scored["item"] for scored in found), found


def test_json_as_protobufs_mapping_reads_it(http, gateway_items):
    """Numbers may come as 3.0 or "3" (Python's json.dumps writes floats so), and a body may start with a BOM."""
    plain = http.post("/v1/recommend", json={"query": "black boots", "top_k": 2, "filter": {"max_price": 80}}).json()
    for body in ({"query": "black boots", "top_k": 2.0, "filter": {"max_price": "80"}}, {"query": "black boots", "top_k": "2", "filter": {"max_price": 80.0}}):
        answer = http.post("/v1/recommend", json=body)
        assert answer.status_code == 200, answer.text
        assert [i["item"]["item_id"] for i in answer.json()["items"]] == [i["item"]["item_id"] for i in plain["items"]]
    with_bom = http.post("/v1/recommend", content=b"\xef\xbb\xbf" + json.dumps({"query": "black boots", "top_k": 2}).encode(), headers={"content-type": "application/json"})
    assert with_bom.status_code == 200, with_bom.text


def test_the_page_files_are_counted_under_their_mount(http):
    assert http.get("/static/study.js").status_code == 200 and http.get("/static/none.js").status_code == 404
    metrics = http.get("/metrics").text
    assert re.search(r'^whisperlite_gateway_requests_total\{method="GET",route="/static",status="200"\} ', metrics, re.M), metrics
    assert re.search(r'^whisperlite_gateway_requests_total\{method="GET",route="/static",status="404"\} ', metrics, re.M), metrics


def test_two_authorization_headers_and_made_up_methods(gateway_url):
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        twice = client.post("/v1/recommend", json={"query": "boots", "top_k": 1}, headers=[("authorization", "Bearer a"), ("authorization", "Bearer b")])
        assert twice.status_code == 401 and twice.json()["error"]["message"] == "authorization: sent 2 times; send one header"
        assert client.request("X0METHOD", "/v1/recommend").status_code == 405
        client.get("/metrics")
        series = len(client.get("/metrics").text.splitlines())
        for i in range(1, 5):
            assert client.request(f"X{i}METHOD", "/v1/recommend").status_code == 405
        metrics = client.get("/metrics").text
        assert "METHOD" not in metrics and 'method="other"' in metrics
        # A method the route does not take is counted under the route its path names, not as an unknown path.
        assert re.search(r'^whisperlite_gateway_requests_total\{method="other",route="/v1/recommend",status="405"\} ', metrics, re.M), metrics
        assert len(metrics.splitlines()) == series  # made-up methods share the "other" series: /metrics does not grow


def test_the_largest_headers_the_gateway_forwards_pass_every_time(gateway_url, gateway_ranker):
    """An Authorization header at the gateway's limit with the longest tracestate and request id made ~8.6 KB of
    metadata, past gRPC's soft 8 KiB limit, which refuses at random: 2-3 of 60 such requests got 413 RESOURCE_EXHAUSTED.
    The services now take MAX_METADATA_BYTES (16 KiB), refused past it every time."""
    headers = {
        "authorization": "Bearer " + "t" * 7161, "tracestate": "k=" + "v" * 510, "x-request-id": "r" * 128,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }  # fmt: skip
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        statuses = [client.post("/v1/recommend", json={"query": "boots", "top_k": 1}, headers=headers).status_code for _ in range(40)]
    assert statuses == [200] * 40, statuses
    with grpc.insecure_channel(gateway_ranker.address) as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        request = ranker_pb2.RecommendRequest(query="boots", top_k=1)
        for _ in range(20):  # 12 KB: past the soft limit, under the hard one, so gRPC used to refuse at random
            stub.Recommend(request, metadata=[("x-padding", "p" * 12_000)], timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Recommend(request, metadata=[("x-padding", "p" * 17_000)], timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_bad_upsert_is_refused_and_keeps_what_is_stored(http, gateway_items):
    bad = {"items": [{"item_id": "gw-boots-0", "title": "overwritten"}, {"item_id": "dup", "title": "a"}, {"item_id": "dup", "title": "b"}]}
    response = http.post("/v1/items", json=bad)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT" and "dup" in response.json()["error"]["message"]
    assert http.get("/v1/items/gw-boots-0").json()["title"] == "Black leather ankle boots"


def test_an_oversized_request_is_413_naming_the_limit(http):
    """413, not 429: clients and proxies retry a 429, and this request can never succeed."""
    response = http.post("/v1/recommend", json={"query": "q" * (17 * 1024 * 1024), "top_k": 5})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED" and "(--max-message-bytes)" in response.json()["error"]["message"]


def test_a_long_string_is_sized_and_refused_without_holding_other_callers(gateway_url):
    """protobuf's ParseDict scanned a 50 MB query for lone surrogates, holding the GIL: 5 s to the 413 while every other
    caller, /health/liveness included, waited as long; a shorter one held them for its scan and then went upstream."""
    for text_bytes, status, words in ((40 * 1024 * 1024, 413, "(--max-message-bytes)"), (8 * 1024 * 1024, 400, "query: at most")):
        raw = b'{"query": "' + b"a" * text_bytes + b'", "top_k": 3}'
        answer, _, slowest = _liveness_while(
            gateway_url, lambda: httpx.post(f"{gateway_url}/v1/recommend", content=raw, headers={"content-type": "application/json"}, timeout=60)
        )
        assert answer.status_code == status and words in answer.json()["error"]["message"], answer.text[:300]
        assert slowest < 0.5, (text_bytes, slowest)


def test_long_strings_reach_the_proto_where_parse_dict_would_put_them():
    """Strings past LONG_STRING_CHARS skip ParseDict: in a field, a nested message, a list and a map (key or value)."""
    from google.protobuf import json_format

    from whisperlite.services.gateway.schema import LONG_STRING_CHARS, RecommendRequest, UpsertItemsRequest, to_proto
    from whisperlite.v1 import catalog_pb2, ranker_pb2

    long_text, other = "é" * (LONG_STRING_CHARS + 1), "z" * (LONG_STRING_CHARS * 2)
    request = {"query": long_text, "top_k": 3, "filter": {"categories": ["a", other, "b"], "exclude_item_ids": [other], "min_price": 1.5},
               "recent_item_ids": ["r", long_text]}  # fmt: skip
    assert to_proto(RecommendRequest(**request)) == json_format.ParseDict(request, ranker_pb2.RecommendRequest())
    items = {"items": [{"item_id": "i", "title": "short", "text": long_text, "attributes": {other: "v", "k": long_text, "s": "t"}},
                       {"item_id": other, "vector": [0.5, float("nan")]}]}  # fmt: skip
    expected = json_format.ParseDict({"items": [items["items"][0], {"item_id": other, "vector": [0.5, "NaN"]}]}, catalog_pb2.UpsertItemsRequest())
    assert to_proto(UpsertItemsRequest(**items)) == expected


def test_a_body_over_the_gateway_limit_is_refused_unread(tmp_path, gateway_ranker, gateway_catalog):
    from tests.servers import start_gateway

    gateway = start_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, tmp_path / "state", "--max-body-bytes", "1000")
    try:
        response = httpx.post(f"http://127.0.0.1:{gateway.port}/v1/recommend", json={"query": "q" * 2000, "top_k": 5}, timeout=30)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert "larger than the gateway's limit of 1000 (--max-body-bytes)" in response.json()["error"]["message"]
        assert httpx.post(f"http://127.0.0.1:{gateway.port}/v1/recommend", json={"query": "coat", "top_k": 1}, timeout=30).status_code == 200

        # Chunked (no Content-Length): read only up to the limit, then refused the same way.
        def chunks(total: int):
            body = json.dumps({"query": "q" * total, "top_k": 1}).encode()
            for start in range(0, len(body), 256):
                yield body[start : start + 256]

        chunked = httpx.post(f"http://127.0.0.1:{gateway.port}/v1/recommend", content=chunks(5000), timeout=30)
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413 and "(--max-body-bytes)" in chunked.json()["error"]["message"]
        small = httpx.post(f"http://127.0.0.1:{gateway.port}/v1/recommend", content=chunks(4), headers={"content-type": "application/json"}, timeout=30)
        assert small.status_code == 200, small.text
    finally:
        gateway.stop()


def _raw_post(port: int, declared: int, sent: bytes) -> "socket.socket":
    """A POST /v1/recommend declaring `declared` body bytes and sending only `sent` of them (the rest never comes)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
    sock.sendall(head.encode() + sent)
    return sock


def _raw_answer(sock: "socket.socket") -> tuple[int, str]:
    """(status, the rest of the answer) of a raw request, read until the server closes or sends its whole JSON."""
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data.decode(errors="replace")


def test_slow_stalled_and_abandoned_bodies_are_bounded(tmp_path, gateway_ranker, gateway_catalog):
    """Stalled uploads used to hold their connections and every byte sent for as long as their clients liked (eight
    60 MB uploads held 490 MB), and a client hanging up mid-body was a 500 with an ERROR traceback."""
    from tests.servers import start_gateway

    gateway = start_gateway(
        tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, tmp_path / "state",
        "--max-body-bytes", "100000", "--max-buffered-body-bytes", "150000", "--body-timeout-seconds", "2",
    )
    base = f"http://127.0.0.1:{gateway.port}"
    padded = lambda size: b'{"query": "boots", "top_k": 1}'.ljust(size)  # noqa: E731 JSON allows the trailing spaces
    try:
        # A body's bytes count as they arrive: what a connection only announces holds nothing (two idle connections
        # announcing 64 MB each used to refuse every other body for as long as they stalled).
        announced = [_raw_post(gateway.port, 100_000, b'{"query": ') for _ in range(3)]
        time.sleep(0.3)
        fits = httpx.post(f"{base}/v1/recommend", content=padded(80_000), headers={"content-type": "application/json"}, timeout=30)
        assert fits.status_code == 200, fits.text
        for sock in announced:
            sock.close()

        stalled = _raw_post(gateway.port, 100_000, b'{"query": "' + b"x" * 89_989)
        started = time.monotonic()
        time.sleep(0.3)  # the gateway holds the stalled body's 90,000 bytes
        refused = httpx.post(f"{base}/v1/recommend", content=padded(80_000), headers={"content-type": "application/json"}, timeout=30)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "(--max-buffered-body-bytes 150000); retry" in refused.json()["error"]["message"]
        assert httpx.post(f"{base}/v1/recommend", json={"query": "boots", "top_k": 1}, timeout=30).status_code == 200  # small ones fit

        status, answer = _raw_answer(stalled)
        waited = time.monotonic() - started
        assert status == 408 and "did not arrive within 2 s (--body-timeout-seconds): 90000 of 100000 bytes came" in answer, answer
        assert 1.5 < waited < 10, waited
        assert stalled.recv(1) == b""  # and the connection is closed
        stalled.close()
        again = httpx.post(f"{base}/v1/recommend", content=padded(80_000), headers={"content-type": "application/json"}, timeout=30)
        assert again.status_code == 200, again.text  # the stalled body's bytes were given back

        for _ in range(3):  # hang up mid-body (and the three announced bodies above)
            _raw_post(gateway.port, 1000, b'{"query"').close()
        time.sleep(1.0)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert re.search(r'whisperlite_gateway_requests_total\{method="POST",route="/v1/recommend",status="499"\} 6\.0', metrics), metrics
        assert not re.search(r'route="/v1/recommend",status="500"', metrics)
        assert "unexpected error" not in gateway.log()
    finally:
        gateway.stop()


def _trickle_until_answered(sock: "socket.socket", data: bytes, interval: float = 0.25) -> tuple[int, str, float]:
    """Sends `data` a byte every `interval` until the server answers: (status, answer, seconds it took)."""
    started = time.monotonic()
    for byte in data:
        if select.select([sock], [], [], interval)[0]:
            break
        sock.sendall(bytes([byte]))
    status, answer = _raw_answer(sock)
    return status, answer, time.monotonic() - started


def test_headers_that_come_too_slowly_get_408_and_lose_the_connection(tmp_path, gateway_ranker, gateway_catalog):
    """Slowloris: uvicorn bounds no header time, and each byte restarted its keep-alive timer, so a client sending its
    headers a byte at a time held a connection as long as it liked."""
    from tests.servers import start_gateway

    gateway = start_gateway(
        tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, tmp_path / "state",
        "--header-timeout-seconds", "1.5", "--body-timeout-seconds", "20",
    )
    endless_header = b"x-slow: " + b"a" * 400
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            status, answer, waited = _trickle_until_answered(sock, endless_header)
            assert status == 408 and "request headers did not arrive within 1.5 s (--header-timeout-seconds)" in answer, answer
            assert "x-content-type-options: nosniff" in answer
            assert 1.2 < waited < 6, waited
            assert sock.recv(1) == b""  # closed

        # On a kept-alive connection the next request's headers get the same time, from the previous answer.
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert _raw_answer(sock)[0] == 200
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            assert _trickle_until_answered(sock, endless_header)[0] == 408

        # Headers in time and a body that takes longer than the header timeout (within --body-timeout-seconds): answered.
        body = b'{"query": "boots", "top_k": 1}'
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(f"POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode())
            for start in range(0, len(body), 3):
                time.sleep(0.1)
                sock.sendall(body[start:start + 3])
            status, answer = _raw_answer(sock)
            assert status == 200, answer

        # A connection that sends nothing is closed without an answer, as an idle keep-alive one is.
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            assert sock.recv(1) == b""

        metrics = httpx.get(f"http://127.0.0.1:{gateway.port}/metrics", timeout=10).text
        assert re.search(r"^whisperlite_gateway_header_timeouts_total 2\.0$", metrics, re.M), metrics
        assert httpx.get(f"http://127.0.0.1:{gateway.port}/health", timeout=10).status_code == 200
    finally:
        gateway.stop()


def test_the_named_status_mapping():
    expected = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNKNOWN: 500,
    }
    assert {code: http_status(code) for code in expected} == expected


def test_every_answer_carries_the_security_headers_and_only_the_page_may_load_its_own_files(http):
    from whisperlite.services.gateway.browsers import NOTHING_POLICY, PAGE_POLICY

    answers = {
        "page": http.get("/"), "script": http.get("/static/study.js"), "health": http.get("/health"),
        "refused body": http.post("/v1/recommend", content=b"<script>alert(1)</script>", headers={"content-type": "application/json"}),
        "no route": http.get("/<img src=x onerror=alert(1)>"), "docs": http.get("/docs"),
    }
    assert answers["refused body"].status_code == 400 and answers["no route"].status_code == 404
    for name, answer in answers.items():
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["x-frame-options"] == "DENY", name
        assert answer.headers["referrer-policy"] == "no-referrer", name
    assert answers["page"].headers["content-security-policy"] == answers["script"].headers["content-security-policy"] == PAGE_POLICY
    for name in ("health", "refused body", "no route"):
        assert answers[name].headers["content-security-policy"] == NOTHING_POLICY, name
        assert answers[name].headers["content-type"] == "application/json", name
    assert "content-security-policy" not in answers["docs"].headers  # Swagger UI's inline script and CDN files


def test_health_and_metrics(http, gateway_items):
    assert http.get("/health").json() == {"status": "SERVING", "upstreams": {"ranker": "SERVING", "catalog": "SERVING"}}
    http.post("/v1/recommend", json={"query": "sandals", "top_k": 1})
    http.post("/v1/recommend", json={"query": "sandals", "top_k": 0})
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for status in ("200", "400"):
        line = re.search(
            rf'^whisperlite_gateway_requests_total{{method="POST",route="/v1/recommend",status="{status}"}} (\S+)$', metrics.text, re.M
        )
        assert line and float(line.group(1)) >= 1, status
    assert re.search(r'^whisperlite_gateway_request_seconds_count{method="POST",route="/v1/recommend"} [1-9]', metrics.text, re.M)


def _wait_for_http(url: str, process, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError(f"{url} never answered")


def test_an_unreachable_ranker_is_unavailable_and_health_says_so(tmp_path, gateway_catalog):
    ranker_address = f"127.0.0.1:{free_port()}"
    gateway = launch_gateway(tmp_path / "logs", ranker_address, gateway_catalog.address, tmp_path / "state", "--deadline-seconds", "3")
    try:
        base = f"http://127.0.0.1:{gateway.port}"
        _wait_for_http(f"{base}/health", gateway.process)
        health = httpx.get(f"{base}/health", timeout=30)
        assert health.status_code == 503
        assert health.json()["status"] == "NOT_SERVING"
        assert health.json()["upstreams"]["catalog"] == "SERVING" and health.json()["upstreams"]["ranker"] != "SERVING"
        liveness = httpx.get(f"{base}/health/liveness", timeout=30)  # what an orchestrator's liveness probe asks: not restarted for it
        assert (liveness.status_code, liveness.json()) == (200, {"status": "SERVING"})
        response = httpx.post(f"{base}/v1/recommend", json={"query": "boots", "top_k": 3}, timeout=30)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "UNAVAILABLE"
        assert response.json()["error"]["message"].startswith(f"ranker at {ranker_address}: ")  # gRPC's own text names no service
        probe = subprocess.run([sys.executable, "-m", "whisperlite", "health", f"{base}/health"], capture_output=True, text=True, timeout=60)
        assert (probe.returncode, probe.stdout.strip()) == (1, "NOT_SERVING")  # what the image's HEALTHCHECK runs
    finally:
        gateway.stop()


def test_the_health_command_probes_the_gateway_over_http(gateway_url, gateway_ranker):
    probe = subprocess.run([sys.executable, "-m", "whisperlite", "health", f"{gateway_url}/health"], capture_output=True, text=True, timeout=60)
    assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING")
    # Any HTTP server answers 200 somewhere: a probe pointed at a /metrics port by mistake passed.
    wrong = subprocess.run(
        [sys.executable, "-m", "whisperlite", "health", f"http://127.0.0.1:{gateway_ranker.metrics_port}/health"], capture_output=True, text=True, timeout=60
    )
    assert (wrong.returncode, wrong.stdout.strip()) == (1, "NOT_SERVING") and "not the gateway's health answer" in wrong.stderr


def test_an_api_only_gateway_keeps_no_state_and_names_the_flag_for_the_study(tmp_path, gateway_ranker, gateway_catalog, gateway_items):
    from tests.servers import start_gateway

    state = tmp_path / "state"
    gateway = start_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, state, "--study", "off")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=60) as client:
            answer = client.post("/v1/recommend", json={"query": "a watch", "top_k": 3, "recent_item_ids": WATCH_IDS[:1]})
            assert answer.status_code == 200 and len(answer.json()["items"]) == 3
            for method, path in (("POST", "/v1/study/comparisons"), ("GET", "/v1/study/users"), ("PUT", "/v1/study/comparisons/1/judgements"), ("GET", "/")):
                off = client.request(method, path, json={})
                assert off.status_code == 404, (path, off.text)
                assert off.json()["error"] == {"code": "NOT_FOUND", "message": (
                    "this gateway serves the API only (--study off): the study page and its judgements are served by a gateway "
                    "started with --study on"
                )}
            schema = client.get("/openapi.json").json()
            assert "/v1/recommend" in schema["paths"] and not [path for path in schema["paths"] if path.startswith("/v1/study")]
            assert "ComparisonRequest" not in schema["components"]["schemas"]
        assert not state.exists() or not any(state.iterdir()), "an API-only gateway writes nothing"
    finally:
        gateway.stop()


def test_an_unknown_study_setting_stops_start_up(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "whisperlite", "serve", "gateway", "--port", str(free_port()), "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "GATEWAY_STUDY": "maybe"},
    )
    assert result.returncode == 1
    assert "environment variable GATEWAY_STUDY must be one of on, off, got 'maybe'" in result.stderr


def test_a_port_in_use_stops_start_up_saying_so(gateway, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "whisperlite", "serve", "gateway", "--host", "127.0.0.1", "--port", str(gateway.port), "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert f"gateway: cannot bind HTTP port 127.0.0.1:{gateway.port}: Address already in use" in result.stderr


class _TokenCheckingRanker(ranker_pb2_grpc.RankerServiceServicer):
    """Stands in for a ranker with bearer-token auth (issue 9): decides on the token the gateway forwarded."""

    def __init__(self):
        self.seen: list[dict[str, str]] = []

    def Recommend(self, request, context):
        metadata = dict(context.invocation_metadata())
        self.seen.append(metadata)
        token = metadata.get("authorization")
        if token is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: a bearer token is required")
        if token == "Bearer greedy":  # what a ranker answers when the catalog's answer would pass the message limit
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "catalog at x: SearchBatch refused: the response would be over ...")
        if token != "Bearer reader":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "token lacks the read scope")
        return ranker_pb2.RecommendResponse(request_id=metadata["x-request-id"], path=ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY)


def test_tokens_are_passed_through_and_auth_failures_map_to_401_and_403(tmp_path, gateway_catalog):
    servicer = _TokenCheckingRanker()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ranker_pb2_grpc.add_RankerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gateway = launch_gateway(tmp_path / "logs", f"127.0.0.1:{port}", gateway_catalog.address, tmp_path / "state")
    try:
        base = f"http://127.0.0.1:{gateway.port}"
        _wait_for_http(f"{base}/health", gateway.process)
        body = {"query": "boots", "top_k": 3}
        missing = httpx.post(f"{base}/v1/recommend", json=body, timeout=30)
        assert missing.status_code == 401
        assert missing.json() == {"error": {"code": "UNAUTHENTICATED", "message": "authorization: a bearer token is required"}}
        wrong = httpx.post(f"{base}/v1/recommend", json=body, headers={"authorization": "Bearer writer"}, timeout=30)
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "PERMISSION_DENIED"
        good = httpx.post(f"{base}/v1/recommend", json=body, headers={"authorization": "Bearer reader", "x-request-id": "r-1"}, timeout=30)
        assert good.status_code == 200 and good.json()["request_id"] == "r-1"
        assert servicer.seen[-1]["authorization"] == "Bearer reader"
        # RESOURCE_EXHAUSTED without a retry hint: the request asks too much, so 413 (never retried), not 429.
        too_large = httpx.post(f"{base}/v1/recommend", json=body, headers={"authorization": "Bearer greedy"}, timeout=30)
        assert too_large.status_code == 413 and "retry-after" not in too_large.headers
        assert too_large.json()["error"] == {"code": "RESOURCE_EXHAUSTED", "message": "catalog at x: SearchBatch refused: the response would be over ..."}
    finally:
        gateway.stop()
        server.stop(0)


def test_study_comparison_is_personalized_against_non_personal(http, gateway_items):
    body = {"user_id": "", "query": "something to wear", "top_k": 5, "recent_item_ids": WATCH_IDS[:2]}
    comparison = http.post("/v1/study/comparisons", json=body).json()
    assert comparison["blind"] is False
    by_side = {shown["side"]: shown for shown in comparison["lists"]}
    assert [shown["position"] for shown in comparison["lists"]] == ["left", "right"]
    # Not blind: each list says what it is, and each item why it ranks where it does.
    for shown in comparison["lists"]:
        assert set(shown) == {"position", "side", "path", "model_version", "items"}
        assert all(set(item) == {"rank", "item_id", "title", "relevant", "score", "query_match", "personal_affinity"} for item in shown["items"])
    assert by_side["personalized"]["path"] == "PERSONALIZATION_PATH_RECENT_ITEMS"
    assert by_side["non_personal"]["path"] == "PERSONALIZATION_PATH_TEXT_ONLY"
    assert all(item["personal_affinity"] == 0 for item in by_side["non_personal"]["items"])
    assert any(item["personal_affinity"] > 0 for item in by_side["personalized"]["items"])
    top_personal = [item["item_id"] for item in by_side["personalized"]["items"]]
    assert sum(item_id in WATCH_IDS for item_id in top_personal) >= 2  # the recent watches pulled watches up

    url = f"/v1/study/comparisons/{comparison['comparison_id']}"
    assert http.put(f"{url}/judgements", json={"position": "left", "rank": 1, "relevant": True}).status_code == 200
    assert http.put(f"{url}/judgements", json={"position": "right", "rank": 2, "relevant": False}).status_code == 200
    bad_rank = http.put(f"{url}/judgements", json={"position": "left", "rank": 6, "relevant": True})
    assert bad_rank.status_code == 400 and "rank" in bad_rank.json()["error"]["message"]
    bad_position = http.put(f"{url}/judgements", json={"position": "middle", "rank": 1, "relevant": True})
    assert bad_position.json() == {"error": {"code": "INVALID_ARGUMENT", "message": "position: must be left or right, got 'middle'"}}
    unknown = http.put("/v1/study/comparisons/999999/judgements", json={"position": "left", "rank": 1, "relevant": True})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "NOT_FOUND"
    stored = http.get(url).json()
    assert stored["judged"] == 2
    assert stored["lists"][0]["items"][0]["relevant"] is True and stored["lists"][1]["items"][1]["relevant"] is False


def test_study_bad_request_gets_the_ranker_message(http, ranker):
    response = http.post("/v1/study/comparisons", json={"query": "", "top_k": 5})
    with pytest.raises(grpc.RpcError) as direct:
        ranker.Recommend(ranker_pb2.RecommendRequest(query="", top_k=5), timeout=30)
    assert response.status_code == 400 and response.json()["error"]["message"] == direct.value.details()
    # What the proto cannot hold is the body's INVALID_ARGUMENT, as for /v1/recommend (it was a 500).
    for body in ('{"query": "boots", "top_k": 2147483648}', '{"query": "boots", "top_k": 1e10}', '{"query": "boots", "top_k": 5, "filter": {"max_price": 1e400}}'):
        json_body = {"content": body, "headers": {"content-type": "application/json"}}
        study, recommend = http.post("/v1/study/comparisons", **json_body), http.post("/v1/recommend", **json_body)
        assert study.status_code == recommend.status_code == 400, (body, study.text)
        assert study.json()["error"] == recommend.json()["error"]


def test_blind_mode_hides_the_sides_and_shuffles_them(tmp_path, gateway_ranker, gateway_catalog, gateway_items):
    """A blind comparison carries nothing whose value differs by side. It carried each item's score: the text-only
    path scores on another scale than the personalized one, so the non-personal list had every score above every
    personalized score (21 comparisons of 21), and a judge could tell the lists apart at a glance."""
    import sqlite3

    from tests.servers import start_gateway

    state = tmp_path / "state"
    gateway = start_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, state, "--blind")
    try:
        base = f"http://127.0.0.1:{gateway.port}"
        body = {"query": "shoes for summer", "top_k": 3, "recent_item_ids": WATCH_IDS[:1]}
        comparisons = [httpx.post(f"{base}/v1/study/comparisons", json=body, timeout=60).json() for _ in range(16)]
        # The reload's view (GET) is the same as the answer to the POST.
        assert httpx.get(f"{base}/v1/study/comparisons/{comparisons[0]['comparison_id']}", timeout=30).json() == comparisons[0]
        for comparison in comparisons:
            assert comparison["blind"] is True
            assert set(comparison) == {"comparison_id", "user_id", "query", "blind", "lists", "judged"}  # one value for both sides
            assert [shown["position"] for shown in comparison["lists"]] == ["left", "right"]
            for shown in comparison["lists"]:
                # Only what a judge judges (which items, in which order) and the judge's own marks.
                assert set(shown) == {"position", "items"}
                assert [item["rank"] for item in shown["items"]] == [1, 2, 3]
                assert all(set(item) == {"rank", "item_id", "title", "relevant"} and item["relevant"] is None for item in shown["items"])
        with sqlite3.connect(state / "judgements.sqlite") as db:
            left_sides = {row[0] for row in db.execute("SELECT side FROM shown_lists WHERE position = 'left'")}
        assert left_sides == {"personalized", "non_personal"}  # 16 coin flips all alike: 1 in 32768
    finally:
        gateway.stop()


def test_a_broken_store_is_an_internal_error_in_json_not_a_crash(tmp_path, gateway_ranker, gateway_catalog, gateway_items):
    import sqlite3

    from tests.servers import start_gateway

    state = tmp_path / "state"
    gateway = start_gateway(tmp_path / "logs", gateway_ranker.address, gateway_catalog.address, state)
    try:
        base = f"http://127.0.0.1:{gateway.port}"
        comparison = httpx.post(f"{base}/v1/study/comparisons", json={"query": "coat", "top_k": 2}, timeout=60).json()
        with sqlite3.connect(state / "judgements.sqlite") as db:  # someone drops a table under the running gateway
            db.execute("DROP TABLE judgements")
        response = httpx.put(
            f"{base}/v1/study/comparisons/{comparison['comparison_id']}/judgements", json={"position": "left", "rank": 1, "relevant": True}, timeout=30
        )
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "INTERNAL", "message": "the gateway failed: OperationalError; see its log"}}
        assert response.headers["x-request-id"]  # answered by the gateway's own middleware, not the server's last resort
        assert httpx.get(f"{base}/health", timeout=30).status_code == 200  # still serving the rest
        counted = re.search(r'whisperlite_gateway_requests_total\{method="PUT",route="[^"]+",status="500"\} 1.0', httpx.get(f"{base}/metrics").text)
        assert counted, "the 500 is counted"
        assert "unexpected error" in gateway.log()
    finally:
        gateway.stop()


class _SlowRanker(ranker_pb2_grpc.RankerServiceServicer):
    """Stands in for a ranker that takes `seconds` to answer, noting when each call ended and whether its caller cancelled it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ended: list[tuple[float, bool]] = []

    def Recommend(self, request, context):
        started = time.monotonic()
        while context.is_active() and time.monotonic() - started < self.seconds:
            time.sleep(0.01)
        self.ended.append((time.monotonic(), not context.is_active()))
        return ranker_pb2.RecommendResponse(path=ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY)


def test_a_client_that_hangs_up_cancels_the_upstream_call(tmp_path, gateway_catalog):
    """uvicorn keeps running a handler whose client left; the ranker must not keep computing for no one."""
    servicer = _SlowRanker(seconds=20)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ranker_pb2_grpc.add_RankerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gateway = launch_gateway(tmp_path / "logs", f"127.0.0.1:{port}", gateway_catalog.address, tmp_path / "state", "--deadline-seconds", "3")
    try:
        base = f"http://127.0.0.1:{gateway.port}"
        _wait_for_http(f"{base}/health", gateway.process)
        for path, call in (("/v1/recommend", lambda: httpx.post(f"{base}/v1/recommend", json={"query": "boots"}, timeout=0.5)),
                           ("/v1/study/comparisons", lambda: httpx.post(f"{base}/v1/study/comparisons", json={"query": "boots"}, timeout=0.5))):
            before = len(servicer.ended)
            with pytest.raises(httpx.ReadTimeout):
                call()
            left = time.monotonic()
            deadline = left + 5
            while len(servicer.ended) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(servicer.ended) > before, f"{path}: the upstream call still ran 5 s after the client left"
            ended, cancelled = servicer.ended[-1]
            assert cancelled and ended - left < 2.0, (path, ended - left)
        servicer.seconds = 0
        assert httpx.post(f"{base}/v1/recommend", json={"query": "boots"}, timeout=30).status_code == 200  # a patient client is answered
        servicer.seconds = 20  # past the gateway's 3 s deadline: 504 naming the ranker and the flag, not gRPC's bare "Deadline Exceeded"
        late = httpx.post(f"{base}/v1/recommend", json={"query": "boots"}, timeout=60)
        assert late.status_code == 504
        assert late.json()["error"]["message"] == f"ranker at 127.0.0.1:{port}: no answer within 3 s (--deadline-seconds)"
        assert late.headers["Retry-After"] == "1"  # a 504 says when to try again
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert re.search(r'whisperlite_gateway_requests_total\{method="POST",route="/v1/recommend",status="499"\} 1\.0', metrics)
    finally:
        gateway.stop()
        server.stop(0)


def test_an_overloaded_ranker_is_429_with_retry_after(tmp_path, encoder_service, gateway_catalog):
    from tests.servers import start_gateway

    ranker = start_service(
        "ranker", tmp_path / "logs", "--model-dir", str(tmp_path / "no-model"), "--query-encoder-addr", encoder_service.address,
        "--catalog-addr", gateway_catalog.address, "--max-in-flight", "1", "--max-queued", "0",
    )
    gateway = start_gateway(tmp_path / "logs", ranker.address, gateway_catalog.address, tmp_path / "state")
    try:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=60) as client:
                return await asyncio.gather(*(client.post("/v1/recommend", json={"query": f"wool coat {n}", "top_k": 3}) for n in range(16)))

        responses = asyncio.run(burst())
        statuses = sorted(response.status_code for response in responses)
        assert set(statuses) == {200, 429}, statuses
        for response in responses:
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
                assert "(--max-in-flight, --max-queued)" in response.json()["error"]["message"]
                assert int(response.headers["retry-after"]) >= 1
    finally:
        gateway.stop()
        ranker.stop()


@pytest.mark.parametrize("details", ["Deadline Exceeded", "Stream removed (Deadline Exceeded)"])
def test_grpcs_own_deadline_words_become_the_upstream_and_the_flag(details):
    from whisperlite.services.gateway.upstream import UpstreamFailed

    error = grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    failed = UpstreamFailed.of_call("catalog at db:50052", error, 10)
    assert str(failed) == "catalog at db:50052: no answer within 10 s (--deadline-seconds)"
    assert failed.retry_after == 1.0  # an HTTP 504 says when to try again, as a 503 does
    refused = grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="the caller's deadline passed")
    assert str(UpstreamFailed.of_call("ranker at r:50050", refused, 10)) == "ranker at r:50050: the caller's deadline passed"
    # The upstream's CANCELLED (a server stopping) is a 503 to retry, not the 499 of an HTTP client that left.
    cancelled = grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="CANCELLED")
    failed = UpstreamFailed.of_call("ranker at r:50050", cancelled, 10)
    assert (failed.code, str(failed), failed.retry_after) == (
        grpc.StatusCode.UNAVAILABLE, "ranker at r:50050: the call was cancelled by the server (stopping?)", 1.0)
