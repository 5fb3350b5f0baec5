"""Unit tests for the faster variants: int8 files, the graph file, the gates, and which variant serves."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from model_store import graph as graph_module
from model_store import loader, quantize, variants
from model_store.exceptions import ArchitectureError, ChecksumError, SourceError, VariantError
from model_store.graph import GRAPH_FORMAT, load_graph, save_graph, trace_frozen
from model_store.manifest import Architecture, Head, Manifest, Preprocessing, WeightsFile
from model_store.quantize import int8_format, load_int8, quantize_static, save_int8
from model_store.resnet import build_model
from model_store.weights import sha256_file

ARCH = Architecture(depth=18, head=Head(type="mlp", hidden=16))
CLASSES = 5
SIZE = 32
SHA = "0" * 64


def probe(count: int, seed: int) -> torch.Tensor:
    return torch.rand((count, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fp32_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH, CLASSES).eval()


@pytest.fixture(scope="module")
def int8_file(fp32_model: torch.nn.Module,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A quantized ResNet-18 and its int8 safetensors file."""
    quantized = quantize_static(fp32_model, [probe(8, 0)], quantize.default_engine())
    path = tmp_path_factory.mktemp("int8") / "model-int8.safetensors"
    save_int8(quantized, path, quantize.default_engine())
    return quantized, path


def manifest_with(*names: str, engine: str = "x86") -> Manifest:
    """A manifest listing the given variants (files need not exist: only the choice is tested)."""
    formats = {"fp32": "safetensors", "int8": int8_format(engine), "fp32-graph": GRAPH_FORMAT}
    weights = {name: WeightsFile(file=f"{name}.bin", format=formats[name], sha256=SHA, size=1)
               for name in names}
    return Manifest(name="dogs", version="v1", arch=ARCH, class_names=tuple("abcde"),
                    preprocess=Preprocessing(size=(SIZE, SIZE)), weights=weights, trained=True)


def safetensors_header(path: Path) -> dict[str, object]:
    with path.open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        return json.loads(stream.read(length))


def test_agreement_counts_top1_matches_and_topk_overlap() -> None:
    # GIVEN fp32 logits and a candidate that swaps the top two classes of the second image
    reference = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5]])
    candidate = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 5, 4]])
    # WHEN compared with k=5, and with a candidate that also drops a top-5 class
    same_set = variants.agreement(reference, candidate)
    dropped = variants.agreement(reference, torch.tensor([[5.0, 4, 3, 2, -1, 0], [0.0, 1, 2, 3, 4, 5]]))
    # THEN top-1 agrees on 1 of 2 images while the top-5 sets are equal;
    # a dropped class costs 1/5 of one image
    assert (same_set.top1, same_set.top5, same_set.k, same_set.images) == (0.5, 1.0, 5, 2)
    assert not same_set.passes
    assert dropped.top1 == 1.0 and dropped.top5 == pytest.approx(0.9)
    assert "top-1 agreement 100.0%" in dropped.describe() and "90.0%" in dropped.describe()


def test_int8_file_holds_plain_int8_tensors_and_rebuilds_the_same_network(
        int8_file: tuple[torch.nn.Module, Path]) -> None:
    quantized, path = int8_file
    # GIVEN the saved int8 file / WHEN its header is read
    header = safetensors_header(path)
    # THEN it is data only: int8 conv weights, float64 scales, an fp32 head, and the engine in the metadata
    assert header["__metadata__"]["format"] == "breedserve-int8"
    assert header["__metadata__"]["engine"] == quantize.default_engine()
    assert header["layer1.0.conv1.weight"]["dtype"] == "I8"
    assert header["layer1.0.conv1.weight_scale"]["dtype"] == "F64"
    assert header["fc.0.weight"]["dtype"] == "F32"
    # WHEN it is loaded as serving loads it
    loaded = load_int8(ARCH, CLASSES, path, quantize.default_engine())
    # THEN it computes exactly what the calibrated network computed
    with torch.inference_mode():
        assert torch.equal(loaded(probe(3, 1)), quantized(probe(3, 1)))
    assert not loaded.training


def test_int8_file_for_another_architecture_is_refused(int8_file: tuple[torch.nn.Module, Path]) -> None:
    # GIVEN a ResNet-18 int8 file / WHEN loaded as a ResNet-34 / THEN ArchitectureError names a missing tensor
    with pytest.raises(ArchitectureError, match="layer1.2"):
        load_int8(Architecture(depth=34, head=ARCH.head), CLASSES, int8_file[1], quantize.default_engine())


