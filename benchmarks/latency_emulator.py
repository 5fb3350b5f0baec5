"""The function end to end: the real handler under awslambdaric, behind the emulator's Function URL.

This is the path a user's request takes on Lambda (Function URL event, base64 body, the handler's
routing and JSON answer) minus the network. Each `EmulatedFunction` is one runtime of one Lambda
memory size: the handler sizes its thread pool from `OMP_NUM_THREADS` (handler.config), and the
runtime process is pinned to that many CPUs with `taskset` when this machine has more, so the
function sees the vCPUs Lambda would give it (`os.sched_getaffinity`) and nothing else.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from benchmarks.exceptions import LatencyBenchmarkError
from benchmarks.latency_model import ModelRef
from emulator import Emulator, EmulatorConfig
from emulator.exceptions import EmulatorError

REQUEST_TIMEOUT_S = 120.0
_LOG_TAIL = 30


@dataclass(frozen=True)
class ColdSample:
    """One cold start through the emulator."""

    init_ms: float  # the emulator's Init Duration (process start to the runtime's first /next)
    first_response_ms: float  # emulator start to the first /predict answer, as a client sees it
    timing_ms: dict[str, Any]  # the handler's own step timings for that first request
    variant: str  # the variant that answered (the handler's choice when none was asked for)
    engine: str  # what runs that variant (from its manifest format)

    def to_dict(self) -> dict[str, Any]:
        return {"init_ms": round(self.init_ms, 2), "first_response_ms": round(self.first_response_ms, 2),
                "timing_ms": self.timing_ms, "variant": self.variant, "engine": self.engine}


def pinning_cpus(threads: int) -> tuple[int, ...] | None:
    """The CPUs a runtime of `threads` vCPUs is pinned to, or None when it may use them all."""
    available = sorted(os.sched_getaffinity(0))
    return None if threads >= len(available) else tuple(available[:threads])


def pinning_method() -> str:
    return "taskset" if shutil.which("taskset") else "none (taskset not found: OMP_NUM_THREADS only)"


class EmulatedFunction:
    """One emulated Lambda function of `memory_mb` serving `variant`, for timing requests.

    `variant` None leaves the choice to the handler (the fastest variant present, as deployed
    without MODEL_VARIANT); `variant` then becomes the one its answers name.
    """

    def __init__(self, model: ModelRef, variant: str | None, memory_mb: int, threads: int,
                 workdir: Path) -> None:
        self.model = model
        self.variant = variant or model.served_variant  # until an answer names the one that ran
        self.memory_mb = memory_mb
        self.threads = threads
        self._log: deque[str] = deque(maxlen=_LOG_TAIL)
        config = EmulatorConfig(
            model_root=model.root, model_name=model.name, model_version=model.version, port=0,
            memory_mb=memory_mb, timeout_s=60.0,
            # An empty MODEL_VARIANT means "the handler's choice" and hides one set in the shell.
            environment={"OMP_NUM_THREADS": str(threads), "MODEL_VARIANT": variant or ""},
            python=self._python(threads, workdir),
        )
        self._emulator = Emulator(config, log=self._log.append)

    @staticmethod
    def _python(threads: int, workdir: Path) -> str:
        """This interpreter, behind a `taskset` wrapper when the runtime must see fewer CPUs."""
        cpus = pinning_cpus(threads)
        taskset = shutil.which("taskset")
        if cpus is None or taskset is None:
            return sys.executable
        wrapper = workdir / f"python-cpus-{'-'.join(map(str, cpus))}"
        wrapper.write_text(f'#!/bin/sh\nexec {taskset} -c {",".join(map(str, cpus))} {sys.executable} "$@"\n',
                           encoding="utf-8")
        wrapper.chmod(0o755)
        return str(wrapper)

    def cold_start(self, photo: bytes) -> ColdSample:
        """Start the runtime and send the first request at once: the client waits through init."""
        start = time.perf_counter()
        try:
            self._emulator.start()
        except EmulatorError as exc:
            raise LatencyBenchmarkError(f"the emulator did not start: {exc}") from exc
        _, timing = self.predict(photo)
        first_response_ms = (time.perf_counter() - start) * 1000.0
        inits = self._emulator.stats().init_durations_ms
        if not inits:
            raise LatencyBenchmarkError("the emulator reported no init duration for its first request")
        return ColdSample(init_ms=float(inits[0]), first_response_ms=first_response_ms, timing_ms=timing,
                          variant=self.variant, engine=self.model.engine(self.variant))

    def predict(self, photo: bytes) -> tuple[float, dict[str, Any]]:
        """POST the JPEG to /predict; returns (ms as the client saw it, the handler's `timing_ms`)."""
        connection = http.client.HTTPConnection("127.0.0.1", self._emulator.port, timeout=REQUEST_TIMEOUT_S)
        try:
            start = time.perf_counter()
            connection.request("POST", "/predict", body=photo, headers={"content-type": "image/jpeg"})
            response = connection.getresponse()
            body = response.read()
            elapsed_ms = (time.perf_counter() - start) * 1000.0
        except OSError as exc:
            raise LatencyBenchmarkError(f"POST /predict through the emulator failed: {exc}{self._tail()}") from exc
        finally:
            connection.close()
        if response.status != 200:
            raise LatencyBenchmarkError(f"POST /predict through the emulator answered {response.status}: "
                                        f"{body[:300].decode('utf-8', 'replace')}{self._tail()}")
        try:
            timing = dict(json.loads(body)["timing_ms"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LatencyBenchmarkError(f"the /predict answer has no timing_ms: {body[:200]!r}") from exc
        if isinstance(timing.get("variant"), str):
            self.variant = timing["variant"]
        return elapsed_ms, timing

    def invoke(self, event: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """A direct invocation (the Invoke API's path, no Function URL): (ms as the caller saw it, answer)."""
        start = time.perf_counter()
        try:
            result = self._emulator.invoke(event)
        except EmulatorError as exc:
            raise LatencyBenchmarkError(f"a direct invocation through the emulator failed: {exc}{self._tail()}") \
                from exc
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        try:
            body = result.json()
        except ValueError as exc:
            raise LatencyBenchmarkError(f"a direct invocation answered no JSON: {result.payload[:200]!r}") from exc
        if not result.ok or not isinstance(body, dict) or "error" in body:
            raise LatencyBenchmarkError(f"a direct invocation failed ({result.error_type or 'error answer'}): "
                                        f"{result.payload[:300].decode('utf-8', 'replace')}{self._tail()}")
        return elapsed_ms, body

    def peak_rss_mb(self) -> float:
        """The runtime process tree's peak RSS, as the REPORT line's Max Memory Used."""
        runtimes = self._emulator.stats().runtimes
        return max((r.max_rss_mb for r in runtimes), default=0.0)

    def _tail(self) -> str:
        lines = [line for line in self._log if line.strip()][-5:]
        return ("; last emulator lines: " + " | ".join(line[:200] for line in lines)) if lines else ""

    def close(self) -> None:
        self._emulator.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
