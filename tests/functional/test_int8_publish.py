"""The faster variants end to end: publish with calibration -> file store -> sync -> load -> serve.

Both are ONNX graphs run by ONNX Runtime (int8 QDQ, and the fp32 graph). The model is a ResNet-18
whose head was trained on generated, separable images (solid colours with noise,
`training.synthetic`) until it classifies fresh ones correctly, so int8 agreeing with fp32 means
something. Inputs are 32x32 to keep every step fast; the code path is the one ResNet-50 takes.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from torch import nn

from handler.classifier import Classifier
from handler.observability import Telemetry
from handler.service import Service
from model_store import variants
from model_store.exceptions import ChecksumError
from model_store.loader import load
from model_store.manifest import Architecture, Manifest, Preprocessing
from model_store.preprocess import to_tensor
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync
from model_store.weights import save_safetensors
from training.synthetic import class_names, make_image

REPO = Path(__file__).resolve().parents[2]
ARCH = Architecture(depth=18)
CLASSES = class_names(6)
SPEC = Preprocessing(resize_mode="exact", size=(32, 32))
NAME = "colours"


@dataclass(frozen=True)
class Trained:
    """A model that really separates the classes, and images it never saw."""

    state_dict: dict[str, torch.Tensor]
    model: nn.Module
    fresh: list[Image.Image]
    fresh_labels: list[int]


def pictures(count: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    rng = random.Random(seed)
    labels = [i % len(CLASSES) for i in range(count)]
    return [make_image(label, rng, 40) for label in labels], labels


def inputs(images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.stack([to_tensor(image, SPEC) for image in images])


@pytest.fixture(scope="module")
def trained() -> Trained:
    """ResNet-18 with its head fitted to 120 generated images (the backbone stays as initialised)."""
    torch.manual_seed(0)
    model = build_model(ARCH, len(CLASSES)).eval()
    images, labels = pictures(120, seed=1)
    head, model.fc = model.fc, nn.Identity()
    with torch.no_grad():
        features = model(inputs(images))
    model.fc = head
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    target = torch.tensor(labels)
    for _ in range(300):
        loss = nn.functional.cross_entropy(head(features), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fresh, fresh_labels = pictures(36, seed=2)
    with torch.inference_mode():
        accuracy = (model(inputs(fresh)).argmax(dim=1) == torch.tensor(fresh_labels)).float().mean().item()
    assert accuracy >= 0.95, f"the fixture model should separate the colours, got accuracy {accuracy:.2f}"
    return Trained({k: v.detach().clone() for k, v in model.state_dict().items()}, model, fresh, fresh_labels)


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 generated pictures, 8 per class, as PNG files (what `--calibration DIR` reads)."""
    folder = tmp_path_factory.mktemp("calibration")
    images, labels = pictures(48, seed=3)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        image.save(folder / f"{index:03d}-{CLASSES[label]}.png")
    return folder


@pytest.fixture(scope="module")
def published(trained: Trained, calibration_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path]:
    """v1 published with calibration (int8) and the graph (its timing fixed at 2x), synced into a root."""
    store = tmp_path_factory.mktemp("store").as_uri()
    root = tmp_path_factory.mktemp("models")
    real = variants.measure_ms

    def timings(models: dict[str, object], example: np.ndarray, threads: int) -> dict[str, float]:
        # The graph's real speed-up depends on the machine and its load: fix it so the graph is kept.
        return {"fp32": 10.0, "fp32-graph": 5.0} if "fp32-graph" in models else real(models, example, threads)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(variants, "measure_ms", timings)
        manifest = publish_state_dict(trained.state_dict, store, NAME, "v1", arch=ARCH, class_names=CLASSES,
                                      preprocess=SPEC, trained=True, source="test", progress=False,
                                      calibration=calibration_dir, graph=True)
    sync(store, NAME, root, version="v1", progress=False)
    return manifest, root


def test_int8_passes_the_gate_and_serves_after_sync(published: tuple[Manifest, Path],
                                                    trained: Trained) -> None:
    manifest, root = published
    # GIVEN the published manifest / THEN it lists int8 as an ONNX graph with the agreement it passed
    assert set(manifest.weights) == {"fp32", "int8", "fp32-graph"}
    assert manifest.weights["int8"].format == "onnx-int8"
    assert manifest.weights["fp32-graph"].format == "onnx-fp32"
    figures = manifest.metrics["variants"]["int8"]
    assert figures["top1_agreement"] >= 0.99 and figures["top5_overlap"] >= 0.95
    assert figures["held_out_images"] == 12 and figures["calibration_images"] == 36
    assert figures["engine"] == "onnxruntime" and figures["calibration_method"] == "MinMax"
    assert manifest.metrics["variants"]["fp32"]["engine"] == "torch"
    # WHEN the synced version is loaded without naming a variant
    loaded = load(root, NAME, version="v1", threads=2)
    # THEN the fastest variant (int8) is chosen, and on images it never saw it agrees with fp32
    assert loaded.variant == "int8" and loaded.predictor.engine == "onnxruntime"
    int8_top = loaded.predictor(inputs(trained.fresh).numpy()).argmax(axis=1)
    with torch.inference_mode():
        fp32_top = trained.model(inputs(trained.fresh)).argmax(dim=1).numpy()
    assert np.mean(int8_top == fp32_top) >= 0.99
    assert np.mean(int8_top == np.array(trained.fresh_labels)) >= 0.95


