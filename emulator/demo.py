"""`python -m emulator demo`: the whole request path on one machine, with no AWS account.

It does what production does, with local stand-ins: publish a model version to a store (a
`file://` directory standing in for S3), sync it into a model root (standing in for the EFS mount),
start the emulated function (real `awslambdaric`, real handler), and send photos through its
Function URL. It prints the top-5 breeds per photo and where the time went.

`--prepare-only` stops after the sync: `make serve` uses it, then serves the same root.

The store and the model root outlive a `git pull`. A demo version left there by an older
breedserve (a variant in a format this one refuses, or a variant it now makes that is missing)
would quietly serve only fp32, so `prepare_model` republishes it in place: the workdir is this
tool's scratch state, unlike any store a user names, where versions stay immutable.
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
from model_store.exceptions import ManifestError, ModelStoreError
from model_store.loader import versions_dir
from model_store.manifest import MANIFEST_FILE, VARIANT_FORMATS, outdated_variants
from model_store.store import Store, list_versions, manifest_key, open_store, read_manifest
from model_store.sync import sync

DEFAULT_WORKDIR = REPO_ROOT / ".breedserve"
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".gif": "image/gif", ".bmp": "image/bmp"}
DEMO_VARIANTS = tuple(VARIANT_FORMATS)
"""What `publish_demo` makes: fp32 always, int8 and fp32-graph unless their publish-time gate refuses them."""


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
    """Publish the demo model once (again if outdated), then sync it (a no-op when the copy is current)."""
    try:
        store = open_store(paths.store_uri)
        if version in list_versions(store, name):
            _retire_outdated(store, name, version)
        if version not in list_versions(store, name):
            from model_store.demo import publish_demo  # imports torch: only when publishing

            _say(f"publishing demo model {name}/{version} to {paths.store_uri}")
            publish_demo(paths.store_uri, name, version, alias=alias)
        paths.model_root.mkdir(parents=True, exist_ok=True)
        _forget_other_copy(store, paths.model_root, name, version)
        _say(f"syncing {name}@{alias} into {paths.model_root} (the EFS stand-in)")
        sync(paths.store_uri, name, paths.model_root, alias=alias, progress=False)
    except ModelStoreError as exc:
        raise EmulatorError(f"cannot prepare the demo model in {paths.workdir}: {exc} "
                            f"(`make clean` removes the demo's store and model root)") from exc


def _retire_outdated(store: Store, name: str, version: str) -> None:
    """Delete the demo store's `version` when the current `publish_demo` would make it differently.

    Versions are immutable and the store has no version delete, for good reason; this is the
    demo's own file store under its workdir, so the version's keys are deleted one by one with
    the store's `delete`, the manifest first: without it the version no longer exists.
    """
    try:
        reasons = "; ".join(outdated_variants(read_manifest(store, name, version)[0],
                                              expected=DEMO_VARIANTS).values())
    except ManifestError as exc:
        reasons = f"this breedserve cannot read its manifest: {exc}"
    if not reasons:
        return
    _say(f"{name}/{version} in the demo store is outdated ({reasons}): republishing it")
    store.delete(manifest_key(name, version))
    for key in store.list_keys(f"{name}/{version}/"):
        store.delete(key)


def _forget_other_copy(store: Store, root: Path, name: str, version: str) -> None:
    """Make sync fetch `version` again when the model root holds another publish of it.

    sync keeps a local version whose files match its own manifest and never compares that
    manifest with the store's: published versions are immutable. The demo store republishes
    in place, so the copies are compared here. Removing the local manifest makes the directory
    no version at all (the model root's rule), and sync replaces it as it replaces a damaged one.
    """
    local = versions_dir(root, name) / version / MANIFEST_FILE
    if not local.is_file() or local.read_bytes() == read_manifest(store, name, version)[1]:
        return
    _say(f"the copy of {name}/{version} in {root} is not the one in the demo store: "
         "removing its manifest, so that sync replaces it")
    local.unlink()


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
