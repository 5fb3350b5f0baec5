"""`python -m emulator serve ...`: a local Lambda function with a Function URL on 127.0.0.1.

(`python -m emulator demo` runs the end-to-end demo; see `emulator.demo`.)

Runs until SIGINT/SIGTERM, then stops its runtimes and exits 0. Fails with one line and exit
status 1 when it cannot start (bad option, port in use, image missing).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from emulator.config import DEFAULT_HANDLER, REPO_ROOT, EmulatorConfig, default_region
from emulator.demo import add_arguments as add_demo_arguments
from emulator.demo import run_demo
from emulator.exceptions import EmulatorClosedError, EmulatorError
from emulator.report import StreamLog
from emulator.service import Emulator


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m emulator",
                                     description="A local AWS Lambda runtime emulator with a Function URL.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve the function on 127.0.0.1 until interrupted",
        description="Start N runtimes (python -m awslambdaric HANDLER, or containers of --image), each "
                    "driven through its own Lambda Runtime API server, and serve the RIE invoke path "
                    "(POST /2015-03-31/functions/function/invocations) and a Function URL on --port. "
                    "Runtimes inherit this process's environment (e.g. MODEL_VARIANT).")
    serve.add_argument("--port", type=int, default=9000, help="port of the Function URL (default 9000; 0 = any)")
    serve.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    serve.add_argument("--model-root", type=Path, required=True,
                       help="directory standing in for the EFS mount (MODEL_ROOT; /mnt/models in a container)")
    serve.add_argument("--model-name", required=True, help="MODEL_NAME")
    pin = serve.add_mutually_exclusive_group(required=True)
    pin.add_argument("--model-version", help="MODEL_VERSION: serve this version")
    pin.add_argument("--model-alias", help="MODEL_ALIAS: serve the version this alias points at")
    serve.add_argument("--concurrency", type=int, default=1, help="runtimes, one request each at a time (default 1)")
    serve.add_argument("--timeout", type=float, default=30.0, help="function timeout in seconds (default 30)")
    serve.add_argument("--memory-mb", type=int, default=2048,
                       help="AWS_LAMBDA_FUNCTION_MEMORY_SIZE, as reported in REPORT lines (default 2048)")
    serve.add_argument("--handler", default=DEFAULT_HANDLER, help=f"module.function (default {DEFAULT_HANDLER})")
    serve.add_argument("--task-root", type=Path, default=REPO_ROOT,
                       help="directory the local runtime runs in and imports the handler from (default: repo root)")
    serve.add_argument("--image", help="run each runtime as a container of this image instead of a local process")
    serve.add_argument("--engine", choices=("auto", "docker", "podman"), default="auto",
                       help="container engine for --image (auto: docker if its daemon answers, else podman)")
    serve.add_argument("--container-arg", action="append", default=[], metavar="ARG",
                       help="extra argument for `<engine> run` (repeatable; use --container-arg=--memory=2g)")
    serve.add_argument("--env", action="append", default=[], type=_env_pair, metavar="KEY=VALUE",
                       help="extra environment variable for the function (repeatable)")
    serve.add_argument("--function-name", default="breedserve", help="AWS_LAMBDA_FUNCTION_NAME (default breedserve)")
    serve.add_argument("--region", default=default_region(), help="AWS_REGION of the function")
    serve.add_argument("--init-timeout", type=float, default=10.0,
                       help="init phase limit in seconds before the function timeout takes over (default 10)")
    demo = commands.add_parser(
        "demo", help="publish a demo model, serve it, classify photos (what `make demo` runs)",
        description="Publish a demo model to a local store, sync it into a model root, start the emulated "
                    "function and send photos through its Function URL; prints the top-5 breeds and timings.")
    add_demo_arguments(demo)
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        model_root=args.model_root, model_name=args.model_name, model_version=args.model_version,
        model_alias=args.model_alias, port=args.port, host=args.host, concurrency=args.concurrency,
        timeout_s=args.timeout, memory_mb=args.memory_mb, handler=args.handler, task_root=args.task_root,
        image=args.image, engine=args.engine, container_args=tuple(args.container_arg),
        function_name=args.function_name, region=args.region, init_timeout_s=args.init_timeout,
        environment=dict(args.env),
    )


def serve(config: EmulatorConfig) -> int:
    log = StreamLog()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator = Emulator(config, log=log).start()
    try:
        log(f"emulator: Function URL {emulator.url}/  Invoke API {emulator.invoke_url}")
        threading.Thread(target=_announce_ready, args=(emulator,), daemon=True).start()
        while not stop.wait(1.0):
            pass
        log("emulator: stopping")
    finally:
        emulator.close()
    log("emulator: stopped")
    return 0


def _announce_ready(emulator: Emulator) -> None:
    try:
        emulator.wait_ready(timeout=None)
    except EmulatorClosedError:
        return
    except EmulatorError as exc:
        emulator.log(f"emulator: {exc} (the next request retries init)")
        return
    emulator.log(f"emulator: ready, {emulator.config.concurrency} runtime(s) at {emulator.url}/")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args)
        return serve(config_from_args(args))
    except EmulatorError as exc:
        print(f"emulator: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
