"""Event parsing: recorded Function URL 2.0 events and direct payloads -> typed requests or precise 4xx."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from handler.events import (
    DirectRequest,
    HttpRequest,
    decode_base64,
    is_function_url_event,
    parse_event,
    parse_json,
    parse_predict_payload,
    parse_top_k_text,
    predict_input_from_http,
)
from handler.exceptions import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

EVENTS = Path(__file__).resolve().parents[1] / "events"
LIMIT = 1 << 20


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


def http_request(content_type: str | None, body: bytes, query: dict[str, str] | None = None) -> HttpRequest:
    headers = {"content-type": content_type} if content_type is not None else {}
    return HttpRequest("POST", "/predict", query or {}, headers, body, "req-1")


def test_recorded_predict_event_decodes_the_base64_jpeg_body() -> None:
    # GIVEN a recorded Function URL event for POST /predict?top_k=3 with a base64 JPEG body
    event = load_event("function_url_predict_jpeg.json")
    # WHEN it is parsed
    request = parse_event(event, "lambda-id", LIMIT)
    # THEN method, path, query and the raw JPEG bytes come out, with the Lambda request id
    assert isinstance(request, HttpRequest)
    assert (request.method, request.path, request.query) == ("POST", "/predict", {"top_k": "3"})
    assert request.body == base64.b64decode(event["body"])
    assert request.body[:3] == b"\xff\xd8\xff"
    assert request.content_type == "image/jpeg"
    assert request.request_id == "lambda-id"
    found = predict_input_from_http(request, LIMIT)
    assert found.images == (request.body,) and found.top_k == 3 and not found.include_logits


def test_recorded_iam_event_with_logits_flag() -> None:
    # GIVEN a SigV4-signed (AWS_IAM) recorded event with ?logits=true
    request = parse_event(load_event("function_url_predict_jpeg_iam.json"), "", LIMIT)
    # WHEN its predict input is read
    found = predict_input_from_http(request, LIMIT)  # type: ignore[arg-type]
    # THEN logits are asked for, top_k is left to the default, and the URL's own request id is used
    assert found.include_logits is True and found.top_k is None
    assert request.request_id == "6a1e4d8b-2c7f-4e90-b3a5-8d2f1c6e7b44"


def test_recorded_json_event_carries_a_base64_png() -> None:
    # GIVEN a recorded event whose body is JSON {"image": "<base64 PNG>"} (not base64-encoded itself)
    request = parse_event(load_event("function_url_predict_json.json"), "id", LIMIT)
    # WHEN it is read
    found = predict_input_from_http(request, LIMIT)  # type: ignore[arg-type]
    # THEN the PNG bytes come out
    assert found.images[0].startswith(b"\x89PNG")
    assert not found.batch


@pytest.mark.parametrize("name, method, path", [
    ("function_url_health.json", "GET", "/health"),
    ("function_url_model.json", "GET", "/model"),
    ("function_url_options_predict.json", "OPTIONS", "/predict"),
])
def test_recorded_bodyless_events(name: str, method: str, path: str) -> None:
    # GIVEN a recorded event without a body
    # WHEN it is parsed
    request = parse_event(load_event(name), "id", LIMIT)
    # THEN it is an HTTP request with an empty body
    assert isinstance(request, HttpRequest)
    assert (request.method, request.path, request.body) == (method, path, b"")


def test_recorded_direct_payload_is_not_http() -> None:
    # GIVEN a direct invocation payload
    payload = load_event("direct_predict.json")
    # WHEN it is parsed
    request = parse_event(payload, "id", LIMIT)
    # THEN it is passed through as a direct request and parses to one image with top_k 3
    assert isinstance(request, DirectRequest) and not is_function_url_event(payload)
    found = parse_predict_payload(request.payload, LIMIT, allow_s3=True)
    assert found.top_k == 3 and len(found.images) == 1 and not found.batch


def test_recorded_direct_batch() -> None:
    # GIVEN a direct {"images": [jpeg, png]} payload
    found = parse_predict_payload(load_event("direct_batch.json"), LIMIT, allow_s3=True)
    # THEN both images come out in order as one batch
    assert found.batch and [i[:2] for i in found.images] == [b"\xff\xd8", b"\x89P"]


@pytest.mark.parametrize("path, expected", [("/predict/", "/predict"), ("//health", "/health"), ("", "/")])
def test_paths_are_normalised(path: str, expected: str) -> None:
    # GIVEN an event with an untidy path
    event = {"requestContext": {"http": {"method": "get", "path": path}}}
    # WHEN parsed
    request = parse_event(event, "", LIMIT)
    # THEN the path routes like its tidy form and the method is upper-cased
    assert request.path == expected and request.method == "GET"  # type: ignore[union-attr]


def test_oversized_http_body_is_413_before_decoding() -> None:
    # GIVEN a base64 body that decodes to more than the limit
    body = base64.b64encode(b"x" * 2048).decode()
    event = {"requestContext": {"http": {"method": "POST", "path": "/predict"}}, "body": body, "isBase64Encoded": True}
    # WHEN parsed with a 1 KiB limit
    # THEN it is refused as payload_too_large
    with pytest.raises(PayloadTooLargeError) as caught:
        parse_event(event, "", 1024)
    assert caught.value.code == "payload_too_large"


@pytest.mark.parametrize("event", [
    {"requestContext": {"http": {"method": 5, "path": "/x"}}},
    {"requestContext": {"http": {"method": "POST", "path": "/predict"}}, "body": {"not": "a string"}},
    {"requestContext": {"http": {"method": "POST", "path": "/predict"}}, "body": "%%%", "isBase64Encoded": True},
])
def test_malformed_http_events_are_400(event: dict[str, Any]) -> None:
    # GIVEN an HTTP-shaped event with a wrong-typed or broken field
    # WHEN parsed  THEN a 400 bad_request, not a crash
    with pytest.raises(BadRequestError) as caught:
        parse_event(event, "", LIMIT)
    assert caught.value.code == "bad_request"


@pytest.mark.parametrize("content_type", [None, "image/jpeg", "IMAGE/PNG; charset=binary", "application/octet-stream",
                                          "image/webp", "image/gif", "image/bmp"])
def test_image_content_types_are_accepted(content_type: str | None) -> None:
    # GIVEN raw bytes with an image (or no) content type
    # WHEN read as a predict input  THEN the body is the image, whatever its declared type
    assert predict_input_from_http(http_request(content_type, b"bytes"), LIMIT).images == (b"bytes",)


@pytest.mark.parametrize("content_type", ["text/plain", "text/html", "application/pdf", "image/svg+xml",
                                          "image/tiff", "image/heic", "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded"])
def test_other_content_types_are_415(content_type: str) -> None:
    # GIVEN a body declared as something that is not an image we serve
    # WHEN read  THEN 415 unsupported_media_type
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        predict_input_from_http(http_request(content_type, b"hello"), LIMIT)
    assert caught.value.status == 415 and caught.value.code == "unsupported_media_type"


def test_form_upload_message_says_how_to_send_the_file() -> None:
    # GIVEN curl's default content type for --data-binary
    # WHEN refused  THEN the message shows the right curl flags
    with pytest.raises(UnsupportedMediaTypeError, match="--data-binary"):
        predict_input_from_http(http_request("application/x-www-form-urlencoded", b"x"), LIMIT)


@pytest.mark.parametrize("raw, expected", [("1", 1), ("5", 5), ("133", 133), ("0007", 7)])
def test_top_k_query_digits(raw: str, expected: int) -> None:
    # GIVEN plain digits  WHEN parsed  THEN the integer
    assert parse_top_k_text(raw) == expected


@pytest.mark.parametrize("raw", ["", "abc", "-1", "+3", " 3", "3.0", "1e3", "3,5", "1_000", "9" * 12, "٣"])
def test_top_k_query_garbage_is_bad_top_k(raw: str) -> None:
    # GIVEN anything but plain digits  WHEN parsed  THEN bad_top_k
    with pytest.raises(BadRequestError) as caught:
        parse_top_k_text(raw)
    assert caught.value.code == "bad_top_k"


@pytest.mark.parametrize("raw, expected", [("true", True), ("TRUE", True), ("1", True), ("", True),
                                           ("false", False), ("0", False)])
def test_logits_flag(raw: str, expected: bool) -> None:
    # GIVEN ?logits=<raw>  WHEN read  THEN the flag
    found = predict_input_from_http(http_request("image/png", b"x", {"logits": raw}), LIMIT)
    assert found.include_logits is expected


def test_logits_flag_garbage_is_400() -> None:
    with pytest.raises(BadRequestError):
        predict_input_from_http(http_request("image/png", b"x", {"logits": "maybe"}), LIMIT)


def test_top_k_in_both_query_and_json_is_refused() -> None:
    # GIVEN top_k in the query and in the JSON body
    body = json.dumps({"image": base64.b64encode(b"img").decode(), "top_k": 2}).encode()
    # WHEN read  THEN 400: the caller must choose one place
    with pytest.raises(BadRequestError, match="not both"):
        predict_input_from_http(http_request("application/json", body, {"top_k": "3"}), LIMIT)


def test_json_body_may_carry_top_k_and_logits() -> None:
    # GIVEN a JSON body with the direct-invocation fields
    body = json.dumps({"image": base64.b64encode(b"img").decode(), "top_k": 2, "logits": True}).encode()
    # WHEN read
    found = predict_input_from_http(http_request("application/json; charset=utf-8", body), LIMIT)
    # THEN they apply
    assert (found.images, found.top_k, found.include_logits) == ((b"img",), 2, True)


@pytest.mark.parametrize("body", [b"", b"   ", b"{", b"{'image': 1}", b"\xff\xfe\x00", b"[" * 100_000,
                                  b'{"top_k": ' + b"9" * 5000 + b"}"])
def test_bad_json_bodies(body: bytes) -> None:
    # GIVEN a body that is not valid JSON (including absurd nesting and a 5000-digit number)
    # WHEN parsed  THEN bad_json
    with pytest.raises(BadRequestError) as caught:
        parse_json(body)
    assert caught.value.code == "bad_json"


@pytest.mark.parametrize("payload, code", [
    ([], "bad_request"),
    ("image", "bad_request"),
    ({}, "bad_request"),
    ({"image": "aGk=", "images": ["aGk="]}, "bad_request"),
    ({"image": "aGk=", "extra": 1}, "bad_request"),
    ({"image": 42}, "bad_base64"),
    ({"image": None}, "bad_base64"),
    ({"image": "aGk=", "top_k": "3"}, "bad_top_k"),
    ({"image": "aGk=", "top_k": 3.0}, "bad_top_k"),
    ({"image": "aGk=", "top_k": True}, "bad_top_k"),
    ({"image": "aGk=", "top_k": 0}, "bad_top_k"),
    ({"image": "aGk=", "top_k": -1}, "bad_top_k"),
    ({"image": "aGk=", "top_k": 10**30}, "bad_top_k"),
    ({"image": "aGk=", "logits": "true"}, "bad_request"),
    ({"images": []}, "bad_request"),
    ({"images": "aGk="}, "bad_request"),
    ({"images": ["aGk="] * 17}, "bad_request"),
    ({"images": ["aGk=", 5]}, "bad_base64"),
    ({"s3_uri": 5}, "bad_request"),
])
def test_direct_payload_errors(payload: Any, code: str) -> None:
    # GIVEN a direct payload with a wrong shape, type or value
    # WHEN parsed  THEN the exact 400 code
    with pytest.raises(BadRequestError) as caught:
        parse_predict_payload(payload, LIMIT, allow_s3=True)
    assert caught.value.code == code


def test_s3_uri_is_direct_invocation_only() -> None:
    # GIVEN an s3_uri in a Function URL JSON body
    body = json.dumps({"s3_uri": "s3://bucket/dog.jpg"}).encode()
    # WHEN read  THEN refused: URLs reach only what direct (IAM-authorised) callers may name
    with pytest.raises(BadRequestError, match="direct invocation"):
        predict_input_from_http(http_request("application/json", body), LIMIT)


def test_batch_size_budget_is_shared() -> None:
    # GIVEN two images that each fit the limit but together do not
    one = base64.b64encode(b"x" * 600).decode()
    # WHEN parsed with a 1000-byte limit  THEN 413
    with pytest.raises(PayloadTooLargeError):
        parse_predict_payload({"images": [one, one]}, 1000, allow_s3=True)


@pytest.mark.parametrize("text", [
    "aGVsbG8gd29ybGQ=",                     # standard
    "aGVsbG8gd29ybGQ",                      # padding left off
    "aGVsbG8g\nd29y\r\nbGQ=",               # line-wrapped, as `base64` prints it
    "  aGVsbG8gd29ybGQ=  ",                 # surrounding spaces
    "data:image/png;base64,aGVsbG8gd29ybGQ=",
])
def test_base64_forgiving_forms(text: str) -> None:
    # GIVEN base64 as clients commonly send it  WHEN decoded  THEN the bytes
    assert decode_base64(text, LIMIT) == b"hello world"


def test_base64_url_safe_alphabet() -> None:
    # GIVEN bytes whose base64 uses + and /, sent with the URL-safe - and _
    data = bytes(range(250, 256)) * 3
    text = base64.urlsafe_b64encode(data).decode()
    assert "-" in text or "_" in text
    # WHEN decoded  THEN the same bytes
    assert decode_base64(text, LIMIT) == data


@pytest.mark.parametrize("text", ["a", "abcde", "ab=cd", "ab!d", "aGVsbG8gd29ybGQ=é", "data:image/png,aGk=", "a===="])
def test_base64_garbage_is_bad_base64(text: str) -> None:
    # GIVEN text that is not base64 (bad length, inner padding, other symbols, non-ASCII, no ;base64)
    # WHEN decoded  THEN bad_base64
    with pytest.raises(BadRequestError) as caught:
        decode_base64(text, LIMIT)
    assert caught.value.code == "bad_base64"


def test_base64_over_the_limit_is_413() -> None:
    # GIVEN base64 of 2 KiB  WHEN decoded with a 1 KiB limit  THEN payload_too_large
    with pytest.raises(PayloadTooLargeError):
        decode_base64(base64.b64encode(b"x" * 2048).decode(), 1024)
