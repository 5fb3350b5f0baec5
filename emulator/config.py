"""What an emulated function is: its runtime, limits and the environment Lambda would give it.

The environment is built here, in one pure function, so that the local-process and the container
runtimes cannot drift apart and a unit test can read exactly what a handler will see.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from emulator.exceptions import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HANDLER = "handler.app.lambda_handler"
CONTAINER_MODEL_ROOT = "/mnt/models"
ACCOUNT_ID = "012345678912"  # the fake account the official emulator uses too
FUNCTION_VERSION = "$LATEST"
MAX_TIMEOUT_S = 900.0
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 10240

# Variables that would switch awslambdaric into another mode or point it at a foreign log sink.
_RUNTIME_ONLY_VARIABLES = ("AWS_LAMBDA_MAX_CONCURRENCY", "_LAMBDA_TELEMETRY_LOG_FD",
                           "_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET", "AWS_LAMBDA_INITIALIZATION_TYPE")


def default_region() -> str:
    """The region the function pretends to run in: the caller's AWS region, else us-east-1."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything `Emulator` needs; the CLI builds one from its flags.

    `model_*` may be left empty for functions that do not load a model (the toy handlers in the
    tests). `timeout_s` may be fractional here (tests), although Lambda only takes whole seconds.
    """

    model_root: Path | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_alias: str | None = None
    port: int = 9000
    host: str = "127.0.0.1"
    concurrency: int = 1
    timeout_s: float = 30.0
    memory_mb: int = 2048
    handler: str = DEFAULT_HANDLER
    task_root: Path = REPO_ROOT
    image: str | None = None
    engine: str = "auto"
    container_args: tuple[str, ...] = ()
    function_name: str = "breedserve"
    region: str = field(default_factory=default_region)
    init_timeout_s: float = 10.0
    environment: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable

    def validate(self) -> None:
        """Raise `ConfigError` with the first thing that is wrong, before anything starts."""
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"--host {self.host}: the emulator only listens on loopback (127.0.0.1)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise ConfigError(f"--timeout must be in (0, {MAX_TIMEOUT_S:.0f}] seconds, as on Lambda")
        if not MIN_MEMORY_MB <= self.memory_mb <= MAX_MEMORY_MB:
            raise ConfigError(f"--memory-mb must be in [{MIN_MEMORY_MB}, {MAX_MEMORY_MB}], as on Lambda")
        if self.init_timeout_s <= 0:
            raise ConfigError("the init timeout must be positive")
        if self.model_version and self.model_alias:
            raise ConfigError("give either --model-version or --model-alias, not both")
        if self.model_name and not (self.model_version or self.model_alias):
            raise ConfigError("--model-name needs --model-version or --model-alias")
        if self.model_root is not None and not Path(self.model_root).is_dir():
            raise ConfigError(f"--model-root {self.model_root} is not a directory")
        if self.image is None and not Path(self.task_root).is_dir():
            raise ConfigError(f"--task-root {self.task_root} is not a directory")
        if "." not in self.handler:
            raise ConfigError(f"--handler {self.handler!r} must look like module.function")
        if self.engine not in ("auto", "docker", "podman"):
            raise ConfigError(f"--engine {self.engine!r}: choose auto, docker or podman")

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{self.function_name}"

    @property
    def url_id(self) -> str:
        """A stable stand-in for the 32-character id in a real Function URL's host name."""
        return (self.function_name.lower().replace("_", "").replace("-", "") + "0" * 32)[:32]


def log_stream_name(now: float | None = None) -> str:
    """A log stream name shaped like Lambda's: `2024/01/31/[$LATEST]<32 hex>`."""
    day = time.strftime("%Y/%m/%d", time.gmtime(now if now is not None else time.time()))
    return f"{day}/[{FUNCTION_VERSION}]{secrets.token_hex(16)}"


def lambda_environment(config: EmulatorConfig, api_address: str, *, in_container: bool) -> dict[str, str]:
    """The variables Lambda defines for a function, plus the model selection (`MODEL_*`).

    Only what Lambda (and our deployment) sets; the local runtime additionally inherits the
    emulator's own environment (see `local_process_environment`).
    """
    env = {
        "AWS_LAMBDA_RUNTIME_API": api_address,
        "AWS_LAMBDA_FUNCTION_NAME": config.function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": FUNCTION_VERSION,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(max(1, round(config.timeout_s))),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{config.function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(),
        "AWS_REGION": config.region,
        "AWS_DEFAULT_REGION": config.region,
        "_HANDLER": config.handler,
        "TZ": ":UTC",
    }
    if not in_container:
        env["LAMBDA_TASK_ROOT"] = str(Path(config.task_root).resolve())
    if config.model_root is not None:
        env["MODEL_ROOT"] = CONTAINER_MODEL_ROOT if in_container else str(Path(config.model_root).resolve())
    if config.model_name:
        env["MODEL_NAME"] = config.model_name
    if config.model_version:
        env["MODEL_VERSION"] = config.model_version
    if config.model_alias:
        env["MODEL_ALIAS"] = config.model_alias
    env.update(config.environment)
    return env


def local_process_environment(config: EmulatorConfig, api_address: str,
                              inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """The full environment of a local runtime: the emulator's own, then Lambda's on top.

    Inheriting is what lets `MODEL_VARIANT=int8 python -m emulator serve ...` reach the handler.
    A pin and an alias inherited from the shell are dropped when the flags chose the other one.
    """
    env = dict(os.environ if inherited is None else inherited)
    for name in _RUNTIME_ONLY_VARIABLES:
        env.pop(name, None)
    if config.model_version:
        env.pop("MODEL_ALIAS", None)
    if config.model_alias:
        env.pop("MODEL_VERSION", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(lambda_environment(config, api_address, in_container=False))
    return env
