"""Faster variants of a version, made and judged at publish time, never at cold start.

Both are ONNX graphs of the fp32 network (`model_store.onnx_export`), run by ONNX Runtime, so a
process serving them never imports torch:

- `fp32`: `model.safetensors`, format `safetensors`; always published, run by torch (eager).
- `int8`: `model-int8.onnx`, format `onnx-int8`: static post-training quantization in QDQ form
  (`model_store.quantize`). Published when calibration images were given and, on held-out ones,
  its top-1 agrees with torch fp32's on >= 99% of images and its top-5 overlaps fp32's by >= 95%.
- `fp32-graph`: `model-fp32.onnx`, format `onnx-fp32`: the exported graph itself. Published when
  asked for, when its logits match torch fp32's within `GRAPH_TOLERANCE`, and when it runs
  >= 10% faster than torch eager fp32 at the publish thread count.

A variant that fails its gate is refused with a `VariantError` carrying the figures; publishing
goes on without it (fp32 is always published). The bytes judged are the bytes stored: each
graph is serialized once, run from those bytes to be judged and timed, and written as is. The
figures (agreement, milliseconds per image, speed-up) go into the manifest's
`metrics["variants"]`; refusals into `metrics["refused_variants"]`.

Serving takes `PREFERENCE` order (the fastest present and runnable) unless `MODEL_VARIANT` says
otherwise; see `model_store.loader.choose_variant`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from model_store.exceptions import SourceError, VariantError
from model_store.manifest import GRAPH_FORMAT, INT8_FORMAT, Architecture, Preprocessing
from model_store.predictor import OnnxPredictor, Predictor, TorchPredictor, available_cpus
from model_store.preprocess import draft_size, to_array
from model_store.resnet import ResNet, build_model

FP32, INT8, GRAPH = "fp32", "int8", "fp32-graph"
PREFERENCE = (INT8, GRAPH, FP32)
VARIANT_FILES = {INT8: "model-int8.onnx", GRAPH: "model-fp32.onnx"}
MIN_TOP1_AGREEMENT = 0.99
MIN_TOP5_OVERLAP = 0.95
MIN_GRAPH_SPEEDUP = 1.10
GRAPH_TOLERANCE = 1e-3
"""Largest |graph - torch| logit difference, relative to max(1, largest |logit|), for fp32-graph.

The two engines add the same products in different orders (and ONNX Runtime folds BatchNorm
into the convolutions), which moves fp32 logits by about 1e-6 relative: 4e-6 on logits up to 11
for the demo ResNet-50, 1e-7 for a small ResNet-18. 1e-3 leaves a 100x margin for other CPUs'
kernels yet is far below what an export mistake gives (a wrong layer moves logits by their own size)."""
MIN_CALIBRATION_IMAGES = 8
MAX_CALIBRATION_IMAGES = 400
HELD_OUT_EVERY = 4  # images 3, 7, 11, ... (sorted by file name) are held out; the rest calibrate
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
DEFAULT_THREADS = 2  # what Lambda gives a function of up to 3,008 MB
_BATCH = 16
_TIMING_ROUNDS = 9
_TIMING_WARMUP = 3

CalibrationArg = str | Path | Sequence[Image.Image] | None
Say = Callable[[str], None]


@dataclass(frozen=True)
class VariantFile:
    """One kept variant: where its file is in the publish work directory, and its figures."""

    name: str
    path: Path
    format: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Agreement:
    """How a candidate's rankings match fp32's on held-out images."""

    images: int
    top1: float  # share of images whose top-1 class is the same
    top5: float  # mean share of fp32's top-k classes also in the candidate's top-k
    k: int

    @property
    def passes(self) -> bool:
        return self.top1 >= MIN_TOP1_AGREEMENT and self.top5 >= MIN_TOP5_OVERLAP

    def describe(self) -> str:
        return (f"top-1 agreement {self.top1:.1%} (needs >= {MIN_TOP1_AGREEMENT:.0%}), top-{self.k} overlap "
                f"{self.top5:.1%} (needs >= {MIN_TOP5_OVERLAP:.0%}) on {self.images} held-out images")

    def to_dict(self) -> dict[str, Any]:
        return {"held_out_images": self.images, "top1_agreement": round(self.top1, 4),
                f"top{self.k}_overlap": round(self.top5, 4)}


def agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> Agreement:
    """Compare two `[N, classes]` logit arrays: top-1 agreement and mean top-k overlap."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape or reference.ndim != 2 or reference.shape[0] == 0:
        raise VariantError(f"cannot compare logits of shapes {list(reference.shape)} "
                           f"and {list(candidate.shape)}")
    k = min(k, reference.shape[1])
    top1 = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    ref_top = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    cand_top = np.argsort(-candidate, axis=1, kind="stable")[:, :k]
    shared = (ref_top[:, :, None] == cand_top[:, None, :]).any(axis=2).sum(axis=1) / k
    return Agreement(images=int(reference.shape[0]), top1=top1, top5=float(shared.mean()), k=k)


