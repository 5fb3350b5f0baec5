"""Loading the ONNX variants: verified bytes only, the republish message for old formats, no torch."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from model_store import loader
from model_store.exceptions import ArchitectureError, ChecksumError, VariantError
from model_store.loader import load, prefetch
from model_store.manifest import Architecture, Manifest, Preprocessing, WeightsFile
from model_store.onnx_export import export_onnx
from model_store.predictor import OnnxPredictor
from model_store.quantize import quantize_int8
from model_store.resnet import build_model
from model_store.weights import save_safetensors, sha256_file

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("001.Akita", "002.Beagle", "003.Corgi")
ARCH = Architecture(depth=18)
SIZE = 32
FILES = {"fp32": "model.safetensors", "int8": "model-int8.onnx", "fp32-graph": "model-fp32.onnx"}
FORMATS = {"fp32": "safetensors", "int8": "onnx-int8", "fp32-graph": "onnx-fp32"}


def probe(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A ResNet-18 (3 classes) and its three files: safetensors, int8 ONNX, fp32 ONNX."""
    torch.manual_seed(0)
    model = build_model(ARCH, len(CLASSES)).eval()
    folder = tmp_path_factory.mktemp("files")
    save_safetensors(model.state_dict(), folder / FILES["fp32"])
    graph = export_onnx(model, SIZE, SIZE)
    (folder / FILES["fp32-graph"]).write_bytes(graph)
    (folder / FILES["int8"]).write_bytes(quantize_int8(graph, list(probe(8, 0))))
    return model, folder


