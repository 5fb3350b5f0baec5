"""What the emulator tells about invocations: Lambda's START/END/REPORT lines and the counters.

Tests and benchmarks read the same figures as data (`InvocationRecord`, `EmulatorStats`), so that
they never have to parse log lines.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

LogSink = Callable[[str], None]

# Outcomes of one invocation.
OK, ERROR, TIMEOUT, INIT_ERROR, CRASH = "ok", "error", "timeout", "init_error", "crash"


@dataclass(frozen=True)
class InvocationRecord:
    """One invocation as the platform saw it (what a REPORT line says, plus wall-clock stamps)."""

    request_id: str
    runtime: str
    status: str  # ok | error (handler raised) | timeout | init_error | crash (runtime exited)
    error_type: str | None
    started_at: float  # epoch seconds when the emulator took the request
    ended_at: float  # epoch seconds when the outcome was known
    duration_ms: float
    billed_duration_ms: int
    init_duration_ms: float | None  # only on the invocation that followed a cold start
    memory_size_mb: int
    max_memory_used_mb: int


@dataclass(frozen=True)
class RuntimeStats:
    """One runtime slot: its current process and its history."""

    name: str
    state: str  # starting | idle | busy | init_failed | stopped
    pid: int | None
    starts: int
    invocations: int
    rss_mb: float  # current resident memory of the process tree
    max_rss_mb: float  # peak seen so far


@dataclass(frozen=True)
class EmulatorStats:
    """Counters for tests and benchmarks (also served as JSON at GET /_emulator/stats)."""

    ready: bool
    concurrency: int
    starts: int  # runtime process/container starts, the initial ones included
    restarts: int  # starts beyond the first one of each runtime
    init_errors: int
    invocations: int
    errors: int  # every invocation whose caller got an error (handler, init, timeout, crash)
    timeouts: int
    init_durations_ms: tuple[float, ...]
    durations_ms: tuple[float, ...]
    runtimes: tuple[RuntimeStats, ...]
    records: tuple[InvocationRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def billed_duration_ms(duration_ms: float, init_duration_ms: float | None) -> int:
    """Whole milliseconds, rounded up; init is billed too (container images, and since 2025 all)."""
    return math.ceil(duration_ms + (init_duration_ms or 0.0))


def start_line(request_id: str) -> str:
    """Logged when the runtime is handed the event, so the handler's own lines follow it."""
    return f"START RequestId: {request_id} Version: $LATEST"


def report_lines(record: InvocationRecord) -> list[str]:
    """END and REPORT (tab-separated fields), as Lambda writes them after an invocation."""
    fields = [
        f"REPORT RequestId: {record.request_id}",
        f"Duration: {record.duration_ms:.2f} ms",
        f"Billed Duration: {record.billed_duration_ms} ms",
        f"Memory Size: {record.memory_size_mb} MB",
        f"Max Memory Used: {record.max_memory_used_mb} MB",
    ]
    if record.init_duration_ms is not None:
        fields.append(f"Init Duration: {record.init_duration_ms:.2f} ms")
    if record.status == TIMEOUT:
        fields.append("Status: timeout")
    elif record.status in (INIT_ERROR, CRASH):
        fields += ["Status: error", f"Error Type: {record.error_type}"]
    return [f"END RequestId: {record.request_id}", "\t".join(fields)]


class StreamLog:
    """A thread-safe line sink (stderr by default): runtime output and REPORT lines interleave."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()
