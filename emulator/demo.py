"""`python -m emulator demo`: the whole request path on one machine, with no AWS account.

It does what production does, with local stand-ins: publish a model version to a store (a
`file://` directory standing in for S3), sync it into a model root (standing in for the EFS mount),
start the emulated function (real `awslambdaric`, real handler), and send photos through its
Function URL. It prints the top-5 breeds per photo and where the time went.

`--prepare-only` stops after the sync: `make serve` uses it, then serves the same root.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from emulator.config import REPO_ROOT, EmulatorConfig
from emulator.exceptions import EmulatorError
from emulator.service import Emulator

DEFAULT_WORKDIR = REPO_ROOT / ".breedserve"
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".gif": "image/gif", ".bmp": "image/bmp"}


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo keeps its store and model root (both reused across runs)."""

    workdir: Path

    @property
    def store_uri(self) -> str:
        return (self.workdir / "store").resolve().as_uri()

    @property
    def model_root(self) -> Path:
        return self.workdir / "models"


def prepare_model(paths: DemoPaths, name: str, version: str, alias: str) -> None:
    """Publish the demo model once, then sync it (a no-op when the version is already there)."""
    from model_store.demo import publish_demo
    from model_store.store import list_versions, open_store
    from model_store.sync import sync

    if version not in list_versions(open_store(paths.store_uri), name):
        _say(f"publishing demo model {name}/{version} to {paths.store_uri}")
        publish_demo(paths.store_uri, name, version, alias=alias)
    paths.model_root.mkdir(parents=True, exist_ok=True)
    _say(f"syncing {name}@{alias} into {paths.model_root} (the EFS stand-in)")
    sync(paths.store_uri, name, paths.model_root, alias=alias, progress=False)


def sample_image() -> tuple[bytes, str]:
    """A photo-sized JPEG drawn here, so the demo needs no data beside the repo."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.new("RGB", (800, 600), (110, 150, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse((250, 150, 560, 470), fill=(196, 160, 110))  # a dog-coloured body
    draw.ellipse((470, 110, 640, 270), fill=(176, 140, 96))  # and a head
    draw.ellipse((560, 160, 585, 185), fill=(30, 25, 20))
    image = image.filter(ImageFilter.GaussianBlur(2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "generated sample (800x600 JPEG)"


def load_images(files: list[Path]) -> list[tuple[str, bytes, str]]:
    """(name, bytes, content type) for each photo; the generated sample when none are given."""
    if not files:
        data, name = sample_image()
        return [(name, data, "image/jpeg")]
    images = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EmulatorError(f"cannot read image {path}: {exc.strerror or exc}") from exc
        images.append((str(path), data, CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")))
    return images


def post_image(url: str, data: bytes, content_type: str) -> tuple[int, dict, float]:
    """POST one photo to /predict; returns (status, JSON body, end-to-end ms)."""
    request = urllib.request.Request(url + "/predict?top_k=5", data=data, method="POST",
                                     headers={"content-type": content_type})
    started = time.perf_counter()
    try:
        # `url` is the emulator this demo started itself (http://127.0.0.1:<port>): never user input.
        with urllib.request.urlopen(request, timeout=120) as response:  # nosec B310
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    elapsed = (time.perf_counter() - started) * 1000
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"error": {"code": "not_json", "message": body[:200].decode("utf-8", "replace")}}
    return status, parsed, elapsed


def format_result(name: str, status: int, body: dict, e2e_ms: float) -> str:
    """The top-5 table for one photo, with the handler's timings and the HTTP round trip."""
    lines = [f"\n{name}"]
    if status != 200:
        error = body.get("error", {})
        lines.append(f"  HTTP {status}: {error.get('code')}: {error.get('message')}")
        return "\n".join(lines)
    lines.append(f"  {'#':>2}  {'breed':<36} {'probability':>11}")
    for rank, item in enumerate(body["predictions"], start=1):
        lines.append(f"  {rank:>2}  {item['label']:<36} {item['probability']:>11.4f}")
    timing = body.get("timing_ms", {})
    steps = ", ".join(f"{key} {value:.1f}" for key, value in timing.items() if isinstance(value, (int, float)))
    variant = body.get("model", {}).get("variant") or timing.get("variant")
    lines.append(f"  timing ms: {steps}; HTTP round trip {e2e_ms:.1f}" + (f"; variant {variant}" if variant else ""))
    if body.get("warning"):
        lines.append(f"  note: {body['warning']}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    paths = DemoPaths(args.workdir)
    started = time.perf_counter()
    prepare_model(paths, args.model_name, args.model_version, args.model_alias)
    if args.prepare_only:
        _say(f"ready: serve it with  python -m emulator serve --model-root {paths.model_root} "
             f"--model-name {args.model_name} --model-alias {args.model_alias}")
        return 0
    images = load_images(args.images)
    config = EmulatorConfig(model_root=paths.model_root, model_name=args.model_name,
                            model_alias=args.model_alias, port=0, memory_mb=args.memory_mb,
                            timeout_s=args.timeout)
    _say("starting the emulated Lambda function (awslambdaric + handler.app.lambda_handler)")
    runtime_started = time.perf_counter()
    with Emulator(config, log=_quiet_log if not args.verbose else None) as emu:
        emu.wait_ready()
        first_status, first_body, first_ms = post_image(emu.url, images[0][1], images[0][2])
        cold_ms = (time.perf_counter() - runtime_started) * 1000
        results = [(images[0][0], first_status, first_body, first_ms)]
        for name, data, content_type in images[1:]:
            results.append((name, *post_image(emu.url, data, content_type)))
        # One warm repeat of the first photo, so the table shows warm latency next to the cold one.
        warm_status, warm_body, warm_ms = post_image(emu.url, images[0][1], images[0][2])
        stats = emu.stats()
    for name, status, body, e2e_ms in results:
        print(format_result(name, status, body, e2e_ms))
    init_ms = stats.init_durations_ms[0] if stats.init_durations_ms else float("nan")
    warm_total = warm_body.get("timing_ms", {}).get("total", float("nan")) if warm_status == 200 else float("nan")
    print(f"\ncold start: runtime start -> first response {cold_ms:.0f} ms (Lambda init duration {init_ms:.0f} ms)")
    print(f"warm: HTTP round trip {warm_ms:.1f} ms, handler total {warm_total:.1f} ms")
    print(f"demo took {time.perf_counter() - started:.1f} s; runtime restarts: {stats.restarts}")
    failed = [r for r in results if r[1] != 200]
    return 1 if failed or warm_status != 200 else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", type=Path, help="photos to classify (default: a generated sample)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"where the demo store and model root live (default {DEFAULT_WORKDIR})")
    parser.add_argument("--model-name", default="dogbreeds", help="model name (default dogbreeds)")
    parser.add_argument("--model-version", default="demo-1", help="version to publish (default demo-1)")
    parser.add_argument("--model-alias", default="live", help="alias the function serves (default live)")
    parser.add_argument("--memory-mb", type=int, default=2048, help="function memory size (default 2048)")
    parser.add_argument("--timeout", type=float, default=60.0, help="function timeout in seconds (default 60)")
    parser.add_argument("--prepare-only", action="store_true", help="publish and sync the model, then stop")
    parser.add_argument("--verbose", action="store_true", help="show the runtime's logs and REPORT lines")


def _quiet_log(line: str) -> None:
    """Keep REPORT lines (they are the demo's point), drop the handler's per-request JSON logs."""
    if line.startswith(("REPORT", "INIT", "ERROR")) or "error" in line.lower() and not line.startswith("{"):
        print(line, file=sys.stderr)


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)