# --- calibration images -------------------------------------------------------------------------

def calibration_inputs(source: CalibrationArg, spec: Preprocessing) -> list[np.ndarray]:
    """The model inputs (`[3, H, W]` float32, serving preprocessing) of a `--calibration` directory or image list.

    A directory's images are read sorted by path (subdirectories too, so an ImageFolder works),
    at most MAX_CALIBRATION_IMAGES of them, one at a time (only the small arrays are kept).
    Raises SourceError when the directory is missing, an image is unreadable, or fewer than
    MIN_CALIBRATION_IMAGES are found.
    """
    if source is None:
        return []
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise SourceError(f"calibration directory {folder} does not exist or is not a directory")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        inputs = [_read_input(path, spec) for path in files[:MAX_CALIBRATION_IMAGES]]
        where = f"{folder} (files ending {', '.join(IMAGE_SUFFIXES)})"
    else:
        inputs = [to_array(image.convert("RGB"), spec) for image in list(source)[:MAX_CALIBRATION_IMAGES]]
        where = "the calibration images given"
    if len(inputs) < MIN_CALIBRATION_IMAGES:
        raise SourceError(f"int8 calibration needs at least {MIN_CALIBRATION_IMAGES} images; "
                          f"found {len(inputs)} in {where}")
    return inputs


