"""The Lambda Runtime API (2018-06-01) for one runtime process: what awslambdaric talks to.

    GET  /2018-06-01/runtime/invocation/next              -> the next event (blocks until there is one)
    POST /2018-06-01/runtime/invocation/{id}/response     -> 202 (413 past 6 MB, as Lambda)
    POST /2018-06-01/runtime/invocation/{id}/error        -> 202
    POST /2018-06-01/runtime/init/error                   -> 202

Each runtime process gets its own server and its own `RuntimeApiState`. A killed process can leave
a `/next` request blocked in a server thread; because the replacement process talks to a fresh
server, that stale thread can never pick up an invocation meant for the new process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator.httpio import BodyTooLarge, FastHandler, QuietServer, read_body, send

API_PREFIX = "/2018-06-01/runtime"
# Lambda's response limit, as its own error message states it.
MAX_RESPONSE_BYTES = 6_291_556
_ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
_ACCEPTED = b'{"status":"OK"}'


@dataclass
class Invocation:
    """One event on its way through a runtime, and what came back."""

    request_id: str
    payload: bytes
    deadline_ms: int
    function_arn: str
    trace_id: str
    client_context: str | None = None
    handed_out_at: float | None = None  # monotonic time the runtime received it (/next)
    finished_at: float | None = None  # monotonic time the runtime answered
    response: bytes | None = None
    content_type: str = "application/json"
    error: dict[str, Any] | None = None  # Lambda's error shape: errorType, errorMessage, ...

    @property
    def done(self) -> bool:
        return self.finished_at is not None


class RuntimeApiState:
    """The hand-off point between the emulator (submits events) and the runtime (pulls them)."""

    def __init__(self, on_ready: Callable[[], None] | None = None) -> None:
        self.cond = threading.Condition()
        self.ready_at: float | None = None  # monotonic time of the first /next: init is over
        self.init_error: dict[str, Any] | None = None
        self.failed_at: float | None = None  # monotonic time of an init error or of the exit
        self.exit_code: int | None = None  # set by whoever watches the process
        self.closed = False
        self.polling = False  # a /next request is waiting for an event
        self._on_ready = on_ready
        self._pending: Invocation | None = None
        self._current: Invocation | None = None

    # -- emulator side -------------------------------------------------------------------------
    def submit(self, invocation: Invocation) -> None:
        with self.cond:
            self._pending = invocation
            self.cond.notify_all()

    def abandon(self) -> None:
        """Forget the in-flight event (after a timeout): a late answer to it is refused."""
        with self.cond:
            self._pending = None
            self._current = None
            self.cond.notify_all()

    def process_exited(self, code: int) -> None:
        with self.cond:
            self.exit_code = code
            if self.failed_at is None:
                self.failed_at = time.monotonic()
            self.cond.notify_all()

    @property
    def init_over(self) -> bool:
        """Init ended one way or another: ready, reported an error, exited, or shut down."""
        return self.ready_at is not None or self.init_error is not None or self.exit_code is not None \
            or self.closed

    def close(self) -> None:
        """Make every present and future `/next` fail, which ends an awslambdaric process."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    # -- runtime side (server threads) --------------------------------------------------------------
    def next_invocation(self) -> Invocation | None:
        """Block until an event is submitted; None once the state is closed."""
        with self.cond:
            first = self.ready_at is None
            if first:
                self.ready_at = time.monotonic()
        if first:
            if self._on_ready is not None:
                self._on_ready()  # before waking waiters, so "ready" is logged in order
            with self.cond:
                self.cond.notify_all()
        with self.cond:
            self.polling = True
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.closed or self._pending is not None)
            self.polling = False
            invocation, self._pending = self._pending, None
            if self.closed or invocation is None:
                return None
            invocation.handed_out_at = time.monotonic()
            self._current = invocation
            return invocation

    def finish(self, request_id: str, *, response: bytes | None = None, content_type: str = "",
               error: dict[str, Any] | None = None) -> bool:
        """Record the answer to the in-flight event; False if `request_id` is not in flight."""
        with self.cond:
            invocation = self._current
            if invocation is None or invocation.request_id != request_id or invocation.done:
                return False
            invocation.response = response
            invocation.content_type = content_type or "application/json"
            invocation.error = error
            invocation.finished_at = time.monotonic()
            self._current = None
            self.cond.notify_all()
            return True

    def report_init_error(self, error: dict[str, Any]) -> None:
        with self.cond:
            self.init_error = error
            self.failed_at = time.monotonic()
            self.cond.notify_all()


