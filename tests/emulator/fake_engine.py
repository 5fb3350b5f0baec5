"""A stand-in for `podman`, enough for the emulator's --image path to run end to end without one.

`run` starts the same awslambdaric a real image's ENTRYPOINT would, with ONLY the environment the
command line gives (`-e K=V`, or `-e K` copied from the caller), as a container would; it refuses
a command line that lacks the flags Lambda's sandbox needs. `image inspect`, `inspect` and `kill`
answer from a state directory ($FAKE_ENGINE_STATE). Every call is appended to calls.jsonl there.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_ENGINE_STATE"])
KNOWN_IMAGE = "breedserve:fake"


def _run(args: list[str]) -> int:
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp"}
    flags: set[str] = set()
    name = ""
    mounts: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag = args[i]
        value = args[i + 1] if flag in ("--name", "-e", "-v", "--network", "--tmpfs", "--pull") else None
        if flag == "--name":
            name = str(value)
        elif flag == "-e":
            key, sep, val = str(value).partition("=")
            env[key] = val if sep else os.environ.get(key, "")
        elif flag == "-v":
            mounts.append(str(value))
        flags.add(flag if value is None else f"{flag} {value}")
        i += 2 if value is not None else 1
    image, command = args[i], args[i + 1:]
    required = {"--rm", "--read-only", "--network host", "--tmpfs /tmp", "--pull never"}
    if image != KNOWN_IMAGE or not required <= flags or not name:
        print(f"fake engine: refusing run {args}", file=sys.stderr)
        return 125
    (STATE / f"{name}.pid").write_text(str(os.getpid()))
    (STATE / f"{name}.mounts").write_text(json.dumps(mounts))
    os.chdir(os.environ["FAKE_ENGINE_TASK_ROOT"])
    os.execve(sys.executable, [sys.executable, "-m", "awslambdaric", *command], env)
    return 0  # not reached


def main(argv: list[str]) -> int:
    with (STATE / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps(argv) + "\n")
    if argv[:2] == ["image", "inspect"]:
        return 0 if argv[2] == KNOWN_IMAGE else 1
    if argv[:1] == ["run"]:
        return _run(argv[1:])
    if argv[:1] == ["inspect"]:
        print((STATE / f"{argv[-1]}.pid").read_text())
        return 0
    if argv[:1] == ["kill"]:
        pid_file = STATE / f"{argv[-1]}.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        return 0
    print(f"fake engine: unsupported {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
