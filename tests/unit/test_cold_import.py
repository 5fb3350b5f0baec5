"""Cold start stays lean with every variant: a fresh interpreter imports the handler, loads, answers.

`import torch` is most of a cold start; what serving adds must not pull in torchvision (about
1.3 s, it imports `torch._dynamo`), the compiler stack, sympy or boto3, whichever variant is loaded.
The weights are read and hashed while torch imports (`model_store.loader.prefetch`), once.
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


@pytest.mark.parametrize("variant", ["", "fp32-graph"])
def test_the_handler_imports_nothing_heavy_whatever_variant_it_serves(root: Path, variant: str) -> None:
    # GIVEN a model root with every variant, and MODEL_VARIANT unset (the default: int8) or fp32-graph
    photo = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 120, 40)).save(photo, "JPEG")
    script = (
        "import sys, json\n"
        "import handler.app as app\n"
        f"body = app.lambda_handler({{'image': {base64.b64encode(photo.getvalue()).decode()!r}}}, None)\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], 'body': body}}))\n"
    )
    env = {**os.environ, "MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": "v1",
           "MODEL_VARIANT": variant, "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING"}
    # WHEN a fresh interpreter imports handler.app (the Lambda init) and answers once
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    # THEN it answered with the expected variant, and none of the heavy modules was imported
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    expected = variant or "int8"
    assert result["body"]["model"]["variant"] == expected, result["body"]
    assert result["body"]["timing_ms"]["variant"] == expected
    assert result["heavy"] == []


def test_a_prefetched_digest_is_reused_by_the_load(root: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a copy of the model root and a count of the files hashed
    copy = tmp_path / "models"
    shutil.copytree(root, copy, symlinks=True)
    hashed: list[str] = []
    real = loader.hashlib.file_digest
    monkeypatch.setattr(loader.hashlib, "file_digest",
                        lambda stream, name: (hashed.append(stream.name), real(stream, name))[1])
    # WHEN the weights are prefetched (as handler.app does before importing torch), then loaded
    loader.prefetch(copy, NAME, version="v1").join(timeout=60)
    loaded = loader.load(copy, NAME, version="v1")
    # THEN the int8 file was hashed once, by the prefetch, and the load used that digest
    assert loaded.variant == "int8"
    assert [Path(name).name for name in hashed] == [variants.VARIANT_FILES["int8"]]


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
