"""The real container image: built from the repo's Dockerfile and run the way Lambda runs it.

No registry is reachable from CI, so the image is built FROM a Debian base made locally with
debootstrap (`infra.image.ensure_local_base_image`, cached per machine) and the host's pip
settings; only build args differ from a production build. The container then serves a seeded
ResNet-18 under our emulator (`--network host`, read-only root, model directory mounted read-only
at /mnt/models), as its int8 ONNX graph (ONNX Runtime, no torch) and as fp32 safetensors (torch),
and must answer exactly as the same variant run in this process. (hadolint runs in
tests/unit/test_security.py; `python -m infra push` to a registry on 127.0.0.1 in
tests/functional/test_infra_push_registry.py.)

Without podman (see infra/image_setup.sh) these tests are skipped on a laptop and fail in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from emulator import Emulator, EmulatorConfig
from handler.classifier import Classifier
from infra.exceptions import PushError
from infra.image import (
    BuiltImage,
    build_command,
    build_local_image,
    ensure_local_base_image,
    host_pip_settings,
)
from model_store.demo import demo_pictures
from model_store.manifest import Architecture, dog_breed_classes
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync
from tests.emulator.support import ListLog, fake_aws_environment, http_request

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

TAG = "localhost/breedserve:image-test"
NAME, VERSION, ALIAS = "dogs", "r18-image", "live"
ALL_CLASSES = len(dog_breed_classes())
VARIANTS = ("int8", "fp32")  # ONNX Runtime (what serves by default), and torch


def _unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine; fail in CI, which must prove the image."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must build the image, but {reason} (run infra/image_setup.sh)")
    pytest.skip(reason)


def podman(*args: str, timeout: float = 300) -> str:
    completed = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                               check=False)
    assert completed.returncode == 0, f"podman {' '.join(args)}: {completed.stderr.strip()[-2000:]}"
    return completed.stdout


def run_in_image(*command: str, entrypoint: str = "python", volumes: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> str:
    """One command in a throwaway container: no network, read-only root, writable /tmp only."""
    mounts = [arg for volume in volumes for arg in ("-v", volume)]
    variables = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
    return podman("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", *mounts, *variables,
                  "--entrypoint", entrypoint, TAG, *command)


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    """The repo's Dockerfile built on the local base image (cached layers make reruns quick)."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not installed")
    if os.geteuid() != 0:
        _unavailable("building the local base image needs root (debootstrap)")
    started = time.monotonic()
    ensure_local_base_image(progress=True)
    base_seconds = time.monotonic() - started
    built = build_local_image(TAG, progress=True)
    print(f"image-test: base image ready in {base_seconds:.0f} s, build {built.seconds:.0f} s", file=sys.stderr)
    return built


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded ResNet-18 published and synced as production does (S3 -> EFS, here file -> dir),
    with its int8 ONNX graph calibrated on generated pictures (the demo's)."""
    torch.manual_seed(4321)
    arch = Architecture(depth=18)
    state_dict = build_model(arch, ALL_CLASSES).state_dict()
    store = tmp_path_factory.mktemp("store")
    root = tmp_path_factory.mktemp("models")
    manifest = publish_state_dict(state_dict, f"file://{store}", NAME, VERSION, arch=arch,
                                  class_names=dog_breed_classes(), preprocess="resize224", trained=False,
                                  source="tests", alias=ALIAS, progress=False, calibration=demo_pictures(32, 0))
    assert set(VARIANTS) <= set(manifest.weights), manifest.metrics.get("refused_variants")
    sync(f"file://{store}", NAME, root, alias=ALIAS, progress=False)
    # EFS files are readable by the function's (non-root) user; pytest's temp dirs are 0700.
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def test_build_commands_keep_lambda_rules_for_both_engines() -> None:
    # GIVEN / WHEN arm64 build commands for docker and podman
    docker = build_command("docker", "t", platform="linux/arm64", build_args={"BASE_IMAGE": "b"})
    podman_cmd = build_command("podman", "t", platform="linux/arm64", build_args={}, volumes=[("/w", "/w")])

    # THEN docker makes a single-platform image (no attestation index), podman builds on the host network
    assert docker[:5] == ["docker", "buildx", "build", "--load", "--provenance=false"]
    assert ["--platform", "linux/arm64"] == docker[5:7] and "BASE_IMAGE=b" in docker
    assert podman_cmd[:4] == ["podman", "build", "--network", "host"] and "/w:/w:ro" in podman_cmd
    # AND docker, which cannot bind-mount into a build, refuses host mounts
    with pytest.raises(PushError, match="podman"):
        build_command("docker", "t", platform=None, build_args={}, volumes=[("/w", "/w")])


def test_host_pip_settings_become_a_mounted_pip_conf_and_a_local_torch_index(tmp_path: Path) -> None:
    # GIVEN a host whose pip finds wheels in a directory holding a CPU torch wheel, and a file:// index
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.14.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl",
                 "torch-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl"):
        (wheels / name).touch()
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    cert = tmp_path / "ca.pem"
    cert.write_text("CERT")
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {"find-links": str(wheels), "extra-index-url": f"file://{tmp_path}/pypi/simple", "cert": str(cert)}

    # WHEN they are translated for a build on a Python 3.11, amd64 base
    host = host_pip_settings(workdir, python="3.11", arch="amd64", pip_config=config)

    # THEN pip.conf names the same places and the mounted CA copy; torch is the newest cp311 CPU wheel
    conf = (workdir / "pip.conf").read_text()
    assert f"find-links = {wheels}" in conf and "cert = /run/breedserve-pip/ca.crt" in conf
    assert (workdir / "ca.crt").read_text() == "CERT"
    assert host.build_args["PIP_CONFIG_FILE"] == "/run/breedserve-pip/pip.conf"
    assert host.build_args["TORCH_VERSION"] == "2.13.0+cpu"
    assert host.build_args["TORCH_INDEX_URL"] == "file:///run/breedserve-pip/torch-index"
    assert "torch-2.13.0%2Bcpu-cp311" in (workdir / "torch-index" / "torch" / "index.html").read_text()
    # AND every host directory pip reads is mounted where pip.conf expects it
    assert dict(host.volumes) == {str(wheels): str(wheels), str(tmp_path / "pypi"): str(tmp_path / "pypi"),
                                  str(workdir): "/run/breedserve-pip"}