def split_calibration(inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration, held out): every HELD_OUT_EVERY-th input is held out to judge the result."""
    held = [t for i, t in enumerate(inputs) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    calib = [t for i, t in enumerate(inputs) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return calib, held


def _read_input(path: Path, spec: Preprocessing) -> np.ndarray:
    """Decode as serving does (large JPEGs reduced toward the input, EXIF orientation, RGB), preprocess."""
    width, height = draft_size(spec)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG" and image.width >= 2 * width and image.height >= 2 * height:
                image.draft("RGB", (width, height))
            image.load()
            return to_array(ImageOps.exif_transpose(image).convert("RGB"), spec)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SourceError(f"calibration image {path} cannot be read: {exc}") from exc


# --- making the variants ------------------------------------------------------------------------

def build_variants(
    state_dict: Mapping[str, Tensor],
    arch: Architecture,
    num_classes: int,
    spec: Preprocessing,
    workdir: Path,
    *,
    calibration: Sequence[np.ndarray] = (),
    graph: bool = False,
    threads: int | None = None,
    say: Say = lambda message: None,
) -> tuple[list[VariantFile], dict[str, Any], dict[str, str]]:
    """Make every asked-for variant that passes its gate: int8 when `calibration` is given, `graph` when asked.

    Returns (kept variant files, `metrics["variants"]`, `metrics["refused_variants"]`). The fp32
    time per image is always in the figures: it is what every speed-up is measured against.
    Everything runs with `threads` intra-op threads (default: Lambda's 2, or fewer CPUs here),
    torch's count being restored afterwards.
    """
    threads = threads or min(DEFAULT_THREADS, available_cpus())
    kept: list[VariantFile] = []
    refused: dict[str, str] = {}
    with torch_threads(threads):
        fp32 = TorchPredictor(_fp32_model(state_dict, arch, num_classes), threads)
        example = _example(spec)
        makers: dict[str, Callable[[bytes, np.ndarray], VariantFile]] = {}
        if calibration:
            makers[INT8] = lambda graph_bytes, ex: make_int8(fp32, graph_bytes, calibration, ex, workdir,
                                                              threads=threads, say=say)
        if graph:
            makers[GRAPH] = lambda graph_bytes, ex: make_graph(fp32, graph_bytes, ex, workdir,
                                                               threads=threads, say=say)
        try:
            fp32_onnx = _export(fp32, example, spec, say) if makers else b""
        except VariantError as exc:  # no graph, no ONNX variant
            refused = {name: str(exc) for name in makers}
            say(f"{', '.join(makers)} refused: {exc}")
            makers = {}
        for name, make in makers.items():
            try:
                kept.append(make(fp32_onnx, example))
            except VariantError as exc:
                refused[name] = str(exc)
                say(f"{name} variant not kept: {exc}")
        eager = [v.metrics["fp32_ms_per_image"] for v in kept]
        fp32_ms = min(eager) if eager else measure_ms({FP32: fp32}, example, threads)[FP32]
    figures: dict[str, Any] = {FP32: {"engine": fp32.engine, "ms_per_image": fp32_ms, "threads": threads}}
    figures.update({v.name: v.metrics for v in kept})
    return kept, figures, refused


def make_int8(fp32: Predictor, fp32_onnx: bytes, inputs: Sequence[np.ndarray], example: np.ndarray,
              workdir: Path, *, threads: int, say: Say) -> VariantFile:
    """Quantize the graph calibrated on most `inputs`, judge it against torch fp32 on the rest, time it.

    Raises VariantError, with the figures, when the agreement gate refuses it.
    """
    from model_store.quantize import CALIBRATION_METHOD, quantize_int8

    calib, held = split_calibration(inputs)
    say(f"int8: calibrating ({CALIBRATION_METHOD}) on {len(calib)} images, "
        f"judging on {len(held)} held-out images")
    started = time.perf_counter()
    data = quantize_int8(fp32_onnx, calib)
    int8 = OnnxPredictor(data, threads)
    say(f"int8: quantized in {time.perf_counter() - started:.1f} s ({len(data) / 1e6:.1f} MB)")
    result = agreement(_logits(fp32, held), _logits(int8, held))
    say(f"int8 agreement with fp32: {result.describe()}")
    if not result.passes:
        raise VariantError(f"int8 refused: {result.describe()}")
    timings = measure_ms({FP32: fp32, INT8: int8}, example, threads)
    say(f"int8: {timings[INT8]:.1f} ms per image vs torch fp32 {timings[FP32]:.1f} ms "
        f"({timings[FP32] / timings[INT8]:.2f}x) at {threads} thread(s)")
    metrics = {"engine": int8.engine, "calibration_method": CALIBRATION_METHOD, "calibration_images": len(calib),
               **result.to_dict(), "ms_per_image": timings[INT8],
               "speedup_vs_fp32": round(timings[FP32] / timings[INT8], 3), "threads": threads,
               "fp32_ms_per_image": timings[FP32]}
    return VariantFile(INT8, _write(workdir / VARIANT_FILES[INT8], data), INT8_FORMAT, metrics)


def make_graph(fp32: Predictor, fp32_onnx: bytes, example: np.ndarray, workdir: Path, *, threads: int,
               say: Say) -> VariantFile:
    """Run the exported graph on ONNX Runtime: keep it if it computes torch's logits and is >= 10% faster."""
    graph = OnnxPredictor(fp32_onnx, threads)
    probe = _probe(2, example.shape[2:])
    expected, got = fp32(probe), graph(probe)
    scale = max(1.0, float(np.abs(expected).max()))
    difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else math.inf
    if not difference <= GRAPH_TOLERANCE * scale:
        raise VariantError(f"the ONNX graph's logits differ from torch's by {difference:.3g} "
                           f"(more than {GRAPH_TOLERANCE:g} x {scale:.3g})")
    timings = measure_ms({FP32: fp32, GRAPH: graph}, example, threads)
    speedup = timings[FP32] / timings[GRAPH]
    say(f"fp32-graph: {timings[GRAPH]:.1f} ms per image on ONNX Runtime vs torch eager {timings[FP32]:.1f} ms "
        f"({speedup:.2f}x) at {threads} thread(s)")
    if speedup < MIN_GRAPH_SPEEDUP:
        raise VariantError(f"{timings[GRAPH]:.1f} ms per image vs eager {timings[FP32]:.1f} ms is a "
                           f"{speedup:.2f}x speed-up at {threads} thread(s); a graph is kept only from "
                           f"{MIN_GRAPH_SPEEDUP:.2f}x")
    metrics = {"engine": graph.engine, "ms_per_image": timings[GRAPH], "speedup_vs_fp32": round(speedup, 3),
               "threads": threads, "fp32_ms_per_image": timings[FP32],
               "max_logit_difference": float(f"{difference:.3g}")}
    return VariantFile(GRAPH, _write(workdir / VARIANT_FILES[GRAPH], fp32_onnx), GRAPH_FORMAT, metrics)


def measure_ms(models: Mapping[str, Callable[[np.ndarray], np.ndarray]], example: np.ndarray, threads: int,
               rounds: int = _TIMING_ROUNDS) -> dict[str, float]:
    """Best-of-`rounds` milliseconds per call of each predictor on `example`, interleaved.

    Interleaving and taking the minimum keep a shared machine's load from favouring one model:
    whatever else runs slows every model's slow rounds, not their best ones. Each timed call
    follows an untimed call of the same predictor: right after one engine runs, its idle threads
    still spin for a moment and slow the other engine's next call (measured here on ResNet-50:
    torch 141 ms instead of 98, ONNX Runtime int8 23 ms instead of 15), which a process serving
    one engine never sees. torch runs with `threads` threads; each ONNX Runtime session was built
    with its own count.
    """
    best = {name: math.inf for name in models}
    with torch_threads(threads), torch.inference_mode():
        for _ in range(_TIMING_WARMUP):
            for fn in models.values():
                fn(example)
        for _ in range(rounds):
            for name, fn in models.items():
                fn(example)
                start = time.perf_counter()
                fn(example)
                best[name] = min(best[name], (time.perf_counter() - start) * 1000.0)
    return {name: round(ms, 3) for name, ms in best.items()}


def _export(fp32: TorchPredictor, example: np.ndarray, spec: Preprocessing, say: Say) -> bytes:
    """The fp32 network as ONNX bytes for the preprocessing's input size; VariantError if it has none."""
    from model_store.onnx_export import export_onnx

    if not spec.fixed_size:
        raise VariantError("an ONNX variant needs a fixed input size (an exact resize, or a crop); "
                           f"this preprocessing gives images of varying size: {spec}")
    height, width = example.shape[2:]
    started = time.perf_counter()
    data = export_onnx(fp32.module, height, width)
    say(f"exported the fp32 network to ONNX ({len(data) / 1e6:.1f} MB, input [N, 3, {height}, {width}]) "
        f"in {time.perf_counter() - started:.1f} s")
    return data


def _fp32_model(state_dict: Mapping[str, Tensor], arch: Architecture, num_classes: int) -> ResNet:
    model = build_model(arch, num_classes, device="meta")
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return model.eval()


def _example(spec: Preprocessing) -> np.ndarray:
    """One input `[1, 3, H, W]` at `spec.probe_size`."""
    return _probe(1, spec.probe_size)


def _probe(count: int, size: Sequence[int]) -> np.ndarray:
    generator = np.random.default_rng(count)
    return generator.random((count, 3, *size), dtype=np.float32)


def _logits(predictor: Callable[[np.ndarray], np.ndarray], inputs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([predictor(batch) for batch in _batches(inputs)])


def _batches(inputs: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    for start in range(0, len(inputs), _BATCH):
        yield np.stack(list(inputs[start:start + _BATCH]))


def _write(path: Path, data: bytes) -> Path:
    """Write atomically: a publish never uploads a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with `threads` intra-op threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
