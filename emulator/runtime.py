"""Runtime processes: starting awslambdaric, feeding it one event at a time, killing and restarting it.

A `Runtime` is one slot of concurrency (Lambda's execution environment). Over its life it runs a
series of `Sandbox`es: one process (or container) with its own Runtime API server. A sandbox is
replaced after a timeout or a crash (right away, as Lambda resets the environment), and after a
failed init (when the next request arrives, as Lambda retries init on the next invoke).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import IO, Any

from emulator import procfs
from emulator.config import EmulatorConfig, local_process_environment
from emulator.exceptions import EmulatorClosedError, RuntimeStartError
from emulator.report import (
    CRASH,
    ERROR,
    INIT_ERROR,
    OK,
    TIMEOUT,
    InvocationRecord,
    LogSink,
    RuntimeStats,
    billed_duration_ms,
    start_line,
)
from emulator.runtime_api import Invocation, RuntimeApiServer, RuntimeApiState

_TREE_REFRESH_S = 2.0  # how often the process tree is re-scanned for memory figures
_STOP_GRACE_S = 3.0


class RuntimeProcess(ABC):
    """A started runtime: a local process group or a container, killed the way it needs."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @abstractmethod
    def memory_root(self) -> int | None:
        """The pid whose process tree is the function (None while unknown)."""

    @abstractmethod
    def kill(self) -> None:
        """Hard kill now, as Lambda does on a timeout."""

    @abstractmethod
    def stop(self, grace_s: float) -> None:
        """Ask the runtime to end, then kill it after `grace_s`."""


class Launcher(ABC):
    """Knows how to start one runtime given its Runtime API address."""

    @abstractmethod
    def spawn(self, api_address: str, name: str) -> RuntimeProcess:
        ...

    @abstractmethod
    def describe(self) -> str:
        """A few words for the log: what is being started."""


class LocalProcess(RuntimeProcess):
    """`python -m awslambdaric` in its own session, so the whole group can be signalled."""

    def memory_root(self) -> int | None:
        return self.popen.pid

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        reap(self.popen, 5.0)

    def stop(self, grace_s: float) -> None:
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            if reap(self.popen, grace_s):
                self._signal_group(signal.SIGKILL)  # leftovers in the group
                return
        self.kill()


