"""Unit tests for the faster variants: the ONNX export, the int8 graph, the gates, and which variant serves."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from model_store import loader, variants
from model_store.exceptions import SourceError, VariantError
from model_store.manifest import (
    GRAPH_FORMAT,
    INT8_FORMAT,
    Architecture,
    Head,
    Manifest,
    Preprocessing,
    WeightsFile,
)
from model_store.onnx_export import OPSET, export_onnx
from model_store.predictor import ONNX_INPUT, ONNX_OUTPUT, OnnxPredictor, TorchPredictor
from model_store.quantize import quantize_int8
from model_store.resnet import build_model

REPO = Path(__file__).resolve().parents[2]
ARCH = Architecture(depth=18, head=Head(type="mlp", hidden=16))
CLASSES = 5
SIZE = 32
SHA = "0" * 64


def probe(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def fp32_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH, CLASSES).eval()


@pytest.fixture(scope="module")
def fp32_onnx(fp32_model: torch.nn.Module) -> bytes:
    return export_onnx(fp32_model, SIZE, SIZE)


def torch_logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


def manifest_with(*names: str, formats: dict[str, str] | None = None) -> Manifest:
    """A manifest listing the given variants (files need not exist: only the choice is tested)."""
    chosen = {"fp32": "safetensors", "int8": INT8_FORMAT, "fp32-graph": GRAPH_FORMAT, **(formats or {})}
    weights = {name: WeightsFile(file=f"{name}.bin", format=chosen[name], sha256=SHA, size=1) for name in names}
    return Manifest(name="dogs", version="v1", arch=ARCH, class_names=tuple("abcde"),
                    preprocess=Preprocessing(size=(SIZE, SIZE)), weights=weights, trained=True)


def test_onnx_threads_stop_spinning_when_a_run_returns(fp32_onnx: bytes) -> None:
    # GIVEN a 2-thread session  THEN its pool stops spinning after each run (a spinning thread would
    # hold the vCPU that the next request's decoding, or a batch's second decode worker, needs)
    options = OnnxPredictor(fp32_onnx, 2).session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.intra_op_num_threads == 2


def test_agreement_counts_top1_matches_and_topk_overlap() -> None:
    # GIVEN fp32 logits and a candidate that swaps the top two classes of the second image
    reference = np.array([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5]])
    candidate = np.array([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 5, 4]])
    # WHEN compared with k=5, and with a candidate that also drops a top-5 class
    same_set = variants.agreement(reference, candidate)
    dropped = variants.agreement(reference, np.array([[5.0, 4, 3, 2, -1, 0], [0.0, 1, 2, 3, 4, 5]]))
    # THEN top-1 agrees on 1 of 2 images while the top-5 sets are equal;
    # a dropped class costs 1/5 of one image
    assert (same_set.top1, same_set.top5, same_set.k, same_set.images) == (0.5, 1.0, 5, 2)
    assert not same_set.passes
    assert dropped.top1 == 1.0 and dropped.top5 == pytest.approx(0.9)
    assert "top-1 agreement 100.0%" in dropped.describe() and "90.0%" in dropped.describe()
    with pytest.raises(VariantError, match="cannot compare"):
        variants.agreement(reference, candidate[:1])


def test_export_names_a_dynamic_batch_and_computes_torchs_logits(fp32_model: torch.nn.Module,
                                                                  fp32_onnx: bytes) -> None:
    # GIVEN the exported graph / WHEN its signature is read
    graph = onnx.load_from_string(fp32_onnx)
    (given,), (out,) = graph.graph.input, graph.graph.output
    dims = [d.dim_param or d.dim_value for d in given.type.tensor_type.shape.dim]
    # THEN input [batch, 3, H, W] and output [batch, classes], opset 17
    assert (given.name, out.name) == (ONNX_INPUT, ONNX_OUTPUT)
    assert dims == ["batch", 3, SIZE, SIZE]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", CLASSES]
    assert any(o.domain in ("", "ai.onnx") and o.version == OPSET for o in graph.opset_import)
    # AND ONNX Runtime computes what torch computes, for any batch size
    predictor = OnnxPredictor(fp32_onnx, 1)
    for count in (1, 3):
        batch = probe(count, count)
        np.testing.assert_allclose(predictor(batch), torch_logits(fp32_model, batch), atol=1e-4)
    # AND the model was left in eval mode
    assert not fp32_model.training


def test_export_is_the_same_bytes_every_time_even_in_another_process(fp32_onnx: bytes,
                                                                     fp32_model: torch.nn.Module,
                                                                     tmp_path: Path) -> None:
    # GIVEN the same weights exported again here, and in a fresh interpreter
    again = export_onnx(fp32_model, SIZE, SIZE)
    weights = tmp_path / "w.pt"
    torch.save(fp32_model.state_dict(), weights)
    code = ("import hashlib, sys, torch\n"
            "from model_store.onnx_export import export_onnx\n"
            "from model_store.resnet import build_model\n"
            "from model_store.manifest import Architecture, Head\n"
            "m = build_model(Architecture(depth=18, head=Head(type='mlp', hidden=16)), 5)\n"
            f"m.load_state_dict(torch.load({str(weights)!r}, weights_only=True))\n"
            f"print(hashlib.sha256(export_onnx(m, {SIZE}, {SIZE})).hexdigest())\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=False)
    # THEN all three are byte for byte the same (a sha256 names one graph)
    assert run.returncode == 0, run.stderr[-2000:]
    assert again == fp32_onnx
    assert run.stdout.strip().splitlines()[-1] == hashlib.sha256(fp32_onnx).hexdigest()


def test_int8_graph_is_qdq_with_per_channel_int8_weights_and_agrees(fp32_model: torch.nn.Module,
                                                                    fp32_onnx: bytes) -> None:
    # GIVEN the graph quantized on 12 random inputs
    calibration = list(probe(12, 5))
    data = quantize_int8(fp32_onnx, calibration)
    graph = onnx.load_from_string(data)
    ops = {node.op_type for node in graph.graph.node}
    # THEN it is QDQ: quantize/dequantize pairs around the float ops, uint8 activations
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    quantized_input = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == ONNX_INPUT)
    zero_point = next(t for t in graph.graph.initializer if t.name == quantized_input.input[2])
    assert zero_point.data_type == onnx.TensorProto.UINT8
    # AND the convolution weights are int8 with one scale per output channel
    weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights, "no int8 convolution weights"
    scales = {t.name: t for t in graph.graph.initializer}
    per_channel = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in {w.name for w in weights}]
    assert per_channel and all(list(scales[n.input[1]].dims) == [scales[n.input[0]].dims[0]] for n in per_channel)
    # AND it still ranks like fp32 on fresh inputs (a quarter of the file size)
    batch = probe(8, 6)
    result = variants.agreement(torch_logits(fp32_model, batch), OnnxPredictor(data, 1)(batch))
    assert result.top1 >= 0.75 and len(data) < len(fp32_onnx) / 3


def test_int8_with_no_calibration_or_an_unknown_method_is_refused(fp32_onnx: bytes) -> None:
    with pytest.raises(VariantError, match="at least one image"):
        quantize_int8(fp32_onnx, [])
    with pytest.raises(VariantError, match="unknown calibration method 'Magic'"):
        quantize_int8(fp32_onnx, list(probe(2, 0)), method="Magic")


def test_default_variant_is_the_fastest_present_and_a_request_wins() -> None:
    # GIVEN versions with different variants / WHEN no variant is requested / THEN int8 > fp32-graph > fp32
    assert loader.choose_variant(manifest_with("fp32", "int8", "fp32-graph")) == "int8"
    assert loader.choose_variant(manifest_with("fp32", "fp32-graph")) == "fp32-graph"
    assert loader.choose_variant(manifest_with("fp32")) == "fp32"
    # AND an explicit MODEL_VARIANT is taken as given
    assert loader.choose_variant(manifest_with("fp32", "int8"), "fp32") == "fp32"


def test_onnx_variants_are_skipped_where_onnxruntime_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a machine without onnxruntime (find_spec finds nothing; nothing is imported to find out)
    real = loader.importlib.util.find_spec
    monkeypatch.setattr(loader.importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxruntime" else real(name, *args))
    # WHEN the default variant is chosen / THEN fp32, the one variant torch runs
    assert loader.choose_variant(manifest_with("fp32", "int8", "fp32-graph")) == "fp32"
    assert not loader.runnable(manifest_with("fp32", "int8"), "int8")


def test_graph_whose_logits_differ_from_torch_is_refused(fp32_model: torch.nn.Module, fp32_onnx: bytes,
                                                         tmp_path: Path) -> None:
    # GIVEN a "graph" exported from other weights than the fp32 model it is judged against
    torch.manual_seed(1)
    other = export_onnx(build_model(ARCH, CLASSES).eval(), SIZE, SIZE)
    # WHEN made into the fp32-graph variant / THEN refused with the difference, and no file written
    with pytest.raises(VariantError, match="logits differ from torch's by"):
        variants.make_graph(TorchPredictor(fp32_model, 1), other, probe(1, 0), tmp_path, threads=1,
                            say=lambda message: None)
    assert not (tmp_path / variants.VARIANT_FILES["fp32-graph"]).exists()


def test_graph_that_is_not_10_percent_faster_is_not_kept(
        fp32_model: torch.nn.Module, fp32_onnx: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a measurement where the graph is only 5% faster than eager
    monkeypatch.setattr(variants, "measure_ms",
                        lambda models, example, threads: {"fp32": 10.5, "fp32-graph": 10.0})
    # WHEN the graph variant is made / THEN it is refused with the figures and no file is written
    with pytest.raises(VariantError, match=r"1\.05x speed-up.*from 1\.10x"):
        variants.make_graph(TorchPredictor(fp32_model, 1), fp32_onnx, probe(1, 0), tmp_path, threads=2,
                            say=lambda message: None)
    assert not (tmp_path / variants.VARIANT_FILES["fp32-graph"]).exists()


def test_graph_that_is_faster_is_kept_with_its_speedup(
        fp32_model: torch.nn.Module, fp32_onnx: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a measurement where the graph takes 8 ms and eager 10 ms
    monkeypatch.setattr(variants, "measure_ms",
                        lambda models, example, threads: {"fp32": 10.0, "fp32-graph": 8.0})
    # WHEN the graph variant is made / THEN it is kept as the exported bytes, with the speed-up recorded
    kept = variants.make_graph(TorchPredictor(fp32_model, 1), fp32_onnx, probe(1, 0), tmp_path, threads=2,
                               say=lambda message: None)
    assert kept.format == GRAPH_FORMAT and kept.path.read_bytes() == fp32_onnx
    assert kept.metrics["speedup_vs_fp32"] == 1.25 and kept.metrics["ms_per_image"] == 8.0
    assert kept.metrics["engine"] == "onnxruntime" and kept.metrics["max_logit_difference"] < 1e-4


def test_measure_ms_times_every_predictor_and_restores_torch_threads(fp32_model: torch.nn.Module,
                                                                     fp32_onnx: bytes) -> None:
    # GIVEN torch at 1 thread, and both engines / WHEN timed at 2 threads
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = variants.measure_ms({"fp32": TorchPredictor(fp32_model, 1), "graph": OnnxPredictor(fp32_onnx, 1)},
                                      probe(1, 0), 2, rounds=2)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    # THEN each has a positive time, and torch's count is back to what it was
    assert set(timings) == {"fp32", "graph"} and all(ms > 0 for ms in timings.values())
    assert after == 1


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
    assert inputs[0].shape == (3, 8, 8) and inputs[0].dtype == np.float32
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
    # GIVEN an int8 graph that agrees with fp32 on 97% of held-out images (the real case: functional tests)
    monkeypatch.setattr(variants, "agreement",
                        lambda reference, candidate: variants.Agreement(100, 0.97, 0.99, 5))
    # WHEN the variants are built with calibration inputs
    kept, figures, refused = variants.build_variants(
        fp32_model.state_dict(), ARCH, CLASSES, Preprocessing(size=(SIZE, SIZE)), tmp_path,
        calibration=list(probe(8, 3)), threads=1)
    # THEN int8 is refused with its figures, nothing is kept, and fp32's time is still recorded
    assert kept == [] and "int8" not in figures and figures["fp32"]["ms_per_image"] > 0
    assert refused["int8"] == ("int8 refused: top-1 agreement 97.0% (needs >= 99%), top-5 overlap 99.0% "
                               "(needs >= 95%) on 100 held-out images")
    assert not (tmp_path / variants.VARIANT_FILES["int8"]).exists()


def test_variants_need_a_fixed_input_size(fp32_model: torch.nn.Module, tmp_path: Path) -> None:
    # GIVEN preprocessing that resizes the shorter side without a crop (every image its own size)
    spec = Preprocessing(resize_mode="shorter_side", size=(SIZE,))
    # WHEN both variants are asked for / THEN both are refused, saying why, and fp32 is still timed
    kept, figures, refused = variants.build_variants(
        fp32_model.state_dict(), ARCH, CLASSES, spec, tmp_path, calibration=list(probe(8, 3)), graph=True,
        threads=1)
    assert kept == [] and set(refused) == {"int8", "fp32-graph"}
    assert all("fixed input size" in reason for reason in refused.values())
    assert figures["fp32"]["ms_per_image"] > 0