def error_payload(body: bytes, error_type_header: str | None, default_type: str) -> dict[str, Any]:
    """Lambda's error object from what a runtime posted (keeps every field it sent)."""
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {"errorMessage": body.decode("utf-8", "replace")}
    if not isinstance(parsed, dict):
        parsed = {"errorMessage": str(parsed)}
    parsed.setdefault("errorType", error_type_header or default_type)
    parsed.setdefault("errorMessage", "")
    return parsed


class _RuntimeApiHandler(FastHandler):
    server: RuntimeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging: awslambdaric calls /next once per event."""

    def do_GET(self) -> None:
        if self.path != f"{API_PREFIX}/invocation/next":
            send(self, 404, b'{"errorType":"NotFound"}', content_type="application/json")
            return
        invocation = self.server.state.next_invocation()
        if invocation is None:
            self.close_connection = True
            send(self, 410, b'{"errorType":"Runtime.Shutdown","errorMessage":"emulator is stopping"}',
                 content_type="application/json")
            return
        headers = [
            ("Lambda-Runtime-Aws-Request-Id", invocation.request_id),
            ("Lambda-Runtime-Deadline-Ms", str(invocation.deadline_ms)),
            ("Lambda-Runtime-Invoked-Function-Arn", invocation.function_arn),
            ("Lambda-Runtime-Trace-Id", invocation.trace_id),
        ]
        if invocation.client_context:
            headers.append(("Lambda-Runtime-Client-Context", invocation.client_context))
        # awslambdaric only decodes the event as JSON when this exact content type is present.
        send(self, 200, invocation.payload, headers, content_type="application/json")

    def do_POST(self) -> None:
        state = self.server.state
        path = self.path
        try:
            body = read_body(self, MAX_RESPONSE_BYTES)
        except BodyTooLarge as exc:
            request_id = _request_id(path)
            if request_id and path.endswith("/response"):
                state.finish(request_id, error={
                    "errorType": "Function.ResponseSizeTooLarge",
                    "errorMessage": f"Response payload size ({exc.size} bytes) exceeded maximum allowed "
                                    f"payload size ({MAX_RESPONSE_BYTES} bytes).",
                })
            send(self, 413, b'{"errorType":"RequestEntityTooLarge"}', content_type="application/json")
            return
        if path == f"{API_PREFIX}/init/error":
            state.report_init_error(error_payload(body, self.headers.get(_ERROR_TYPE_HEADER), "Runtime.Unknown"))
            send(self, 202, _ACCEPTED, content_type="application/json")
            return
        request_id = _request_id(path)
        if request_id is None:
            send(self, 404, b'{"errorType":"NotFound"}', content_type="application/json")
            return
        if path.endswith("/response"):
            accepted = state.finish(request_id, response=body,
                                    content_type=self.headers.get("Content-Type", "application/json"))
        else:
            error = error_payload(body, self.headers.get(_ERROR_TYPE_HEADER), "Runtime.Unknown")
            accepted = state.finish(request_id, error=error)
        if accepted:
            send(self, 202, _ACCEPTED, content_type="application/json")
        else:
            send(self, 400, b'{"errorType":"InvalidRequestID","errorMessage":"Invalid request ID"}',
                 content_type="application/json")


def _request_id(path: str) -> str | None:
    prefix = f"{API_PREFIX}/invocation/"
    for suffix in ("/response", "/error"):
        if path.startswith(prefix) and path.endswith(suffix):
            request_id = path[len(prefix):-len(suffix)]
            return request_id or None
    return None


class RuntimeApiServer(QuietServer):
    """A Runtime API server on 127.0.0.1 (a free port), serving one `RuntimeApiState`."""

    def __init__(self, state: RuntimeApiState) -> None:
        super().__init__(("127.0.0.1", 0), _RuntimeApiHandler)
        self.state = state
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"runtime-api-{self.port}", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def address(self) -> str:
        """What goes into AWS_LAMBDA_RUNTIME_API."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Fail every waiting `/next`, stop serving and release the port."""
        self.state.close()
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()
