"""`Emulator`: the whole emulated function (runtimes + gateway) as one object with a life cycle.

    with Emulator(EmulatorConfig(model_root=..., model_name="dogs", model_version="1", port=0)) as emu:
        emu.wait_ready()
        result = emu.invoke({"image": "..."})          # Lambda's Invoke API, in-process
        urllib.request.urlopen(emu.url + "/health")    # the Function URL
        emu.stats().restarts

The CLI (`python -m emulator serve`) is a thin shell around it.
"""

from __future__ import annotations

import json
import threading
from types import TracebackType
from typing import Any, Self

from emulator.config import EmulatorConfig
from emulator.exceptions import ConfigError
from emulator.gateway import Gateway
from emulator.pool import InvokeResult, RuntimePool
from emulator.report import EmulatorStats, LogSink, StreamLog
from emulator.runtime import Launcher, LocalLauncher


def make_launcher(config: EmulatorConfig) -> Launcher:
    """Local awslambdaric processes, or containers of `config.image`."""
    if config.image:
        from emulator.container import ContainerLauncher  # engine detection only when asked for

        return ContainerLauncher(config)
    return LocalLauncher(config)


class Emulator:
    """A local Lambda function with a Function URL; see the module docstring."""

    def __init__(self, config: EmulatorConfig, *, log: LogSink | None = None,
                 launcher: Launcher | None = None) -> None:
        config.validate()
        self.config = config
        self.log: LogSink = log or StreamLog()
        self._launcher = launcher
        self._pool: RuntimePool | None = None
        self._gateway: Gateway | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind the port, then start the runtimes (init runs in the background)."""
        if self._pool is not None or self._closed:
            raise RuntimeError("an Emulator starts once")
        launcher = self._launcher or make_launcher(self.config)
        pool = RuntimePool(self.config, launcher, self.log)
        try:
            gateway = Gateway(self.config, pool, self.log)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}") \
                from exc
        self._pool, self._gateway = pool, gateway
        try:
            pool.start()
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=gateway.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="emulator-gateway", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting requests, stop every runtime, release the ports. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._gateway is not None and self._thread is not None:
            self._gateway.shutdown()  # no new requests; those in flight get their answers below
        if self._pool is not None:
            self._pool.close()
        if self._gateway is not None:
            self._gateway.server_close()

    def __enter__(self) -> Self:
        return self if self._pool is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- use -----------------------------------------------------------------------------------
    @property
    def pool(self) -> RuntimePool:
        if self._pool is None:
            raise RuntimeError("the emulator is not started")
        return self._pool

    @property
    def port(self) -> int:
        if self._gateway is None:
            raise RuntimeError("the emulator is not started")
        return self._gateway.port

    @property
    def url(self) -> str:
        """The local Function URL (also serves the Invoke API path)."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def invoke_url(self) -> str:
        return f"{self.url}/2015-03-31/functions/function/invocations"

    def wait_ready(self, timeout: float | None = 120.0) -> None:
        """Block until every runtime finished init (asked for its first event).

        Raises `RuntimeInitError` if one failed init, `ReadyTimeoutError` if time ran out.
        """
        self.pool.wait_ready(timeout)

    def invoke(self, event: Any) -> InvokeResult:
        """Invoke with a JSON-serialisable event, as `lambda.invoke(Payload=json.dumps(event))`."""
        return self.pool.invoke(json.dumps(event).encode())

    def invoke_raw(self, payload: bytes) -> InvokeResult:
        return self.pool.invoke(payload)

    def stats(self) -> EmulatorStats:
        return self.pool.stats()
