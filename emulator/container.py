"""Runtimes as containers: the real image, run the way Lambda runs it, driven by our Runtime API.

The image's ENTRYPOINT/CMD already start awslambdaric with the handler, so the emulator only has to
point AWS_LAMBDA_RUNTIME_API at a port on 127.0.0.1 (`--network host`), mount the model directory
read-only where EFS would be (`/mnt/models`), and make the root filesystem read-only with a writable
`/tmp`, as on Lambda.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Mapping

from emulator.config import CONTAINER_MODEL_ROOT, EmulatorConfig, lambda_environment
from emulator.exceptions import ContainerEngineError, RuntimeStartError
from emulator.runtime import Launcher, RuntimeProcess, reap

# Variables of the emulator's environment that reach the container too (by name only, so that
# values such as credentials never appear on a command line). Everything else stays outside, as a
# container does not inherit its host's environment.
PASSTHROUGH_PREFIXES = ("MODEL_", "POWERTOOLS_")
PASSTHROUGH_NAMES = ("MAX_BODY_BYTES", "MAX_IMAGE_PIXELS", "ALLOWED_S3_PREFIXES", "AWS_LAMBDA_LOG_LEVEL",
                     "AWS_LAMBDA_LOG_FORMAT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                     "AWS_ENDPOINT_URL")
_ENGINE_TIMEOUT_S = 20.0


def detect_engine(preference: str = "auto") -> str:
    """`docker` when a daemon answers `docker info`, else `podman`; or the one asked for."""
    if preference in ("docker", "podman"):
        if shutil.which(preference) is None:
            raise ContainerEngineError(f"--engine {preference}: {preference} is not installed")
        return preference
    if shutil.which("docker") is not None:
        try:
            answered = subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      timeout=10, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            answered = False
        if answered:
            return "docker"
    if shutil.which("podman") is not None:
        return "podman"
    raise ContainerEngineError("no container engine: no docker daemon answers `docker info` "
                               "and podman is not installed")


def passthrough_names(config: EmulatorConfig, host_env: Mapping[str, str]) -> list[str]:
    """Names of host variables forwarded into the container (those Lambda's set are not)."""
    own = lambda_environment(config, "", in_container=True)
    dropped = {"MODEL_ROOT"}  # the host path means nothing inside the container
    if config.model_version:
        dropped.add("MODEL_ALIAS")
    if config.model_alias:
        dropped.add("MODEL_VERSION")
    return sorted(name for name in host_env
                  if (name.startswith(PASSTHROUGH_PREFIXES) or name in PASSTHROUGH_NAMES)
                  and name not in own and name not in dropped)


def container_command(config: EmulatorConfig, engine: str, api_address: str, name: str,
                      host_env: Mapping[str, str]) -> list[str]:
    """The full `<engine> run ...` command line for one runtime container."""
    if not config.image:
        raise ValueError("container_command needs config.image")
    # The container's own /tmp, a fresh tmpfs: the only writable path, as on Lambda.
    command = [engine, "run", "--rm", "--name", name, "--pull", "never", "--network", "host",
               "--read-only", "--tmpfs", "/tmp"]  # nosec B108
    if config.model_root is not None:
        command += ["-v", f"{os.path.abspath(config.model_root)}:{CONTAINER_MODEL_ROOT}:ro"]
    for key, value in lambda_environment(config, api_address, in_container=True).items():
        command += ["-e", f"{key}={value}"]
    for key in passthrough_names(config, host_env):
        command += ["-e", key]
    command += list(config.container_args)
    command += [config.image, config.handler]
    return command


class ContainerProcess(RuntimeProcess):
    """A `<engine> run` client process and the container it attached to."""

    def __init__(self, popen: subprocess.Popen[bytes], engine: str, name: str) -> None:
        super().__init__(popen)
        self.engine = engine
        self.name = name
        self._container_pid: int | None = None

    def memory_root(self) -> int | None:
        """The container's main process as the host sees it (asked once, then remembered)."""
        if self._container_pid is None and self.popen.poll() is None:
            try:
                out = subprocess.run([self.engine, "inspect", "--format", "{{.State.Pid}}", self.name],
                                     capture_output=True, text=True, timeout=_ENGINE_TIMEOUT_S, check=False)
                pid = int(out.stdout.strip() or 0)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pid = 0
            self._container_pid = pid or None
        return self._container_pid

    def kill(self) -> None:
        # The runtime is PID 1 in its container and ignores SIGTERM, so stopping means killing.
        if self.popen.poll() is None:
            try:
                subprocess.run([self.engine, "kill", self.name], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=_ENGINE_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if not reap(self.popen, 10.0):
            self.popen.kill()
            reap(self.popen, 5.0)

    def stop(self, grace_s: float) -> None:
        self.kill()


class ContainerLauncher(Launcher):
    """Starts runtime containers from `config.image` with docker or podman."""

    def __init__(self, config: EmulatorConfig, engine: str | None = None) -> None:
        self.config = config
        self.engine = engine or detect_engine(config.engine)
        self._serial = itertools.count()
        self._check_image()

    def _check_image(self) -> None:
        try:
            found = subprocess.run([self.engine, "image", "inspect", str(self.config.image)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=_ENGINE_TIMEOUT_S, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ContainerEngineError(f"{self.engine} did not answer: {exc}") from exc
        if not found:
            raise ContainerEngineError(f"image {self.config.image} is not in {self.engine}'s local store "
                                       "(build it first: make image)")

    def spawn(self, api_address: str, name: str) -> RuntimeProcess:
        container = f"breedserve-emu-{os.getpid()}-{name}-{next(self._serial)}"
        command = container_command(self.config, self.engine, api_address, container, os.environ)
        try:
            popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise RuntimeStartError(f"{name}: cannot run {self.engine}: {exc}") from exc
        return ContainerProcess(popen, self.engine, container)

    def describe(self) -> str:
        return f"{self.engine} run {self.config.image}"