def reap(popen: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        popen.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


class LocalLauncher(Launcher):
    """Runs the handler under the real awslambdaric from this checkout's Python environment."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config

    def command(self) -> list[str]:
        return [self.config.python, "-m", "awslambdaric", self.config.handler]

    def spawn(self, api_address: str, name: str) -> RuntimeProcess:
        env = local_process_environment(self.config, api_address)
        try:
            popen = subprocess.Popen(self.command(), cwd=self.config.task_root, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise RuntimeStartError(f"{name}: cannot start {self.config.python}: {exc}") from exc
        return LocalProcess(popen)

    def describe(self) -> str:
        return f"python -m awslambdaric {self.config.handler}"


@dataclass(frozen=True)
class Outcome:
    """What one invocation produced, for the caller and for the REPORT line."""

    record: InvocationRecord
    payload: bytes  # handler's result, or Lambda's error object as JSON
    content_type: str
    error_type: str | None


class Sandbox:
    """One runtime process (or container) and its private Runtime API server."""

    def __init__(self, name: str, launcher: Launcher, log: LogSink) -> None:
        self.name = name
        self.log = log
        self.state = RuntimeApiState(on_ready=self._on_ready)
        self.server = RuntimeApiServer(self.state)
        self.server.start()
        self.started_at = time.monotonic()
        try:
            self.process = launcher.spawn(self.server.address, name)
        except BaseException:
            self.server.stop()
            raise
        self.init_reported = False  # an invocation has already reported this sandbox's init
        self.stopping = False
        self.max_rss_mb = 0.0
        self._tree: list[int] = []
        self._tree_at = 0.0
        for stream in (self.process.popen.stdout, self.process.popen.stderr):
            threading.Thread(target=self._pump, args=(stream,), daemon=True, name=f"{name}-log").start()
        threading.Thread(target=self._watch, daemon=True, name=f"{name}-watch").start()

    # -- life cycle ----------------------------------------------------------------------------
    def _on_ready(self) -> None:
        self.memory()  # a first figure, in case the process dies before any invocation ends
        self.log(f"emulator: {self.name} ready (pid {self.process.pid}, init {self.init_duration_ms:.0f} ms)")

    def _watch(self) -> None:
        code = self.process.popen.wait()
        self.state.process_exited(code)
        if not self.stopping:
            self.log(f"emulator: {self.name} runtime exited ({exit_description(code)})")

    def _pump(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\n")
            # awslambdaric joins the lines of one error record with "\r".
            for line in text.split("\r"):
                if line.strip():
                    self.log(f"[{self.name}] {line}")
        stream.close()

    def kill(self) -> None:
        self.stopping = True
        self.process.kill()
        self.server.stop()

    def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        self.stopping = True
        self.process.stop(grace_s)
        self.server.stop()

    # -- figures -------------------------------------------------------------------------------
    @property
    def init_duration_ms(self) -> float | None:
        ended = self.state.ready_at or self.state.failed_at
        return None if ended is None else (ended - self.started_at) * 1000

    @property
    def ready(self) -> bool:
        return self.state.ready_at is not None

    @property
    def init_failed(self) -> bool:
        return self.state.ready_at is None and (self.state.init_error is not None
                                                or self.state.exit_code is not None)

    def memory(self) -> tuple[float, float]:
        """(current RSS, peak RSS) of the process tree in MB; the peak never goes down."""
        root = self.process.memory_root()
        if root is None:
            return 0.0, self.max_rss_mb
        now = time.monotonic()
        if now - self._tree_at > _TREE_REFRESH_S or not self._tree:
            self._tree, self._tree_at = procfs.process_tree(root), now
        rss, peak = procfs.memory_mb(self._tree)
        self.max_rss_mb = max(self.max_rss_mb, peak)
        return rss, self.max_rss_mb


def exit_description(code: int) -> str:
    """Go-style wording, as Lambda's Runtime.ExitError messages use it."""
    if code < 0:
        try:
            return f"signal: {signal.Signals(-code).name.removeprefix('SIG').lower()}"
        except ValueError:
            return f"signal: {-code}"
    return f"exit status {code}"


def timeout_error(request_id: str, timeout_s: float) -> dict[str, Any]:
    """What Lambda's Invoke API returns for a timed-out invocation."""
    return {"errorType": "Sandbox.Timedout",
            "errorMessage": f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds"}


def exit_error(request_id: str, code: int) -> dict[str, Any]:
    """What Lambda returns when the runtime process died under an invocation."""
    return {"errorType": "Runtime.ExitError",
            "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: {exit_description(code)}"}


class Runtime:
    """One concurrency slot: serves one invocation at a time, replacing its sandbox as needed."""

    def __init__(self, index: int, config: EmulatorConfig, launcher: Launcher, log: LogSink) -> None:
        self.name = f"runtime-{index}"
        self.config = config
        self.launcher = launcher
        self.log = log
        self.starts = 0
        self.invocations = 0
        self.busy = False
        self._sandbox: Sandbox | None = None
        self._past_init_ms: list[float] = []  # init durations of earlier sandboxes
        self._past_init_failures = 0
        self._closed = False
        self._lock = threading.Lock()

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Start a fresh sandbox, retiring the current one (which must be dead or unwanted)."""
        with self._lock:
            if self._closed:
                raise EmulatorClosedError(f"{self.name} is stopped")
            old = self._sandbox
            self.log(f"emulator: {self.name} starting ({self.launcher.describe()})")
            sandbox = Sandbox(self.name, self.launcher, self.log)
            self._sandbox = sandbox
            self.starts += 1
            if old is not None:
                self._retire(old)
        if old is not None:
            old.kill()
        return sandbox

    def _retire(self, sandbox: Sandbox) -> None:
        if sandbox.ready and sandbox.init_duration_ms is not None:
            self._past_init_ms.append(round(sandbox.init_duration_ms, 2))
        elif sandbox.init_failed:
            self._past_init_failures += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sandbox = self._sandbox
        if sandbox is not None:
            sandbox.stop()

    def wait_ready(self, timeout: float | None) -> Sandbox | None:
        """The current sandbox once its init is over (ready or failed); None on timeout."""
        sandbox = self._sandbox
        if sandbox is None:
            return None
        state = sandbox.state
        return sandbox if state.wait_for(lambda: state.init_over, timeout) else None

    def _usable_sandbox(self) -> Sandbox:
        sandbox = self._sandbox
        if sandbox is None:
            return self.start()
        if sandbox.init_failed and sandbox.init_reported:
            return self.start()  # Lambda retries a failed init on the next invoke
        if sandbox.ready and sandbox.state.exit_code is not None:
            return self.start()  # died while idle
        return sandbox  # ready, still in init, or failed init that no caller has heard of yet

    # -- invoking ------------------------------------------------------------------------------
    def invoke(self, invocation: Invocation, started_at: float) -> Outcome:
        """Run one event through this slot; never raises for function-side failures."""
        self.busy = True
        try:
            self.invocations += 1
            return self._invoke(invocation, started_at)
        finally:
            self.busy = False

    def _invoke(self, invocation: Invocation, started_at: float) -> Outcome:
        sandbox = self._usable_sandbox()
        replaced = False
        while True:
            state = sandbox.state
            init_deadline = sandbox.started_at + self.config.init_timeout_s + self.config.timeout_s
            state.wait_for(lambda: state.init_over, max(0.0, init_deadline - time.monotonic()))  # noqa: B023
            cold = not sandbox.init_reported
            sandbox.init_reported = True
            if not sandbox.ready:
                return self._init_failure(sandbox, invocation, started_at)
            # An environment takes an event only while its runtime waits on /next. One that died on
            # its way back there (e.g. after Lambda refused an oversized response) is replaced
            # once, as Lambda would, instead of failing an innocent request.
            state.wait_for(lambda: state.polling or state.exit_code is not None or state.closed,  # noqa: B023
                           self.config.timeout_s)
            if state.polling or state.closed or state.exit_code is None or replaced:
                break
            sandbox, replaced = self.start(), True

        init_ms = sandbox.init_duration_ms if cold else None
        timeout_s = self.config.timeout_s
        invocation.deadline_ms = int((time.time() + timeout_s) * 1000)
        submitted = time.monotonic()
        self.log(start_line(invocation.request_id))
        state.submit(invocation)
        finished = lambda: invocation.done or state.exit_code is not None or state.closed
        state.wait_for(finished, timeout_s)
        if not finished() and invocation.handed_out_at is not None:
            # The clock runs from when the runtime received the event, not from when it was queued.
            state.wait_for(finished, invocation.handed_out_at + timeout_s - time.monotonic())
        began = invocation.handed_out_at or submitted

        if invocation.done:
            duration_ms = (invocation.finished_at - began) * 1000  # type: ignore[operator]
            if invocation.error is None:
                return self._outcome(invocation, started_at, OK, None, duration_ms, init_ms, sandbox,
                                     invocation.response or b"", invocation.content_type)
            error = invocation.error
            return self._outcome(invocation, started_at, ERROR, str(error.get("errorType")), duration_ms,
                                 init_ms, sandbox, json.dumps(error).encode(), "application/json")

        duration_ms = (time.monotonic() - began) * 1000
        if state.exit_code is not None or state.closed:
            error = exit_error(invocation.request_id, state.exit_code if state.exit_code is not None else -9)
            outcome = self._outcome(invocation, started_at, CRASH, error["errorType"], duration_ms, init_ms,
                                    sandbox, json.dumps(error).encode(), "application/json")
        else:
            error = timeout_error(invocation.request_id, timeout_s)
            outcome = self._outcome(invocation, started_at, TIMEOUT, error["errorType"], duration_ms, init_ms,
                                    sandbox, json.dumps(error).encode(), "application/json")
            state.abandon()
            sandbox.kill()
        self._replace_after_failure()
        return outcome

    def _init_failure(self, sandbox: Sandbox, invocation: Invocation, started_at: float) -> Outcome:
        self.log(start_line(invocation.request_id))
        state = sandbox.state
        request_id = invocation.request_id
        if state.init_error is not None:
            error = dict(state.init_error)
        elif state.exit_code is not None:
            error = exit_error(request_id, state.exit_code)
        elif state.closed:
            error = exit_error(request_id, -9)
        else:  # init overran both the init limit and the function timeout
            error = timeout_error(request_id, self.config.timeout_s)
            sandbox.kill()
        init_ms = sandbox.init_duration_ms
        if init_ms is None:
            init_ms = (time.monotonic() - sandbox.started_at) * 1000
        status = TIMEOUT if error["errorType"] == "Sandbox.Timedout" else INIT_ERROR
        return self._outcome(invocation, started_at, status, str(error.get("errorType")), 0.0, init_ms, sandbox,
                             json.dumps(error).encode(), "application/json")

    def _replace_after_failure(self) -> None:
        """After a timeout or crash Lambda throws the environment away; so do we, right away."""
        try:
            self.start()
        except EmulatorClosedError:
            pass
        except RuntimeStartError as exc:
            self.log(f"emulator: {self.name} could not be restarted: {exc}")

    def _outcome(self, invocation: Invocation, started_at: float, status: str, error_type: str | None,
                 duration_ms: float, init_ms: float | None, sandbox: Sandbox, payload: bytes,
                 content_type: str) -> Outcome:
        _, peak = sandbox.memory()
        record = InvocationRecord(
            request_id=invocation.request_id, runtime=self.name, status=status, error_type=error_type,
            started_at=started_at, ended_at=time.time(), duration_ms=round(duration_ms, 2),
            billed_duration_ms=billed_duration_ms(duration_ms, init_ms),
            init_duration_ms=None if init_ms is None else round(init_ms, 2),
            memory_size_mb=self.config.memory_mb, max_memory_used_mb=math.ceil(peak),
        )
        return Outcome(record, payload, content_type, error_type)

    # -- figures -------------------------------------------------------------------------------
    def init_durations_ms(self) -> list[float]:
        current = self._sandbox
        if current is not None and current.ready and current.init_duration_ms is not None:
            return [*self._past_init_ms, round(current.init_duration_ms, 2)]
        return list(self._past_init_ms)

    def init_failures(self) -> int:
        current = self._sandbox
        return self._past_init_failures + int(current is not None and current.init_failed)

    def stats(self) -> RuntimeStats:
        sandbox = self._sandbox
        if sandbox is None or self._closed:
            return RuntimeStats(self.name, "stopped", None, self.starts, self.invocations, 0.0, 0.0)
        rss, peak = sandbox.memory()
        if self.busy:
            state = "busy"
        elif sandbox.ready:
            state = "idle"
        elif sandbox.init_failed:
            state = "init_failed"
        else:
            state = "starting"
        return RuntimeStats(self.name, state, sandbox.process.memory_root(), self.starts, self.invocations,
                            round(rss, 1), round(peak, 1))