def test_broken_calibration_refuses_int8_but_publishes_fp32(trained: Trained, tmp_path: Path) -> None:
    # GIVEN calibration whose calibrating slots are black images (every 4th, the held-out one, is real)
    images, _ = pictures(12, seed=4)
    black = Image.new("RGB", (40, 40))
    calibration = [image if index % 4 == 3 else black for index, image in enumerate(images)]
    # WHEN published
    manifest = publish_state_dict(trained.state_dict, tmp_path.as_uri(), NAME, "v1", arch=ARCH,
                                  class_names=CLASSES, preprocess=SPEC, trained=True, source="test",
                                  progress=False, calibration=calibration)
    # THEN the version exists with fp32 only, and the refusal carries the figures
    assert set(manifest.weights) == {"fp32"}
    reason = manifest.metrics["refused_variants"]["int8"]
    assert reason.startswith("int8 refused: top-1 agreement") and "on 3 held-out images" in reason
    assert (tmp_path / NAME / "v1" / "manifest.json").is_file()
    assert not (tmp_path / NAME / "v1" / variants.VARIANT_FILES["int8"]).exists()


def test_model_variant_chooses_and_the_answer_names_it(published: tuple[Manifest, Path],
                                                       trained: Trained) -> None:
    _, root = published
    photo = io.BytesIO()
    trained.fresh[0].save(photo, "PNG")
    payload = {"image": base64.b64encode(photo.getvalue()).decode()}
    answers = {}
    threads = torch.get_num_threads()
    try:
        for variant in ("", "fp32", "fp32-graph"):
            # GIVEN a handler configured with MODEL_VARIANT (empty: the default)
            environ = {"MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": "v1",
                       "MODEL_VARIANT": variant, "OMP_NUM_THREADS": "1"}
            telemetry = Telemetry(service=f"variant-test-{uuid.uuid4().hex[:8]}", stream=io.StringIO())
            service = Service.from_env(environ, telemetry=telemetry)
            # WHEN a direct invocation is answered
            answers[variant or "default"] = service.handle(payload, None)
    finally:
        torch.set_num_threads(threads)
    # THEN each answer says which variant ran, in `model` and in `timing_ms`, and all agree on the class
    for asked, expected in (("default", "int8"), ("fp32", "fp32"), ("fp32-graph", "fp32-graph")):
        body = answers[asked]
        assert body["model"]["variant"] == expected and body["timing_ms"]["variant"] == expected, body
    assert len({body["predictions"][0]["index"] for body in answers.values()}) == 1


def damaged_copy(root: Path, tmp_path: Path, variant: str) -> Path:
    """A copy of the model root whose `variant` file has one byte changed (same size)."""
    copy = tmp_path / "models"
    shutil.copytree(root, copy, symlinks=True)
    path = copy / NAME / "versions" / "v1" / variants.VARIANT_FILES[variant]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return copy


def test_graph_variant_matches_fp32_and_a_tampered_copy_is_never_loaded(
        published: tuple[Manifest, Path], trained: Trained, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    _, root = published
    # GIVEN the synced graph variant / WHEN loaded / THEN it computes fp32's logits
    graph = Classifier.from_root(root, NAME, version="v1", variant="fp32-graph", threads=2)
    assert graph.engine == "onnxruntime"
    probe = inputs(trained.fresh[:4])
    with torch.inference_mode():
        expected = trained.model(probe).numpy()
    np.testing.assert_allclose(graph.predict(probe.numpy()), expected, atol=1e-4)
    # GIVEN the graph file changed on disk (same size)
    root = damaged_copy(root, tmp_path, "fp32-graph")
    calls: list[object] = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *args, **kwargs: calls.append(args))
    # WHEN it is loaded again / THEN the checksum refuses it and ONNX Runtime never parsed it
    with pytest.raises(ChecksumError, match="sha256"):
        load(root, NAME, version="v1", variant="fp32-graph")
    assert calls == []


def test_a_damaged_default_variant_falls_back_to_the_next_fastest(
        published: tuple[Manifest, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a root whose int8 file is damaged
    root = damaged_copy(published[1], tmp_path, "int8")
    # WHEN loaded without naming a variant / THEN the next fastest (the graph) serves, and the failure is logged
    with caplog.at_level(logging.WARNING, logger="model_store.loader"):
        loaded = load(root, NAME, version="v1")
    assert loaded.variant == "fp32-graph"
    assert "the int8 variant of colours/v1 cannot be loaded" in caplog.text and "sha256" in caplog.text
    # AND naming int8 explicitly is an error, not a silent fallback
    with pytest.raises(ChecksumError):
        load(root, NAME, version="v1", variant="int8")


def test_cli_publish_with_calibration_reports_the_variants(trained: Trained, calibration_dir: Path,
                                                          tmp_path: Path) -> None:
    # GIVEN the trained weights, class and preprocessing files
    weights = tmp_path / "model.safetensors"
    save_safetensors(trained.state_dict, weights)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "spec.json").write_text('{"resize_mode": "exact", "size": [32, 32]}')
    # WHEN `python -m model_store publish --calibration DIR` runs
    run = subprocess.run(
        [sys.executable, "-m", "model_store", "publish", str(weights), "--store", (tmp_path / "store").as_uri(),
         "--name", NAME, "--version", "v1", "--classes", str(tmp_path / "classes.txt"),
         "--preprocess", str(tmp_path / "spec.json"), "--calibration", str(calibration_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    # THEN it succeeds and the last line lists fp32 and int8 with the agreement
    assert run.returncode == 0, run.stderr[-2000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("variants: fp32 (") and "; int8 (" in last and "top-1 agreement" in last
    assert "top-5 overlap" in last and "int8: calibrating (MinMax) on 36 images" in run.stderr
    assert (tmp_path / "store" / NAME / "v1" / variants.VARIANT_FILES["int8"]).is_file()
