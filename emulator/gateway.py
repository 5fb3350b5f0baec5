"""The HTTP front on --port: the RIE invoke path, a Function URL for everything else, and stats.

    POST /2015-03-31/functions/<name>/invocations   Lambda's Invoke API (what the official RIE serves,
                                                    and what boto3's `invoke` calls with endpoint_url)
    GET  /_emulator/stats[?records=N|all]           counters as JSON
    anything else                                   a Function URL (payload 2.0) request

Error shapes are Lambda's: the Invoke API answers 200 with `X-Amz-Function-Error: Unhandled` and the
error object; a Function URL answers 502 `Internal Server Error` for any function error (the error
type is repeated in `X-Amzn-ErrorType` to help debugging).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import traceback
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emulator.config import FUNCTION_VERSION, EmulatorConfig
from emulator.events import HttpRequest, HttpResponse, function_url_event, function_url_response
from emulator.exceptions import EmulatorClosedError, EmulatorError, MalformedResponseError
from emulator.httpio import BodyTooLarge, FastHandler, QuietServer, read_body, send
from emulator.pool import RuntimePool, trace_id
from emulator.report import LogSink

# Lambda's synchronous request limit (the response limit lives in runtime_api).
MAX_REQUEST_BYTES = 6_291_456
INVOKE_PATH = re.compile(r"/2015-03-31/functions/[^/]+/invocations")
STATS_PATH = "/_emulator/stats"
_TOO_LARGE = json.dumps({
    "Type": "User",
    "Message": f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction operation",
}).encode()


class Gateway(QuietServer):
    """The front server; `serve_forever` runs in a thread owned by `Emulator`."""

    def __init__(self, config: EmulatorConfig, pool: RuntimePool, log: LogSink) -> None:
        super().__init__((config.host, config.port), _GatewayHandler)
        self.config = config
        self.pool = pool
        self.log = log

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _GatewayHandler(FastHandler):
    server_version = "breedserve-emulator"
    sys_version = ""
    server: Gateway

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the REPORT lines already say what happened."""

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path == STATS_PATH and self.command == "GET":
                self._stats()
            elif INVOKE_PATH.fullmatch(path) and self.command == "POST":
                self._invoke_api()
            else:
                self._function_url()
        except EmulatorClosedError:
            self.close_connection = True
            send(self, 503, b'{"Message":"the emulator is stopping"}', content_type="application/json")
        except EmulatorError as exc:
            self.server.log(f"emulator: {self.command} {path} failed: {exc}")
            send(self, 500, json.dumps({"Message": str(exc)}).encode(), content_type="application/json")
        except Exception:  # noqa: BLE001 - a bug here must not look like a dropped connection
            self.server.log(f"emulator: {self.command} {path} failed:\n{traceback.format_exc()}")
            self.close_connection = True
            send(self, 500, b'{"Message":"emulator internal error"}', content_type="application/json")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    # -- GET /_emulator/stats ------------------------------------------------------------------
    def _stats(self) -> None:
        stats = self.server.pool.stats().to_dict()
        wanted = parse_qs(urlsplit(self.path).query).get("records", ["0"])[0]
        records = stats.pop("records")
        if wanted == "all":
            stats["records"] = records
        elif wanted.isdigit() and int(wanted) > 0:
            stats["records"] = records[-int(wanted):]
        send(self, 200, json.dumps(stats).encode(), content_type="application/json")

    # -- Lambda Invoke API ---------------------------------------------------------------------
    def _invoke_api(self) -> None:
        try:
            payload = read_body(self, MAX_REQUEST_BYTES) or b"{}"
        except BodyTooLarge:
            send(self, 413, _TOO_LARGE, [("X-Amzn-ErrorType", "RequestEntityTooLargeException")],
                 content_type="application/json")
            return
        try:
            json.loads(payload)
        except ValueError as exc:
            body = json.dumps({"Type": "User", "message": f"Could not parse request body into json: {exc}"})
            send(self, 400, body.encode(), [("X-Amzn-ErrorType", "InvalidRequestContentException")],
                 content_type="application/json")
            return
        client_context = self._client_context()
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "DryRun":
            send(self, 204)
            return
        if invocation_type == "Event":
            request_id = str(uuid.uuid4())
            threading.Thread(target=self._invoke_quietly, args=(payload, request_id, client_context),
                             daemon=True).start()
            send(self, 202, headers=[("X-Amzn-RequestId", request_id)])
            return
        result = self.server.pool.invoke(payload, client_context=client_context,
                                         trace=self.headers.get("X-Amzn-Trace-Id"))
        headers = [("X-Amzn-RequestId", result.request_id), ("X-Amz-Executed-Version", FUNCTION_VERSION)]
        if not result.ok:
            headers.append(("X-Amz-Function-Error", "Unhandled"))
        send(self, 200, result.payload, headers, content_type=result.content_type)

    def _client_context(self) -> str | None:
        """X-Amz-Client-Context is base64 JSON on the Invoke API, plain JSON on the Runtime API."""
        encoded = self.headers.get("X-Amz-Client-Context")
        if not encoded:
            return None
        try:
            return base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None

    def _invoke_quietly(self, payload: bytes, request_id: str, client_context: str | None) -> None:
        try:
            self.server.pool.invoke(payload, request_id=request_id, client_context=client_context)
        except EmulatorError as exc:
            self.server.log(f"emulator: asynchronous invocation {request_id} dropped: {exc}")

    # -- Function URL --------------------------------------------------------------------------
    def _function_url(self) -> None:
        config = self.server.config
        try:
            body = read_body(self, MAX_REQUEST_BYTES)
        except BodyTooLarge:
            send(self, 413, _TOO_LARGE, content_type="application/json")
            return
        now = time.time()
        request_id = str(uuid.uuid4())
        trace = self.headers.get("X-Amzn-Trace-Id") or trace_id(now)
        request = HttpRequest(method=self.command, target=self.path, headers=list(self.headers.items()),
                              body=body, source_ip=self.client_address[0], protocol=self.request_version)
        event = function_url_event(request, request_id=request_id, url_id=config.url_id,
                                   region=config.region, now=now, trace_id=trace)
        payload = json.dumps(event).encode()
        if len(payload) > MAX_REQUEST_BYTES:  # base64 grows a body by a third
            send(self, 413, _TOO_LARGE, content_type="application/json")
            return
        result = self.server.pool.invoke(payload, request_id=request_id, trace=trace)
        if not result.ok:
            self._internal_error(result.request_id, str(result.error_type))
            return
        try:
            response = function_url_response(result.payload)
        except MalformedResponseError as exc:
            self.server.log(f"emulator: {request_id}: the function's response cannot be served: {exc}")
            self._internal_error(result.request_id, "Function.MalformedResponse")
            return
        self._respond(response, result.request_id)

    def _internal_error(self, request_id: str, error_type: str) -> None:
        send(self, 502, b"Internal Server Error",
             [("X-Amzn-RequestId", request_id), ("X-Amzn-ErrorType", error_type)],
             content_type="text/plain; charset=utf-8")

    def _respond(self, response: HttpResponse, request_id: str) -> None:
        headers = [*response.headers, ("X-Amzn-RequestId", request_id)]
        send(self, response.status, response.body, headers)