def test_the_container_runs_as_a_non_root_user(image: BuiltImage) -> None:
    # GIVEN / WHEN `id -u` runs with the image's own user
    uid = run_in_image("-u", entrypoint="id").strip()

    # THEN it is not root
    assert uid.isdigit() and int(uid) != 0


def test_the_image_holds_only_what_serves(image: BuiltImage) -> None:
    # GIVEN the built image
    script = """
import importlib.util, json, os, sys, onnxruntime, torch
site = [p for p in sys.path if p.endswith("site-packages")][0]
print(json.dumps({
    "task": sorted(os.listdir("/var/task")),
    "torchvision": importlib.util.find_spec("torchvision") is not None,
    "onnx": importlib.util.find_spec("onnx") is not None,
    "onnxruntime": [onnxruntime.__version__, onnxruntime.get_available_providers()],
    "onnxruntime_publish_only": sorted(n for n in ("quantization", "transformers", "tools")
                                       if os.path.exists(os.path.join(site, "onnxruntime", n))),
    "cuda": torch.version.cuda,
    "nvidia": sorted(n for n in os.listdir(site) + os.listdir("/opt/torch") if "nvidia" in n or "triton" in n),
    "pip": importlib.util.find_spec("pip") is not None,
    "weights": [os.path.join(d, f) for d, _, fs in os.walk("/var/task") for f in fs
                if f.endswith((".safetensors", ".pth", ".pt", ".tar.gz"))],
    "workdir": os.getcwd(),
}))
"""
    # WHEN its contents are listed from inside
    found = json.loads(run_in_image("-c", script))

    # THEN only our two serving packages, ONNX Runtime on the CPU and CPU-only torch; no onnx or
    # ONNX Runtime's publishing tools, torchvision, pip, weights or tests
    assert found["task"] == ["handler", "model_store"]
    version, providers = found["onnxruntime"]
    # (the Azure provider ships in every ONNX Runtime wheel: it calls remote endpoints only when asked to)
    assert version == "1.31.1" and "CPUExecutionProvider" in providers
    assert set(providers) <= {"CPUExecutionProvider", "AzureExecutionProvider"}, providers  # no GPU provider
    assert found["onnx"] is False and found["onnxruntime_publish_only"] == []
    assert found["torchvision"] is False
    assert found["cuda"] is None and found["nvidia"] == []
    assert found["pip"] is False
    assert found["weights"] == []
    assert found["workdir"] == "/var/task"


def test_the_entrypoint_is_the_runtime_interface_client(image: BuiltImage) -> None:
    # GIVEN / WHEN the image's configuration is read
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", TAG))

    # THEN awslambdaric runs the Lambda handler, from /var/task
    assert config["Entrypoint"] == ["python", "-m", "awslambdaric"]
    assert config["Cmd"] == ["handler.app.lambda_handler"]
    assert config["WorkingDir"] == "/var/task"


def test_every_module_a_prediction_imports_was_compiled_at_build(image: BuiltImage, model_root: Path) -> None:
    # GIVEN a prediction made inside the image with each engine, the way the handler makes it
    script = f"""
import io, json, os, sys
import awslambdaric.bootstrap, handler.app
from PIL import Image
from handler.classifier import Classifier
buffer = io.BytesIO()
Image.new("RGB", (320, 240), (120, 90, 60)).save(buffer, "JPEG")
for variant in {VARIANTS!r}:
    Classifier.from_root("/mnt/models", "{NAME}", alias="{ALIAS}", variant=variant).classify(buffer.getvalue())
sources = [m.__spec__ for m in list(sys.modules.values())
           if getattr(m, "__spec__", None) and m.__spec__.has_location and m.__spec__.origin.endswith(".py")]
print(json.dumps({{"modules": len(sources),
                  "uncompiled": sorted(s.name for s in sources if not s.cached or not os.path.exists(s.cached))}}))
"""
    # WHEN the modules it loaded are checked for their bytecode
    found = json.loads(run_in_image("-c", script, volumes=(f"{model_root}:/mnt/models:ro",)).splitlines()[-1])

    # THEN every one of them had its .pyc in the image (nothing is compiled at cold start)
    assert found["modules"] > 100
    assert found["uncompiled"] == []


