"""`python -m emulator serve` as a user runs it: start, serve, SIGTERM, exit 0; clear failures."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import REPO, free_port
from tests.emulator.support import HANDLERS, process_alive


def serve_command(port: int, model_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "emulator", "serve", "--port", str(port), "--model-root", str(model_root),
            "--model-name", "dogs", "--model-version", "1", "--handler", "toy.lambda_handler",
            "--task-root", str(HANDLERS), *extra]


def wait_until_ready(url: str, process: subprocess.Popen[str], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"emulator exited early: {process.communicate()}"
        try:
            stats = json.loads(urllib.request.urlopen(url + "/_emulator/stats", timeout=2).read())
            if stats["ready"]:
                return stats
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the emulator did not become ready")


def test_sigterm_stops_runtimes_and_exits_zero(tmp_path: Path) -> None:
    # GIVEN `python -m emulator serve` with two runtimes, up and answering
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EMULATOR_TEST_MARKER="from the shell")
    process = subprocess.Popen(serve_command(port, tmp_path, "--concurrency", "2"), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stats = wait_until_ready(url, process)
        runtime_pids = [r["pid"] for r in stats["runtimes"]]
        seen = json.loads(urllib.request.urlopen(url + "/echo", timeout=30).read())

        # WHEN it receives SIGTERM
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    # THEN it exits 0, its runtimes are gone, and it said what it did
    assert process.returncode == 0, stderr
    assert not any(process_alive(pid) for pid in runtime_pids)
    assert "emulator: ready, 2 runtime(s)" in stderr and stderr.rstrip().endswith("emulator: stopped")
    # ... and while it ran, the handler saw the shell's environment
    assert seen["env"]["EMULATOR_TEST_MARKER"] == "from the shell"
    assert "REPORT RequestId: " in stderr


def test_startup_failure_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    # GIVEN a port that is already taken
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # WHEN the emulator is asked to listen on it
        result = subprocess.run(serve_command(port, tmp_path), cwd=REPO, capture_output=True, text=True,
                                timeout=60, check=False)

    # THEN exit status 1 and one line saying why
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"emulator: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def test_help_lists_the_options() -> None:
    # GIVEN / WHEN serve --help
    result = subprocess.run([sys.executable, "-m", "emulator", "serve", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)

    # THEN it documents the flags of the contract
    assert result.returncode == 0
    for flag in ("--port", "--model-root", "--model-name", "--model-version", "--model-alias", "--concurrency",
                 "--timeout", "--memory-mb", "--handler", "--image", "--host"):
        assert flag in result.stdout
