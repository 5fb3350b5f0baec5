"""A pool of runtimes: each request waits for an idle runtime, as Lambda gives each environment
one request at a time. Also the counters behind `Emulator.stats()`.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from emulator.config import EmulatorConfig
from emulator.exceptions import EmulatorClosedError, ReadyTimeoutError, RuntimeInitError
from emulator.report import ERROR, OK, TIMEOUT, EmulatorStats, InvocationRecord, LogSink, report_lines
from emulator.runtime import Launcher, Runtime
from emulator.runtime_api import Invocation

# Enough history for a benchmark run; older records are dropped (the counters keep counting).
MAX_RECORDS = 100_000


@dataclass(frozen=True)
class InvokeResult:
    """The answer Lambda's Invoke API would give: the result, or the error object and its type."""

    request_id: str
    payload: bytes
    content_type: str
    error_type: str | None  # None when the function succeeded
    record: InvocationRecord

    @property
    def ok(self) -> bool:
        return self.error_type is None

    def json(self) -> Any:
        return json.loads(self.payload)


def trace_id(now: float | None = None) -> str:
    """An X-Ray trace header value shaped like Lambda's."""
    epoch = int(now if now is not None else time.time())
    return f"Root=1-{epoch:08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=0"


class RuntimePool:
    """`concurrency` runtimes behind one queue of idle ones."""

    def __init__(self, config: EmulatorConfig, launcher: Launcher, log: LogSink) -> None:
        self.config = config
        self.log = log
        self.runtimes = [Runtime(i, config, launcher, log) for i in range(config.concurrency)]
        self._idle: queue.Queue[Runtime] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._records: deque[InvocationRecord] = deque(maxlen=MAX_RECORDS)
        self._invocations = self._errors = self._timeouts = 0

    def start(self) -> None:
        """Start every runtime now (their inits run in parallel), like provisioned concurrency."""
        for runtime in self.runtimes:
            runtime.start()
            self._idle.put(runtime)

    def close(self) -> None:
        self._closed.set()
        for runtime in self.runtimes:
            runtime.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every runtime has finished init; raise if one failed or time ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for runtime in self.runtimes:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            sandbox = runtime.wait_ready(left)
            if self._closed.is_set():
                raise EmulatorClosedError("the emulator stopped before its runtimes were ready")
            if sandbox is None:
                raise ReadyTimeoutError(f"{runtime.name} did not finish init within {timeout} s")
            if not sandbox.ready:
                state = sandbox.state
                error = state.init_error or {
                    "errorType": "Runtime.ExitError",
                    "errorMessage": f"runtime exited with code {state.exit_code} before asking for an event",
                }
                raise RuntimeInitError(runtime.name, str(error.get("errorType")), str(error.get("errorMessage")))

    def _acquire(self) -> Runtime:
        while True:
            if self._closed.is_set():
                raise EmulatorClosedError("the emulator is stopping")
            try:
                return self._idle.get(timeout=0.25)
            except queue.Empty:
                continue

    def invoke(self, payload: bytes, *, request_id: str | None = None, client_context: str | None = None,
               trace: str | None = None) -> InvokeResult:
        """Run one event on the next idle runtime and return Lambda's answer (never raises for
        function failures; raises `EmulatorClosedError` once the emulator is closing)."""
        started_at = time.time()
        invocation = Invocation(
            request_id=request_id or str(uuid.uuid4()), payload=payload, deadline_ms=0,
            function_arn=self.config.function_arn, trace_id=trace or trace_id(started_at),
            client_context=client_context,
        )
        runtime = self._acquire()
        try:
            outcome = runtime.invoke(invocation, started_at)
        finally:
            self._idle.put(runtime)
        record = outcome.record
        with self._lock:
            self._records.append(record)
            self._invocations += 1
            self._errors += record.status != OK
            self._timeouts += record.status == TIMEOUT
        for line in report_lines(record):
            self.log(line)
        return InvokeResult(invocation.request_id, outcome.payload, outcome.content_type, outcome.error_type,
                            record)

    def stats(self) -> EmulatorStats:
        runtimes = tuple(runtime.stats() for runtime in self.runtimes)
        with self._lock:
            records = tuple(self._records)
            invocations, errors, timeouts = self._invocations, self._errors, self._timeouts
        starts = sum(r.starts for r in runtimes)
        return EmulatorStats(
            ready=all(r.state in ("idle", "busy") for r in runtimes),
            concurrency=self.config.concurrency,
            starts=starts,
            restarts=sum(max(0, r.starts - 1) for r in runtimes),
            init_errors=sum(runtime.init_failures() for runtime in self.runtimes),
            invocations=invocations,
            errors=errors,
            timeouts=timeouts,
            init_durations_ms=tuple(d for runtime in self.runtimes for d in runtime.init_durations_ms()),
            durations_ms=tuple(r.duration_ms for r in records if r.status in (OK, ERROR)),
            runtimes=runtimes,
            records=records,
        )
