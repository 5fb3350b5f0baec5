"""The Function URL gateway: real HTTP in, payload 2.0 event to the handler, real HTTP out."""

from __future__ import annotations

import base64
import http.client
import json
import time
from typing import Any

import pytest

from tests.emulator.support import Running, http_request

TOY_BINARY_BODY = bytes(range(256)) * 4  # what handlers/toy.py returns for /binary


def echoed_event(reply_body: bytes) -> dict[str, Any]:
    return json.loads(reply_body)["event"]


def test_method_path_query_headers_and_cookies_reach_the_handler(toy: Running) -> None:
    # GIVEN a request with a query (repeated key, encoded value), repeated headers and cookies
    headers = [("X-Custom", "one"), ("X-Custom", "two"), ("User-Agent", "emulator-test/1.0"),
               ("Cookie", "session=abc; theme=dark"), ("Content-Type", "application/json")]
    before_ms = int(time.time() * 1000)

    # WHEN it goes through the Function URL
    reply = http_request(toy.emulator.url, "PUT", "/echo/deeper?top_k=3&tag=a&tag=b&q=dog%20breed",
                         b'{"hello": "world"}', headers)

    # THEN the handler got a payload-2.0 event built like Lambda builds it
    assert reply.status == 200
    event = echoed_event(reply.body)
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/echo/deeper"
    assert event["rawQueryString"] == "top_k=3&tag=a&tag=b&q=dog%20breed"
    assert event["queryStringParameters"] == {"top_k": "3", "tag": "a,b", "q": "dog breed"}
    assert event["headers"]["x-custom"] == "one,two"
    assert event["headers"]["user-agent"] == "emulator-test/1.0"
    assert "cookie" not in event["headers"]
    assert event["cookies"] == ["session=abc", "theme=dark"]
    assert event["body"] == '{"hello": "world"}' and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["http"] == {"method": "PUT", "path": "/echo/deeper", "protocol": "HTTP/1.1",
                               "sourceIp": "127.0.0.1", "userAgent": "emulator-test/1.0"}
    assert context["accountId"] == "anonymous" and context["stage"] == "$default"
    assert context["domainName"] == f"{context['domainPrefix']}.lambda-url.us-east-1.on.aws"
    assert context["requestId"] == reply.headers["X-Amzn-RequestId"] == json.loads(reply.body)["request_id"]
    assert before_ms <= context["timeEpoch"] <= int(time.time() * 1000)


def test_binary_request_body_arrives_base64_encoded_and_intact(toy: Running) -> None:
    # GIVEN bytes that are not text (every byte value), sent as an image
    payload = bytes(range(256)) * 64

    # WHEN they are posted
    reply = http_request(toy.emulator.url, "POST", "/echo", payload, [("Content-Type", "image/jpeg")])

    # THEN the event says base64 and decodes to exactly those bytes; no query means no parameters
    event = echoed_event(reply.body)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload
    assert event["rawQueryString"] == "" and "queryStringParameters" not in event


@pytest.mark.parametrize("content_type, as_text", [
    ("text/plain; charset=utf-8", True), ("application/json", True), ("application/xml", True),
    ("application/x-www-form-urlencoded", False), ("application/octet-stream", False), (None, False),
])
def test_which_bodies_arrive_as_text(toy: Running, content_type: str | None, as_text: bool) -> None:
    # GIVEN a small UTF-8 body with a given content type (or none)
    headers = [("Content-Type", content_type)] if content_type else []

    # WHEN it is posted
    event = echoed_event(http_request(toy.emulator.url, "POST", "/echo", b"a=1&b=2", headers).body)

    # THEN only text types arrive as text, as on a real Function URL; the rest is base64
    assert event["isBase64Encoded"] is (not as_text)
    assert (event["body"] if as_text else base64.b64decode(event["body"]).decode()) == "a=1&b=2"


def test_get_without_body_has_no_body_field(toy: Running) -> None:
    # GIVEN / WHEN a plain GET
    event = echoed_event(http_request(toy.emulator.url, "GET", "/echo").body)

    # THEN no body, not base64
    assert "body" not in event and event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["method"] == "GET"


def test_binary_response_with_status_headers_and_cookies(toy: Running) -> None:
    # GIVEN a handler returning {statusCode: 201, headers, cookies, isBase64Encoded: true, body}
    # WHEN it is called through the Function URL
    reply = http_request(toy.emulator.url, "GET", "/binary")

    # THEN the HTTP response carries them: status, headers, one Set-Cookie per cookie, decoded bytes
    assert reply.status == 201
    assert reply.headers["Content-Type"] == "image/png"
    assert reply.headers["X-Toy"] == "binary"
    assert reply.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2"]
    assert reply.body == TOY_BINARY_BODY
    assert int(reply.headers["Content-Length"]) == len(TOY_BINARY_BODY)


def test_head_gets_headers_without_body(toy: Running) -> None:
    # GIVEN / WHEN a HEAD request
    reply = http_request(toy.emulator.url, "HEAD", "/binary")

    # THEN the handler's status and length, but no body on the wire
    assert reply.status == 201 and reply.body == b""
    assert int(reply.headers["Content-Length"]) == len(TOY_BINARY_BODY)


def test_a_result_without_status_code_is_served_as_json(toy: Running) -> None:
    # GIVEN a handler returning a bare JSON value
    # WHEN it is called through the Function URL
    reply = http_request(toy.emulator.url, "GET", "/plain")

    # THEN Lambda's inference: 200, application/json, the value as the body
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert json.loads(reply.body) == ["plain", 1]


@pytest.mark.parametrize("path, error_type", [("/raise", "ValueError"), ("/malformed", "Function.MalformedResponse")])
def test_function_errors_become_502(toy: Running, path: str, error_type: str) -> None:
    # GIVEN a handler that raises, or returns something that is not a response
    # WHEN it is called through the Function URL
    reply = http_request(toy.emulator.url, "GET", path)

    # THEN 502 Internal Server Error, as Lambda answers (the emulator adds the error type)
    assert reply.status == 502
    assert reply.body == b"Internal Server Error"
    assert reply.headers["X-Amzn-ErrorType"] == error_type


def test_binary_body_that_base64_pushes_past_6_mb_gets_413(toy: Running) -> None:
    # GIVEN 4.8 MB of binary: under 6 MB raw, over it once base64-encoded into the event
    payload = b"\xff" * 4_800_000
    before = toy.emulator.stats().invocations

    # WHEN it is posted
    reply = http_request(toy.emulator.url, "POST", "/echo", payload, [("Content-Type", "image/jpeg")])

    # THEN 413 without invoking, as Lambda (raw uploads must stay under ~4.5 MB)
    assert reply.status == 413
    assert toy.emulator.stats().invocations == before


def test_keep_alive_connection_serves_many_requests(toy: Running) -> None:
    # GIVEN one HTTP/1.1 connection
    connection = http.client.HTTPConnection(toy.emulator.url.removeprefix("http://"), timeout=30)
    try:
        # WHEN several requests go over it
        statuses = []
        for _ in range(5):
            connection.request("GET", "/plain")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        connection.close()

    # THEN every one is answered
    assert statuses == [200] * 5
