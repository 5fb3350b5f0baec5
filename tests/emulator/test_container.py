"""The --image path: the container command line, engine choice, and a run through a fake engine.

This machine has no container engine in the emulator tests; the real image runs in the image test
(another suite). Here `fake_engine.py` stands in for podman and checks the flags Lambda's sandbox
needs, so the whole path (start, environment, memory, timeout kill, shutdown) is exercised.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from emulator import Emulator, EmulatorConfig
from emulator.container import container_command, detect_engine
from emulator.exceptions import ContainerEngineError
from tests.emulator.support import HANDLERS, ListLog, process_alive

FAKE_ENGINE = Path(__file__).resolve().parent / "fake_engine.py"


def write_script(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only a fake `podman`; returns the fake engine's state directory."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    write_script(bin_dir, "podman", f'exec "{sys.executable}" "{FAKE_ENGINE}" "$@"')
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_ENGINE_STATE", str(state))
    monkeypatch.setenv("FAKE_ENGINE_TASK_ROOT", str(HANDLERS))
    return state


def image_config(model_root: Path, **overrides: object) -> EmulatorConfig:
    settings: dict[str, object] = {
        "port": 0, "image": "breedserve:fake", "engine": "podman", "handler": "toy.lambda_handler",
        "model_root": model_root, "model_name": "dogs", "model_alias": "live", "timeout_s": 10.0,
        "memory_mb": 2048, "container_args": ("--memory=2g",),
    }
    settings.update(overrides)
    return EmulatorConfig(**settings)  # type: ignore[arg-type]


def test_container_command_line(tmp_path: Path) -> None:
    # GIVEN an image config and a host environment with a variant choice, a secret and noise
    config = image_config(tmp_path)
    host_env = {"MODEL_VARIANT": "int8", "MODEL_ROOT": "/host/path", "MODEL_VERSION": "3",
                "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HOME": "/root", "PATH": "/usr/bin"}

    # WHEN the command line is built
    command = container_command(config, "podman", "127.0.0.1:4321", "emu-0", host_env)

    # THEN it runs the image like Lambda: host network, read-only root, writable /tmp, EFS stand-in
    assert command[:12] == ["podman", "run", "--rm", "--name", "emu-0", "--pull", "never", "--network", "host",
                            "--read-only", "--tmpfs", "/tmp"]
    assert command[12:14] == ["-v", f"{tmp_path}:/mnt/models:ro"]
    values = dict(command[i + 1].partition("=")[::2] for i, arg in enumerate(command)
                  if arg == "-e" and "=" in command[i + 1])
    names = [command[i + 1] for i, arg in enumerate(command) if arg == "-e" and "=" not in command[i + 1]]
    assert values["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:4321"
    assert values["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "2048"
    assert values["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "10"
    assert values["MODEL_ROOT"] == "/mnt/models"
    assert values["MODEL_NAME"] == "dogs" and values["MODEL_ALIAS"] == "live"
    assert "LAMBDA_TASK_ROOT" not in values  # the image's WORKDIR decides
    # ... host variables pass by name only (no secret on the command line); the pin loses to the alias
    assert names == ["AWS_SECRET_ACCESS_KEY", "MODEL_VARIANT"]
    assert "s3cr3t" not in " ".join(command)
    assert command[-3:] == ["--memory=2g", "breedserve:fake", "toy.lambda_handler"]


def test_engine_is_docker_when_its_daemon_answers_else_podman(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a docker whose daemon does not answer, and a podman
    monkeypatch.setenv("PATH", str(tmp_path))
    write_script(tmp_path, "docker", "exit 1")
    write_script(tmp_path, "podman", "exit 0")
    # WHEN / THEN podman is chosen
    assert detect_engine() == "podman"

    # GIVEN a docker whose daemon answers
    write_script(tmp_path, "docker", "exit 0")
    # WHEN / THEN docker is chosen, and an explicit choice is honoured
    assert detect_engine() == "docker"
    assert detect_engine("podman") == "podman"

    # GIVEN neither engine
    for name in ("docker", "podman"):
        (tmp_path / name).unlink()
    # WHEN / THEN a clear error
    with pytest.raises(ContainerEngineError, match="no docker daemon answers"):
        detect_engine()


def test_missing_image_is_a_clear_error(tmp_path: Path, fake_podman: Path) -> None:
    # GIVEN an image the engine does not have
    config = image_config(tmp_path, image="breedserve:absent")

    # WHEN / THEN starting fails before any runtime, naming the image
    with pytest.raises(ContainerEngineError, match="breedserve:absent is not in podman's local store"):
        Emulator(config, log=ListLog()).start()


def test_image_runtime_end_to_end_through_the_engine(tmp_path: Path, fake_podman: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the emulator in --image mode, with a variant choice and an unrelated variable in its env
    monkeypatch.setenv("MODEL_VARIANT", "int8")
    monkeypatch.setenv("EMULATOR_TEST_MARKER", "host only")
    log = ListLog()
    with Emulator(image_config(tmp_path, timeout_s=1.0), log=log) as emulator:
        emulator.wait_ready(timeout=60)

        # WHEN it serves a request, then one that hangs past the timeout, then another
        seen = emulator.invoke({"action": "echo"})
        hung = emulator.invoke({"action": "sleep", "seconds": 30})
        after = emulator.invoke({"action": "echo"})
        stats = emulator.stats()

    # THEN the runtime saw a container's environment: Lambda's variables and the pass-through only
    env = seen.json()["env"]
    assert env["MODEL_ROOT"] == "/mnt/models" and env["MODEL_ALIAS"] == "live"
    assert env["MODEL_VARIANT"] == "int8"
    assert "EMULATOR_TEST_MARKER" not in env and "LAMBDA_TASK_ROOT" not in env
    # ... its memory was read from the container's process, the model root was mounted read-only
    assert seen.record.max_memory_used_mb > 5
    mounts = [json.loads(p.read_text()) for p in fake_podman.glob("*.mounts")]
    assert mounts and all(m == [f"{tmp_path}:/mnt/models:ro"] for m in mounts)
    # ... the hung container was killed through the engine and a new one served the next request
    calls = [json.loads(line) for line in (fake_podman / "calls.jsonl").read_text().splitlines()]
    killed = [call[-1] for call in calls if call[0] == "kill"]
    assert hung.error_type == "Sandbox.Timedout"
    assert after.ok and after.json()["pid"] != seen.json()["pid"]
    assert stats.starts == 2 and len(killed) >= 2  # the hung one, then the last one at shutdown
    assert len({call[call.index("--name") + 1] for call in calls if call[0] == "run"}) == 2
    assert not any(process_alive(int(p.read_text())) for p in fake_podman.glob("*.pid"))

