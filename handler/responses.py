"""The one place where results and exceptions become answers.

HTTP answers are Function URL responses (`statusCode`, `headers`, `body`, `isBase64Encoded`)
with a JSON body; direct invocations get the same JSON without the envelope, plus `"status"` on
errors. Any exception that is not a `HandlerError` is a bug: it becomes a 500 `internal_error`
whose message names only the request id (the traceback goes to the log, never to the caller).
"""

from __future__ import annotations

import json
from typing import Any

from handler.exceptions import ConfigError, HandlerError, InternalError, ModelUnavailableError
from model_store.exceptions import ModelStoreError

JSON_TYPE = "application/json"
# Headers a browser may send to the Function URL (SigV4 signing adds the x-amz-* ones).
CORS_REQUEST_HEADERS = "content-type, authorization, x-amz-date, x-amz-security-token, x-amz-content-sha256"


def to_handler_error(exc: BaseException, request_id: str = "") -> HandlerError:
    """Map any exception to the error the caller sees."""
    if isinstance(exc, HandlerError):
        return exc
    if isinstance(exc, (ConfigError, ModelStoreError)):
        return ModelUnavailableError(str(exc))
    suffix = f" (request id {request_id})" if request_id else ""
    return InternalError(f"internal error{suffix}: the function's logs have the details")


def error_body(error: HandlerError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message}}


def direct_error(error: HandlerError) -> dict[str, Any]:
    """A direct invocation's error: the HTTP body plus the status it would have had."""
    return {**error_body(error), "status": error.status}


def unavailable_health(error: HandlerError) -> dict[str, Any]:
    """`GET /health` when no model is loaded: a status a probe can read, and why."""
    return {"status": "unavailable", **error_body(error)}


def batch_body(results: list[dict[str, Any] | HandlerError]) -> dict[str, Any]:
    """`{"results": [...]}` in input order; an image that failed has `{"error": ..., "status": ...}`."""
    return {"results": [direct_error(r) if isinstance(r, HandlerError) else r for r in results]}


def http_response(
    status: int,
    body: dict[str, Any] | None,
    headers: dict[str, str] | None = None,
    request_id: str = "",
) -> dict[str, Any]:
    """A Function URL response with a JSON body (no body for 204)."""
    out_headers = {"content-type": JSON_TYPE, "cache-control": "no-store"}
    if request_id:
        out_headers["x-request-id"] = request_id
    out_headers.update(headers or {})
    text = "" if body is None else json.dumps(body, allow_nan=False, separators=(",", ":"))
    if body is None:
        del out_headers["content-type"]
    return {"statusCode": status, "headers": out_headers, "body": text, "isBase64Encoded": False}


def http_error(error: HandlerError, headers: dict[str, str] | None = None, request_id: str = "") -> dict[str, Any]:
    return http_response(error.status, error_body(error), {**(headers or {}), **error.headers}, request_id)


def without_body(response: dict[str, Any]) -> dict[str, Any]:
    """The answer to `HEAD`: the `GET` answer's status and headers, no body."""
    return {**response, "body": ""}


def preflight(allow: tuple[str, ...], cors_headers: dict[str, str], request_id: str = "") -> dict[str, Any]:
    """204 for `OPTIONS`: the methods this path takes, and CORS preflight headers."""
    methods = ", ".join((*allow, "OPTIONS"))
    headers = {
        "allow": methods,
        "access-control-allow-methods": methods,
        "access-control-allow-headers": CORS_REQUEST_HEADERS,
        "access-control-max-age": "600",
        **cors_headers,
    }
    return http_response(204, None, headers, request_id)