def test_an_int8_runtime_never_imports_torch(image: BuiltImage, model_root: Path) -> None:
    # GIVEN the Lambda entry's init and one direct invocation, inside the image, serving int8
    script = """
import base64, io, json, sys, time
started = time.perf_counter()
import handler.app
init_s = time.perf_counter() - started
from PIL import Image
buffer = io.BytesIO()
Image.new("RGB", (320, 240), (120, 90, 60)).save(buffer, "JPEG")
answer = handler.app.lambda_handler({"image": base64.b64encode(buffer.getvalue()).decode(), "top_k": 3}, None)
print(json.dumps({"model": answer.get("model"), "predictions": len(answer.get("predictions", [])),
                  "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                  "onnxruntime": "onnxruntime" in sys.modules, "init_s": round(init_s, 3)}))
"""
    environment = {"MODEL_ROOT": "/mnt/models", "MODEL_NAME": NAME, "MODEL_ALIAS": ALIAS, "MODEL_VARIANT": "int8",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    # WHEN it runs
    found = json.loads(run_in_image("-c", script, volumes=(f"{model_root}:/mnt/models:ro",),
                                    env=environment).splitlines()[-1])
    # THEN it answered with int8 through ONNX Runtime, and no torch module was ever imported
    assert found["model"]["variant"] == "int8" and found["predictions"] == 3
    assert found["onnxruntime"] is True and found["torch"] == []
    print(f"image-test: int8 init (import handler.app, load) in the container {found['init_s']:.2f} s",
          file=sys.stderr)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_image_serves_the_same_predictions_as_the_model_in_process(
        image: BuiltImage, model_root: Path, shared_images: list[Path], variant: str,
        record_property: Callable[[str, object], None]) -> None:
    # GIVEN the image under the emulator (--network host, read-only root, models read-only at
    # /mnt/models), told to serve `variant`, and the same variant loaded in this process
    reference = Classifier.from_root(model_root, NAME, alias=ALIAS, variant=variant)
    config = EmulatorConfig(port=0, image=TAG, engine="podman", model_root=model_root, model_name=NAME,
                            model_alias=ALIAS, timeout_s=60.0, memory_mb=2048, init_timeout_s=60.0)
    log = ListLog()
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_aws_environment(monkeypatch)
        monkeypatch.setenv("MODEL_VARIANT", variant)  # passed to the container by name, as on Lambda
        started = time.monotonic()
        emulator = Emulator(config, log=log).start()
    with emulator:
        # WHEN the first photo is posted as soon as the container is started, then the others
        first = http_request(emulator.url, "POST", f"/predict?top_k={ALL_CLASSES}",
                             shared_images[0].read_bytes(), [("Content-Type", "image/jpeg")], timeout=300)
        cold_start_s = time.monotonic() - started
        replies = [first] + [
            http_request(emulator.url, "POST", f"/predict?top_k={ALL_CLASSES}", photo.read_bytes(),
                         [("Content-Type", "image/jpeg")]) for photo in shared_images[1:]]
        stats = emulator.stats()

    # THEN every answer comes from that variant and matches the in-process model: same top-1,
    # every probability within 1e-4
    for photo, reply in zip(shared_images, replies):
        assert reply.status == 200, reply.body[:500]
        assert json.loads(reply.body)["model"]["variant"] == variant
        got = {p["index"]: p["probability"] for p in json.loads(reply.body)["predictions"]}
        expected = reference.classify(photo.read_bytes(), top_k=ALL_CLASSES)["predictions"]
        assert len(got) == ALL_CLASSES
        for prediction in expected:
            assert got[prediction["index"]] == pytest.approx(prediction["probability"], abs=1e-4), photo.name
        top_margin = expected[0]["probability"] - expected[1]["probability"]
        if top_margin > 1e-4:  # a tie within tolerance may order either way
            assert max(got, key=got.__getitem__) == expected[0]["index"], photo.name
    # AND the container came up once and was never restarted (read-only root was enough)
    assert stats.starts == 1 and stats.restarts == 0 and stats.init_errors == 0
    record_property(f"container_cold_start_s_{variant}", round(cold_start_s, 2))
    record_property(f"init_duration_ms_{variant}", stats.init_durations_ms)
    print(f"image-test: {variant}: container start -> first response {cold_start_s:.2f} s "
          f"(init {stats.init_durations_ms})", file=sys.stderr)
