"""Helpers for the emulator tests: toy handler configs, a line-collecting log, a raw HTTP client.

The toy handlers live in `handlers/`, which the runtimes use as their task root (their cwd), so
their module names never clash with the project's packages.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator import Emulator, EmulatorConfig

HANDLERS = Path(__file__).resolve().parent / "handlers"


class ListLog:
    """A log sink that keeps every line (for assertions) and echoes it to stderr (for failures)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)
        print(line, file=sys.stderr)

    def reports(self) -> list[str]:
        with self._lock:
            return [line for line in self.lines if line.startswith("REPORT ")]

    def report_for(self, request_id: str) -> str:
        matches = [line for line in self.reports() if line.startswith(f"REPORT RequestId: {request_id}\t")]
        assert len(matches) == 1, f"expected one REPORT line for {request_id}, got {matches}"
        return matches[0]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def http_request(url: str, method: str, path: str, body: bytes | None = None,
                 headers: Sequence[tuple[str, str]] = (), timeout: float = 60.0) -> Reply:
    """One request with full control over method, repeated headers and raw bytes."""
    host_port = url.removeprefix("http://").rstrip("/")
    connection = http.client.HTTPConnection(host_port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def toy_config(**overrides: object) -> EmulatorConfig:
    """A config running `handlers/toy.py` on a free port."""
    settings: dict[str, object] = {"port": 0, "handler": "toy.lambda_handler", "task_root": HANDLERS,
                                   "timeout_s": 10.0, "memory_mb": 1024}
    settings.update(overrides)
    return EmulatorConfig(**settings)  # type: ignore[arg-type]


@dataclass
class Running:
    emulator: Emulator
    log: ListLog


def fake_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same isolation as the suite's autouse fixture, for module-scoped fixtures that start
    runtimes before it applies (runtimes inherit the environment they are started in)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