def install(root: Path, files: Path, variants: tuple[str, ...] = ("fp32", "int8", "fp32-graph"),
            formats: dict[str, str] | None = None) -> Path:
    """Lay out dogs/v1 by hand, as `sync` would leave it, with the given variants."""
    directory = root / "dogs" / "versions" / "v1"
    directory.mkdir(parents=True)
    weights = {}
    for variant in variants:
        shutil.copyfile(files / FILES[variant], directory / FILES[variant])
        path = directory / FILES[variant]
        weights[variant] = WeightsFile(file=path.name, format={**FORMATS, **(formats or {})}[variant],
                                       sha256=sha256_file(path), size=path.stat().st_size)
    manifest = Manifest(name="dogs", version="v1", arch=ARCH, class_names=CLASSES,
                        preprocess=Preprocessing(size=(SIZE, SIZE)), weights=weights, trained=True)
    (directory / "manifest.json").write_text(manifest.to_json())
    return directory


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_onnx_variants_load_as_onnx_runtime_predictors(made: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    model, files = made
    install(tmp_path, files)
    with torch.inference_mode():
        expected = model(torch.from_numpy(probe(4, 1))).numpy()
    # GIVEN a version with all three variants / WHEN loaded without naming one, and as fp32-graph
    default = load(tmp_path, "dogs", version="v1", threads=1)
    graph = load(tmp_path, "dogs", version="v1", variant="fp32-graph", threads=2)
    # THEN int8 is the default, both run on ONNX Runtime with the threads asked for
    assert default.variant == "int8" and isinstance(default.predictor, OnnxPredictor)
    assert (default.predictor.engine, default.predictor.threads) == ("onnxruntime", 1)
    assert (graph.predictor.engine, graph.predictor.threads) == ("onnxruntime", 2)
    # AND the graph computes torch's logits; int8 ranks the same top class on most inputs
    np.testing.assert_allclose(graph.predictor(probe(4, 1)), expected, atol=1e-4)
    int8 = default.predictor(probe(4, 1))
    assert int8.shape == (4, len(CLASSES)) and int8.dtype == np.float32
    assert np.mean(int8.argmax(axis=1) == expected.argmax(axis=1)) >= 0.75


@pytest.mark.parametrize("variant", ["int8", "fp32-graph"])
def test_a_tampered_graph_is_refused_before_onnx_runtime_sees_it(
        made: tuple[torch.nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    # GIVEN one byte of the graph changed on disk (same size), and a spy on ONNX Runtime's parser
    directory = install(tmp_path, made[1])
    flip_a_byte(directory / FILES[variant])
    sessions: list[object] = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *args, **kwargs: sessions.append(args))
    # WHEN that variant is loaded / THEN ChecksumError, and no session was ever built from the bytes
    with pytest.raises(ChecksumError, match="has sha256 [0-9a-f]{64} but the manifest records.*nothing from it"):
        load(tmp_path, "dogs", version="v1", variant=variant)
    assert sessions == []


def test_a_graph_of_another_size_is_refused_without_reading_it(made: tuple[torch.nn.Module, Path],
                                                               tmp_path: Path) -> None:
    # GIVEN the int8 file cut short / WHEN loaded / THEN ChecksumError with both sizes
    directory = install(tmp_path, made[1])
    path = directory / FILES["int8"]
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    with pytest.raises(ChecksumError, match=f"is {size // 2} bytes but the manifest records {size}"):
        load(tmp_path, "dogs", version="v1", variant="int8")


def test_verified_bytes_that_are_not_a_graph_are_a_variant_error(made: tuple[torch.nn.Module, Path],
                                                                 tmp_path: Path) -> None:
    # GIVEN an int8 "graph" that is really the safetensors file, with a manifest vouching for it
    directory = install(tmp_path, made[1], variants=("fp32",))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["weights"]["int8"] = {**manifest["weights"]["fp32"], "file": FILES["fp32"] + ".copy",
                                   "format": "onnx-int8"}
    shutil.copyfile(directory / FILES["fp32"], directory / (FILES["fp32"] + ".copy"))
    (directory / "manifest.json").write_text(json.dumps(manifest))
    # WHEN it is loaded / THEN VariantError saying ONNX Runtime cannot run it
    with pytest.raises(VariantError, match="passed its checksum but ONNX Runtime cannot run it"):
        load(tmp_path, "dogs", version="v1", variant="int8")


def test_a_graph_for_another_class_count_is_refused(made: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    # GIVEN a manifest listing 4 classes over a 3-class graph
    directory = install(tmp_path, made[1])
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["class_names"] = [*CLASSES, "004.Dachshund"]
    manifest["num_classes"] = 4
    (directory / "manifest.json").write_text(json.dumps(manifest))
    # WHEN the graph is loaded / THEN ArchitectureError naming what it has
    with pytest.raises(ArchitectureError, match=r"not a graph of 4 classes.*logits\['batch', 3\]"):
        load(tmp_path, "dogs", version="v1", variant="fp32-graph")


@pytest.mark.parametrize(("variant", "old_format"), [("int8", "safetensors-int8-x86"),
                                                     ("fp32-graph", "torchscript")])
def test_a_variant_in_an_old_format_says_republish_and_the_default_falls_back(
        made: tuple[torch.nn.Module, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
        variant: str, old_format: str) -> None:
    # GIVEN a version published by an older breedserve: its faster variant in a retired format
    install(tmp_path, made[1], variants=("fp32", variant), formats={variant: old_format})
    # WHEN it is asked for by name / THEN VariantError telling the operator to republish
    with pytest.raises(VariantError, match=f"has format '{old_format}'.*only as.*republish the model"):
        load(tmp_path, "dogs", version="v1", variant=variant)
    # AND without a name the load falls through to fp32, logging why
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.WARNING, logger="model_store.loader"):
            loaded = load(tmp_path, "dogs", version="v1")
    finally:
        torch.set_num_threads(before)
    assert loaded.variant == "fp32"
    assert f"the {variant} variant of dogs/v1 cannot be loaded" in caplog.text and "republish" in caplog.text


def test_prefetch_of_an_onnx_variant_only_warms_the_cache(made: tuple[torch.nn.Module, Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a version whose default is int8, and a record of what gets hashed by the digest cache
    install(tmp_path, made[1])
    hashed: list[Path] = []
    monkeypatch.setattr(loader._DIGESTS, "digest", lambda path: hashed.append(path) or "")
    # WHEN prefetched / THEN nothing went through the digest cache (the loader hashes the bytes it runs)
    prefetch(tmp_path, "dogs", version="v1").join(timeout=60)
    assert hashed == []
    # AND an fp32 prefetch does hash the safetensors file
    prefetch(tmp_path, "dogs", version="v1", variant="fp32").join(timeout=60)
    assert [p.name for p in hashed] == [FILES["fp32"]]


def test_serving_an_onnx_variant_never_imports_torch(made: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    # GIVEN a synced version with int8, and a fresh interpreter
    install(tmp_path, made[1])
    code = ("import sys, numpy as np\n"
            "from model_store.loader import load, prefetch\n"
            f"prefetch({str(tmp_path)!r}, 'dogs', version='v1').join()\n"
            f"loaded = load({str(tmp_path)!r}, 'dogs', version='v1')\n"
            f"logits = loaded.predictor(np.zeros((2, 3, {SIZE}, {SIZE}), np.float32))\n"
            "print(loaded.variant, logits.shape, 'torch' in sys.modules)\n")
    # WHEN it prefetches, loads the default variant and predicts
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    # THEN int8 answered and torch was never imported
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "int8 (2, 3) False"
