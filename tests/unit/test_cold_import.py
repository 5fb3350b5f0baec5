"""Cold start stays lean with every variant: a fresh interpreter imports the handler, loads, answers.

`import torch` (2 s or more) used to be most of a cold start. The ONNX variants (`int8`,
`fp32-graph`) run on ONNX Runtime, so a runtime serving one must never import torch at all; only
`fp32` does. Whatever the variant, serving must not pull in torchvision (about 1.3 s, it imports
`torch._dynamo`), the compiler stack, sympy or boto3. The weights file is read while the rest
of init runs (`model_store.loader.prefetch`) and hashed once.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from model_store import loader, variants
from model_store.exceptions import ChecksumError
from model_store.manifest import Architecture, Preprocessing
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync

REPO = Path(__file__).resolve().parents[2]
NAME = "lean"
HEAVY = ("torchvision", "torch._dynamo", "torch._inductor", "sympy", "boto3")
ENGINES = ("torch", "onnxruntime")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synced ResNet-18 version with fp32, int8 and fp32-graph (the gates forced open: not under test here)."""
    torch.manual_seed(0)
    store = tmp_path_factory.mktemp("store").as_uri()
    models = tmp_path_factory.mktemp("models")
    calibration = [Image.new("RGB", (40, 40), (30 * i, 255 - 20 * i, 90)) for i in range(8)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(variants, "agreement", lambda reference, candidate: variants.Agreement(2, 1.0, 1.0, 3))
        patch.setattr(variants, "measure_ms", lambda models, example, threads: {
            name: 5.0 if name == "fp32-graph" else 10.0 for name in models})
        manifest = publish_state_dict(build_model(Architecture(depth=18), 3).state_dict(), store, NAME, "v1",
                                      arch=Architecture(depth=18), class_names=("a", "b", "c"),
                                      preprocess=Preprocessing(size=(32, 32)), trained=True, source="test",
                                      progress=False, calibration=calibration, graph=True)
    assert set(manifest.weights) == {"fp32", "int8", "fp32-graph"}
    sync(store, NAME, models, version="v1", progress=False)
    return models


def serve_once(root: Path, variant: str) -> dict[str, object]:
    """A fresh interpreter imports handler.app (the Lambda init), answers a prediction and GET /model.

    Returns the two bodies and which heavy modules and engines ended up imported.
    """
    photo = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 120, 40)).save(photo, "JPEG")
    model_event = {"version": "2.0", "rawPath": "/model", "headers": {}, "isBase64Encoded": False,
                   "requestContext": {"http": {"method": "GET", "path": "/model"}, "requestId": "r"}}
    script = (
        "import sys, json\n"
        "import handler.app as app\n"
        f"body = app.lambda_handler({{'image': {base64.b64encode(photo.getvalue()).decode()!r}}}, None)\n"
        f"model = json.loads(app.lambda_handler({model_event!r}, None)['body'])\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules],\n"
        f"                  'engines': [m for m in {ENGINES!r} if m in sys.modules],\n"
        "                  'body': body, 'model': model}))\n"
    )
    env = {**os.environ, "MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": "v1",
           "MODEL_VARIANT": variant, "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING"}
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("variant, expected", [("", "int8"), ("int8", "int8"), ("fp32-graph", "fp32-graph")])
def test_an_onnx_variant_is_served_without_importing_torch(root: Path, variant: str, expected: str) -> None:
    # GIVEN a model root with every variant, and MODEL_VARIANT unset (the default: int8), int8 or fp32-graph
    # WHEN a fresh interpreter imports handler.app (the Lambda init) and answers once
    result = serve_once(root, variant)
    body, model = result["body"], result["model"]
    assert isinstance(body, dict) and isinstance(model, dict)
    # THEN it answered with that variant, on ONNX Runtime, and torch was never imported
    assert body["model"]["variant"] == expected, body
    assert body["timing_ms"]["variant"] == expected
    assert (model["variant"], model["engine"]) == (expected, "onnxruntime")
    assert result["engines"] == ["onnxruntime"]
    assert result["heavy"] == []


def test_the_fp32_variant_runs_on_torch(root: Path) -> None:
    # GIVEN the same model root with MODEL_VARIANT=fp32
    # WHEN a fresh interpreter imports handler.app and answers once
    result = serve_once(root, "fp32")
    body, model = result["body"], result["model"]
    assert isinstance(body, dict) and isinstance(model, dict)
    # THEN torch ran it (and ONNX Runtime was not even imported), still without anything heavy
    assert body["model"]["variant"] == "fp32" and body["timing_ms"]["variant"] == "fp32"
    assert (model["variant"], model["engine"]) == ("fp32", "torch")
    assert result["engines"] == ["torch"]
    assert result["heavy"] == []


def test_a_prefetched_fp32_digest_is_reused_by_the_load(root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a copy of the model root and a count of the files hashed from disk
    copy = tmp_path / "models"
    shutil.copytree(root, copy, symlinks=True)
    hashed: list[str] = []
    real = loader.hashlib.file_digest

    def counting(stream: Any, name: str) -> Any:
        hashed.append(stream.name)
        return real(stream, name)

    monkeypatch.setattr(loader.hashlib, "file_digest", counting)
    # WHEN the fp32 weights are prefetched (as handler.app does before its imports), then loaded
    loader.prefetch(copy, NAME, version="v1", variant="fp32").join(timeout=60)
    loaded = loader.load(copy, NAME, version="v1", variant="fp32")
    # THEN the safetensors file was hashed once, by the prefetch, and the load used that digest
    assert loaded.variant == "fp32" and loaded.predictor.engine == "torch"
    assert [Path(name).name for name in hashed] == ["model.safetensors"]


def test_a_file_changed_after_its_prefetch_is_still_refused(root: Path, tmp_path: Path) -> None:
    # GIVEN a prefetched int8 file, rewritten afterwards with one byte changed (same size)
    copy = tmp_path / "models"
    shutil.copytree(root, copy, symlinks=True)
    loader.prefetch(copy, NAME, version="v1").join(timeout=60)
    path = copy / NAME / "versions" / "v1" / variants.VARIANT_FILES["int8"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    # WHEN int8 is loaded / THEN the new bytes are hashed and refused
    with pytest.raises(ChecksumError, match="sha256"):
        loader.load(copy, NAME, version="v1", variant="int8")
