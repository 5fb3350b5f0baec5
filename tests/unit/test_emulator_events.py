"""The emulator's HTTP <-> Function URL mapping (emulator.events), without any server."""

from __future__ import annotations

import base64
import json

import pytest

from emulator.events import (
    HttpRequest,
    function_url_event,
    function_url_response,
    is_text_content_type,
    request_time,
)
from emulator.exceptions import MalformedResponseError

NOW = 1_583_348_638.390  # 2020-03-04T19:03:58.390Z


def event_for(method: str = "GET", target: str = "/", headers: list[tuple[str, str]] | None = None,
              body: bytes = b"") -> dict:
    request = HttpRequest(method=method, target=target, headers=headers or [], body=body, source_ip="10.1.2.3")
    return function_url_event(request, request_id="req-1", url_id="abcdef", region="eu-west-1", now=NOW,
                              trace_id="Root=1-5e5f-abc")


def test_event_has_the_payload_2_0_envelope() -> None:
    # GIVEN a GET with a query and a user agent
    # WHEN it is mapped
    event = event_for("get", "/model?verbose=true", [("User-Agent", "curl/8.0"), ("Host", "127.0.0.1:9000")])

    # THEN every field Lambda documents is there, with Lambda's values
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/model" and event["rawQueryString"] == "verbose=true"
    assert event["queryStringParameters"] == {"verbose": "true"}
    assert event["requestContext"] == {
        "accountId": "anonymous", "apiId": "abcdef", "domainName": "abcdef.lambda-url.eu-west-1.on.aws",
        "domainPrefix": "abcdef",
        "http": {"method": "GET", "path": "/model", "protocol": "HTTP/1.1", "sourceIp": "10.1.2.3",
                 "userAgent": "curl/8.0"},
        "requestId": "req-1", "routeKey": "$default", "stage": "$default",
        "time": "04/Mar/2020:19:03:58 +0000", "timeEpoch": 1583348638390,
    }
    assert event["headers"]["host"] == "127.0.0.1:9000"
    assert event["headers"]["x-forwarded-for"] == "10.1.2.3"
    assert event["headers"]["x-amzn-trace-id"] == "Root=1-5e5f-abc"
    assert event["isBase64Encoded"] is False and "body" not in event and "cookies" not in event


def test_headers_are_lower_cased_and_repeats_comma_joined() -> None:
    # GIVEN repeated and mixed-case headers, and two Cookie headers
    headers = [("Accept", "image/png"), ("ACCEPT", "image/jpeg"), ("Cookie", "a=1; b=2"), ("cookie", "c=3")]

    # WHEN they are mapped
    event = event_for(headers=headers)

    # THEN names are lower-case, values joined with commas, cookies listed apart
    assert event["headers"]["accept"] == "image/png,image/jpeg"
    assert "cookie" not in event["headers"]
    assert event["cookies"] == ["a=1", "b=2", "c=3"]


def test_query_parameters_are_decoded_and_repeats_comma_joined() -> None:
    # GIVEN an encoded query with a repeated key and an empty value
    event = event_for(target="/predict?top_k=3&tag=a&tag=b%20c&empty=&plus=a+b")

    # THEN the raw string is untouched and the parameters decoded
    assert event["rawQueryString"] == "top_k=3&tag=a&tag=b%20c&empty=&plus=a+b"
    assert event["queryStringParameters"] == {"top_k": "3", "tag": "a,b c", "empty": "", "plus": "a b"}


@pytest.mark.parametrize("content_type, text", [
    ("text/plain", True), ("text/html; charset=utf-8", True), ("application/json", True),
    ("Application/JSON; charset=UTF-8", True), ("application/xml", True), ("application/javascript", True),
    ("image/jpeg", False), ("application/octet-stream", False), ("application/x-www-form-urlencoded", False),
    ("multipart/form-data; boundary=x", False), ("", False), (None, False),
])
def test_text_content_types(content_type: str | None, text: bool) -> None:
    # GIVEN / WHEN / THEN only text/* and the three textual application types count as text
    assert is_text_content_type(content_type) is text


