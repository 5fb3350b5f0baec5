"""Error mapping and answer shapes: the one place exceptions become HTTP or direct answers."""

from __future__ import annotations

import json

import pytest

from handler import responses
from handler.exceptions import (
    BadRequestError,
    ConfigError,
    DeadlineExceededError,
    ForbiddenError,
    HandlerError,
    InternalError,
    MethodNotAllowedError,
    ModelUnavailableError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UpstreamError,
)
from model_store.exceptions import ChecksumError, VersionNotFoundError


@pytest.mark.parametrize("error, status, code", [
    (BadRequestError("x"), 400, "bad_request"),
    (BadRequestError("x", code="bad_top_k"), 400, "bad_top_k"),
    (ForbiddenError("x"), 403, "s3_not_allowed"),
    (NotFoundError("x"), 404, "not_found"),
    (MethodNotAllowedError("x", allow=("GET", "HEAD")), 405, "method_not_allowed"),
    (PayloadTooLargeError("x"), 413, "payload_too_large"),
    (PayloadTooLargeError("x", code="image_too_large"), 413, "image_too_large"),
    (UnsupportedMediaTypeError("x"), 415, "unsupported_media_type"),
    (InternalError("x"), 500, "internal_error"),
    (UpstreamError("x"), 502, "s3_error"),
    (ModelUnavailableError("x"), 503, "model_unavailable"),
    (DeadlineExceededError("x"), 504, "timeout"),
])
def test_each_error_class_has_its_status_and_default_code(error: HandlerError, status: int, code: str) -> None:
    # GIVEN a handler error  WHEN mapped  THEN it keeps its own status and code
    mapped = responses.to_handler_error(error)
    assert (mapped.status, mapped.code) == (status, code)


@pytest.mark.parametrize("exc", [ChecksumError("weights sha256 differs"), VersionNotFoundError("no version v9"),
                                 ConfigError("set MODEL_VERSION")])
def test_model_store_and_config_errors_are_503_with_their_reason(exc: Exception) -> None:
    # GIVEN a model-store or configuration failure  WHEN mapped  THEN 503 model_unavailable saying why
    mapped = responses.to_handler_error(exc)
    assert (mapped.status, mapped.code, mapped.message) == (503, "model_unavailable", str(exc))


@pytest.mark.parametrize("exc", [KeyError("secret_key_name"), ValueError("/var/task/handler/x.py line 3"),
                                 RuntimeError("AKIA... leaked")])
def test_bugs_are_500_without_internals(exc: Exception) -> None:
    # GIVEN any other exception (a bug)
    # WHEN mapped
    mapped = responses.to_handler_error(exc, request_id="req-42")
    # THEN 500 internal_error naming the request id only: nothing of the exception reaches the caller
    assert (mapped.status, mapped.code) == (500, "internal_error")
    assert "req-42" in mapped.message and str(exc.args[0]) not in mapped.message


def test_http_error_shape_and_allow_header() -> None:
    # GIVEN a 405 for a GET/HEAD route
    error = MethodNotAllowedError("use GET", allow=("GET", "HEAD", "OPTIONS"))
    # WHEN rendered for a Function URL
    response = responses.http_error(error, request_id="r1")
    # THEN status, JSON error body, Allow header and request id header are set
    assert response["statusCode"] == 405 and response["isBase64Encoded"] is False
    assert json.loads(response["body"]) == {"error": {"code": "method_not_allowed", "message": "use GET"}}
    assert response["headers"]["allow"] == "GET, HEAD, OPTIONS"
    assert response["headers"]["content-type"] == "application/json"
    assert response["headers"]["x-request-id"] == "r1"


def test_direct_error_carries_the_status() -> None:
    assert responses.direct_error(PayloadTooLargeError("big")) == {
        "error": {"code": "payload_too_large", "message": "big"}, "status": 413,
    }


def test_head_answer_keeps_status_and_headers_but_no_body() -> None:
    full = responses.http_response(200, {"status": "ok"})
    head = responses.without_body(full)
    assert head["statusCode"] == 200 and head["headers"] == full["headers"] and head["body"] == ""


def test_preflight_lists_methods_and_cors_headers() -> None:
    # GIVEN the /predict route and a configured CORS origin
    # WHEN answering OPTIONS
    response = responses.preflight(("POST",), {"access-control-allow-origin": "https://app.example.com"})
    # THEN 204 with no body, Allow and CORS preflight headers
    headers = response["headers"]
    assert response["statusCode"] == 204 and response["body"] == "" and "content-type" not in headers
    assert headers["allow"] == headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert "content-type" in headers["access-control-allow-headers"]
    assert headers["access-control-allow-origin"] == "https://app.example.com"


def test_non_finite_numbers_never_reach_json() -> None:
    # GIVEN a body with NaN  WHEN rendered  THEN it refuses (the caller turns that into a clean 500)
    with pytest.raises(ValueError):
        responses.http_response(200, {"x": float("nan")})


def test_batch_body_puts_errors_in_their_slots() -> None:
    results = responses.batch_body([{"predictions": []}, BadRequestError("bad", code="not_an_image")])
    assert results == {"results": [
        {"predictions": []},
        {"error": {"code": "not_an_image", "message": "bad"}, "status": 400},
    ]}


def test_unavailable_health_body() -> None:
    body = responses.unavailable_health(ModelUnavailableError("no version v1"))
    assert body == {"status": "unavailable", "error": {"code": "model_unavailable", "message": "no version v1"}}
