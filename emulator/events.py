"""HTTP request -> Function URL event (payload format 2.0), and handler result -> HTTP response.

Pure functions, so that the mapping is unit-tested without a server. The rules follow the Lambda
developer guide (urls-invocation) and what has been observed of real Function URLs:

- a body arrives as text only for `text/*`, `application/json`, `application/xml` and
  `application/javascript`; everything else (also no content type, and form posts) is base64;
- header names are lower-cased and repeated headers comma-joined; the `cookie` header becomes the
  `cookies` list; repeated query parameters are comma-joined in `queryStringParameters`;
- a result with a `statusCode` is a response object (`headers`, `cookies`, `body`,
  `isBase64Encoded`); any other valid JSON is served as a 200 `application/json` body, as is.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from emulator.exceptions import MalformedResponseError

TEXT_MEDIA_TYPES = frozenset({"application/json", "application/xml", "application/javascript"})
# Hop-by-hop and framing headers are the server's business, never the handler's.
_RESERVED_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True)
class HttpRequest:
    """A request as the gateway received it (target = path and query, undecoded)."""

    method: str
    target: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"


@dataclass(frozen=True)
class HttpResponse:
    """What goes back to the HTTP client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def is_text_content_type(content_type: str | None) -> bool:
    """True when a Function URL passes a body of this type as text (not base64)."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith("text/") or media_type in TEXT_MEDIA_TYPES


def _joined_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


def _query_parameters(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    return params


def request_time(now: float) -> str:
    """`07/Sep/2021:22:50:22 +0000`, the format of requestContext.time (English month names)."""
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    t = time.gmtime(now)
    return f"{t.tm_mday:02d}/{months[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def function_url_event(request: HttpRequest, *, request_id: str, url_id: str, region: str, now: float,
                       trace_id: str | None = None) -> dict[str, Any]:
    """The payload-2.0 event a Function URL (auth type NONE) would hand the function."""
    parts = urlsplit(request.target)
    raw_path = parts.path or "/"
    headers = _joined_headers(request.headers)
    headers.pop("cookie", None)
    cookies = [c.strip() for name, value in request.headers if name.lower() == "cookie"
               for c in value.split(";") if c.strip()]
    headers.setdefault("x-forwarded-for", request.source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    if trace_id:
        headers.setdefault("x-amzn-trace-id", trace_id)
    domain = f"{url_id}.lambda-url.{region}.on.aws"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": parts.query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if parts.query:
        event["queryStringParameters"] = _query_parameters(parts.query)
    event["requestContext"] = {
        "accountId": "anonymous",
        "apiId": url_id,
        "domainName": domain,
        "domainPrefix": url_id,
        "http": {
            "method": request.method.upper(),
            "path": raw_path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": request_time(now),
        "timeEpoch": int(now * 1000),
    }
    is_base64 = False
    if request.body:
        body: str | None = None
        if is_text_content_type(headers.get("content-type")):
            try:
                body = request.body.decode("utf-8")
            except UnicodeDecodeError:
                body = None  # not really text: ship the bytes intact
        if body is None:
            body = base64.b64encode(request.body).decode("ascii")
            is_base64 = True
        event["body"] = body
    event["isBase64Encoded"] = is_base64
    return event


def _status(value: Any) -> int:
    if isinstance(value, bool):
        raise MalformedResponseError(f"statusCode {value!r} is not an integer")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or not 100 <= value <= 599:
        raise MalformedResponseError(f"statusCode {value!r} is not an HTTP status")
    return value


def _header_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise MalformedResponseError(f"header {name!r} has a {type(value).__name__} value, not a string")


def function_url_response(payload: bytes) -> HttpResponse:
    """The HTTP response a Function URL makes of a handler's result (raise if it cannot)."""
    try:
        result = json.loads(payload)
    except ValueError as exc:
        raise MalformedResponseError(f"the function's result is not JSON: {exc}") from exc
    if not isinstance(result, dict) or "statusCode" not in result:
        return HttpResponse(200, [("Content-Type", "application/json")], payload)

    status = _status(result["statusCode"])
    headers_in = result.get("headers") or {}
    if not isinstance(headers_in, dict):
        raise MalformedResponseError("headers must be an object")
    headers = [(str(name), _header_value(name, value)) for name, value in headers_in.items()
               if str(name).lower() not in _RESERVED_RESPONSE_HEADERS]
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
        raise MalformedResponseError("cookies must be a list of strings")
    headers += [("Set-Cookie", cookie) for cookie in cookies]

    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        raise MalformedResponseError(f"body must be a string, not {type(body).__name__}")
    elif result.get("isBase64Encoded") is True:
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedResponseError(f"isBase64Encoded is true but body is not base64: {exc}") from exc
    else:
        data = body.encode("utf-8")
    return HttpResponse(status, headers, data)