def test_binary_body_is_base64_and_text_body_is_text() -> None:
    # GIVEN the same bytes as an image and as JSON
    image = event_for("POST", "/predict", [("Content-Type", "image/png")], b"\x89PNG\r\n\x1a\n\x00")
    text = event_for("POST", "/predict", [("Content-Type", "application/json")], '{"é": 1}'.encode())

    # THEN the image is base64, the JSON is text
    assert image["isBase64Encoded"] is True and base64.b64decode(image["body"]) == b"\x89PNG\r\n\x1a\n\x00"
    assert text["isBase64Encoded"] is False and text["body"] == '{"é": 1}'


def test_text_type_with_invalid_utf8_is_shipped_as_base64() -> None:
    # GIVEN a body that claims to be text but is not UTF-8
    event = event_for("POST", "/", [("Content-Type", "text/plain")], b"\xff\xfe\xfd")

    # THEN the bytes survive intact, base64-encoded
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"\xff\xfe\xfd"


def test_request_time_uses_english_month_names() -> None:
    assert request_time(0) == "01/Jan/1970:00:00:00 +0000"


def test_structured_response_maps_status_headers_cookies_and_body() -> None:
    # GIVEN a handler result in the Function URL response format
    result = {"statusCode": 404, "headers": {"Content-Type": "application/json", "X-Count": 3, "X-Flag": True},
              "cookies": ["a=1; Path=/", "b=2"], "body": '{"error": "nope"}', "isBase64Encoded": False}

    # WHEN it is mapped
    response = function_url_response(json.dumps(result).encode())

    # THEN the HTTP response says exactly that
    assert response.status == 404
    assert response.headers == [("Content-Type", "application/json"), ("X-Count", "3"), ("X-Flag", "true"),
                                ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2")]
    assert response.body == b'{"error": "nope"}'


def test_base64_response_body_is_decoded_and_framing_headers_are_dropped() -> None:
    # GIVEN a binary body and headers that only the server may set
    result = {"statusCode": "200", "headers": {"Content-Length": "1", "Connection": "close", "X-Ok": "1"},
              "body": base64.b64encode(b"\x00\x01\xff").decode(), "isBase64Encoded": True}

    # WHEN it is mapped
    response = function_url_response(json.dumps(result).encode())

    # THEN the bytes come back, the status string is accepted, framing stays the server's business
    assert response.status == 200 and response.body == b"\x00\x01\xff"
    assert response.headers == [("X-Ok", "1")]


@pytest.mark.parametrize("result", ["Hello, world!", {"message": "hi"}, [1, 2], 42, None])
def test_result_without_status_code_is_a_200_json_body_as_is(result: object) -> None:
    # GIVEN any JSON value that is not a response object
    payload = json.dumps(result).encode()

    # WHEN it is mapped
    response = function_url_response(payload)

    # THEN 200, application/json, the payload untouched (Lambda's documented inference)
    assert (response.status, response.headers, response.body) == (200, [("Content-Type", "application/json")],
                                                                   payload)


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "not JSON"),
    (b'{"statusCode": "teapot"}', "not an HTTP status"),
    (b'{"statusCode": 99}', "not an HTTP status"),
    (b'{"statusCode": true}', "not an integer"),
    (b'{"statusCode": 200, "body": {"a": 1}}', "body must be a string"),
    (b'{"statusCode": 200, "headers": ["x"]}', "headers must be an object"),
    (b'{"statusCode": 200, "headers": {"x": [1]}}', "not a string"),
    (b'{"statusCode": 200, "cookies": "a=1"}', "cookies must be a list"),
    (b'{"statusCode": 200, "body": "***", "isBase64Encoded": true}', "not base64"),
])
def test_malformed_results_are_refused(payload: bytes, reason: str) -> None:
    # GIVEN / WHEN / THEN a result that cannot become an HTTP response is refused with the reason
    with pytest.raises(MalformedResponseError, match=reason):
        function_url_response(payload)