def test_int8_for_an_engine_this_machine_lacks_is_refused_and_not_chosen(
        int8_file: tuple[torch.nn.Module, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a machine whose torch offers only qnnpack (as on arm64)
    monkeypatch.setattr(quantize, "supported_engines", lambda: ("qnnpack",))
    # WHEN x86 int8 weights are loaded / THEN VariantError says what runs here
    with pytest.raises(VariantError, match="'x86' quantized engine cannot run here.*qnnpack"):
        load_int8(ARCH, CLASSES, int8_file[1], "x86")
    # AND the default choice skips that int8 variant
    assert loader.choose_variant(manifest_with("fp32", "int8", engine="x86")) == "fp32"
    assert loader.choose_variant(manifest_with("fp32", "int8", engine="qnnpack")) == "int8"


def test_default_variant_is_the_fastest_present_and_a_request_wins() -> None:
    # GIVEN versions with different variants / WHEN no variant is requested / THEN int8 > fp32-graph > fp32
    engine = quantize.default_engine()
    assert loader.choose_variant(manifest_with("fp32", "int8", "fp32-graph", engine=engine)) == "int8"
    assert loader.choose_variant(manifest_with("fp32", "fp32-graph")) == "fp32-graph"
    assert loader.choose_variant(manifest_with("fp32")) == "fp32"
    # AND an explicit MODEL_VARIANT is taken as given
    assert loader.choose_variant(manifest_with("fp32", "int8", engine=engine), "fp32") == "fp32"


def test_tampered_graph_is_refused_before_anything_is_loaded(
        fp32_model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a saved graph and its manifest entry, then one byte of the file changed (same size)
    path = tmp_path / "model-graph.torchscript"
    save_graph(trace_frozen(fp32_model, probe(1, 0)), path)
    entry = WeightsFile(file=path.name, format=GRAPH_FORMAT, sha256=sha256_file(path), size=path.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    calls: list[object] = []
    monkeypatch.setattr(graph_module.torch.jit, "load", lambda *args, **kwargs: calls.append(args))
    # WHEN it is loaded / THEN ChecksumError, and torch.jit.load never saw the bytes
    with pytest.raises(ChecksumError, match="graph was not loaded"):
        load_graph(path, entry)
    assert calls == []


def test_verified_graph_computes_what_eager_computes(fp32_model: torch.nn.Module, tmp_path: Path) -> None:
    # GIVEN a frozen graph saved with its checksum / WHEN loaded / THEN its logits match eager fp32
    path = tmp_path / "model-graph.torchscript"
    save_graph(trace_frozen(fp32_model, probe(1, 0)), path)
    graph = load_graph(path, WeightsFile(file=path.name, format=GRAPH_FORMAT, sha256=sha256_file(path),
                                         size=path.stat().st_size))
    with torch.inference_mode():
        assert torch.allclose(graph(probe(4, 2)), fp32_model(probe(4, 2)), atol=1e-4)


def test_graph_that_is_not_10_percent_faster_is_not_kept(
        fp32_model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a measurement where the graph is only 5% faster than eager
    monkeypatch.setattr(variants, "measure_ms",
                        lambda models, example, threads: {"fp32": 10.5, "fp32-graph": 10.0})
    # WHEN the graph variant is made / THEN it is refused with the figures and its file removed
    with pytest.raises(VariantError, match=r"1\.05x speed-up.*from 1\.10x"):
        variants.make_graph(fp32_model, probe(1, 0), tmp_path, threads=2, say=lambda message: None)
    assert not (tmp_path / variants.VARIANT_FILES["fp32-graph"]).exists()


def test_graph_that_is_faster_is_kept_with_its_speedup(
        fp32_model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a measurement where the graph takes 8 ms and eager 10 ms
    monkeypatch.setattr(variants, "measure_ms",
                        lambda models, example, threads: {"fp32": 10.0, "fp32-graph": 8.0})
    # WHEN the graph variant is made / THEN it is kept, with the speed-up recorded
    kept = variants.make_graph(fp32_model, probe(1, 0), tmp_path, threads=2, say=lambda message: None)
    assert kept.format == GRAPH_FORMAT and kept.path.is_file()
    assert kept.metrics["speedup_vs_fp32"] == 1.25 and kept.metrics["ms_per_image"] == 8.0


def test_calibration_directory_is_read_sorted_and_split_every_fourth(tmp_path: Path) -> None:
    # GIVEN 8 images in two subfolders, each a distinct grey level, plus a text file
    for index in range(8):
        folder = tmp_path / ("a" if index < 4 else "b")
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (index * 30,) * 3).save(folder / f"{index}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    spec = Preprocessing(size=(8, 8))
    # WHEN read and split
    inputs = variants.calibration_inputs(tmp_path, spec)
    calib, held = variants.split_calibration(inputs)
    # THEN all 8 images come in path order at the model's input size, and images 3 and 7 are held out
    assert [round(float(t[0, 0, 0]) * 255) for t in inputs] == [i * 30 for i in range(8)]
    assert inputs[0].shape == (3, 8, 8)
    assert [round(float(t[0, 0, 0]) * 255) for t in held] == [90, 210] and len(calib) == 6


def test_too_few_or_missing_calibration_images_are_refused(tmp_path: Path) -> None:
    # GIVEN a directory with 3 images, and a path that does not exist
    for index in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{index}.jpg")
    spec = Preprocessing(size=(8, 8))
    # WHEN / THEN both are SourceErrors that say what was found
    with pytest.raises(SourceError, match="at least 8 images; found 3"):
        variants.calibration_inputs(tmp_path, spec)
    with pytest.raises(SourceError, match="does not exist"):
        variants.calibration_inputs(tmp_path / "nope", spec)


def test_a_variant_failing_its_gate_is_refused_with_its_figures(
        fp32_model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an int8 network that agrees with fp32 on 97% of held-out images (the real case: functional tests)
    monkeypatch.setattr(variants, "agreement",
                        lambda reference, candidate: variants.Agreement(100, 0.97, 0.99, 5))
    # WHEN the variants are built with calibration inputs
    kept, figures, refused = variants.build_variants(
        fp32_model.state_dict(), ARCH, CLASSES, probe(1, 0), tmp_path, calibration=[*probe(8, 3)], threads=1)
    # THEN int8 is refused with its figures, nothing is kept, and fp32's time is still recorded
    assert kept == [] and "int8" not in figures and figures["fp32"]["ms_per_image"] > 0
    assert refused["int8"] == ("int8 refused: top-1 agreement 97.0% (needs >= 99%), top-5 overlap 99.0% "
                               "(needs >= 95%) on 100 held-out images")
    assert not (tmp_path / variants.VARIANT_FILES["int8"]).exists()
