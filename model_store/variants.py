"""Faster weights variants of a version, made and judged at publish time, never at cold start.

- `fp32`: `model.safetensors`, format `safetensors`; always published.
- `int8`: `model-int8.safetensors`, format `safetensors-int8-<engine>`; published when calibration
  images were given and, on held-out ones, its top-1 agrees with fp32's on >= 99% of images and
  its top-5 overlaps fp32's by >= 95%.
- `fp32-graph`: `model-graph.torchscript`, format `torchscript`; published when asked for and
  >= 10% faster than eager fp32, measured at publish.

A variant that fails its gate is refused with a `VariantError` carrying the figures; publishing
goes on without it (fp32 is always published). Each kept variant is saved, loaded back the way
serving loads it, and checked against what was judged, so the stored file is the one that passed.
The figures (agreement, milliseconds per image, speed-up) go into the manifest's
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

import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from model_store.exceptions import SourceError, VariantError
from model_store.manifest import Architecture, Preprocessing, WeightsFile
from model_store.preprocess import draft_size, to_tensor
from model_store.resnet import ResNet, build_model

FP32, INT8, GRAPH = "fp32", "int8", "fp32-graph"
PREFERENCE = (INT8, GRAPH, FP32)
VARIANT_FILES = {INT8: "model-int8.safetensors", GRAPH: "model-graph.torchscript"}
MIN_TOP1_AGREEMENT = 0.99
MIN_TOP5_OVERLAP = 0.95
MIN_GRAPH_SPEEDUP = 1.10
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


def agreement(reference: Tensor, candidate: Tensor, k: int = 5) -> Agreement:
    """Compare two `[N, classes]` logit tensors: top-1 agreement and mean top-k overlap."""
    if reference.shape != candidate.shape or reference.dim() != 2 or reference.shape[0] == 0:
        raise VariantError(f"cannot compare logits of shapes {list(reference.shape)} "
                           f"and {list(candidate.shape)}")
    k = min(k, reference.shape[1])
    top1 = (reference.argmax(dim=1) == candidate.argmax(dim=1)).double().mean().item()
    ref_top, cand_top = reference.topk(k, dim=1).indices, candidate.topk(k, dim=1).indices
    shared = (ref_top.unsqueeze(2) == cand_top.unsqueeze(1)).any(dim=2).double().sum(dim=1) / k
    return Agreement(images=int(reference.shape[0]), top1=top1, top5=shared.mean().item(), k=k)


# --- calibration images -------------------------------------------------------------------------

def calibration_inputs(source: CalibrationArg, spec: Preprocessing) -> list[Tensor]:
    """The model inputs (`[3, H, W]`, serving preprocessing) of a `--calibration` directory or image list.

    A directory's images are read sorted by path (subdirectories too, so an ImageFolder works),
    at most MAX_CALIBRATION_IMAGES of them, one at a time (only the small tensors are kept).
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
        inputs = [to_tensor(image.convert("RGB"), spec) for image in list(source)[:MAX_CALIBRATION_IMAGES]]
        where = "the calibration images given"
    if len(inputs) < MIN_CALIBRATION_IMAGES:
        raise SourceError(f"int8 calibration needs at least {MIN_CALIBRATION_IMAGES} images; "
                          f"found {len(inputs)} in {where}")
    return inputs


def split_calibration(inputs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(calibration, held out): every HELD_OUT_EVERY-th input is held out to judge the result."""
    held = [t for i, t in enumerate(inputs) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    calib = [t for i, t in enumerate(inputs) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return calib, held


def _read_input(path: Path, spec: Preprocessing) -> Tensor:
    """Decode as serving does (large JPEGs reduced toward the input, EXIF orientation, RGB), preprocess."""
    width, height = draft_size(spec)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG" and image.width >= 2 * width and image.height >= 2 * height:
                image.draft("RGB", (width, height))
            image.load()
            return to_tensor(ImageOps.exif_transpose(image).convert("RGB"), spec)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SourceError(f"calibration image {path} cannot be read: {exc}") from exc


# --- making the variants ------------------------------------------------------------------------

def build_variants(
    state_dict: Mapping[str, Tensor],
    arch: Architecture,
    num_classes: int,
    example: Tensor,
    workdir: Path,
    *,
    calibration: Sequence[Tensor] = (),
    graph: bool = False,
    engine: str | None = None,
    threads: int | None = None,
    say: Say = lambda message: None,
) -> tuple[list[VariantFile], dict[str, Any], dict[str, str]]:
    """Make every asked-for variant that passes its gate (`example`: one input batch `[1, 3, H, W]`).

    Returns (kept variant files, `metrics["variants"]`, `metrics["refused_variants"]`). The fp32
    time per image is always in the figures: it is what every speed-up is measured against.
    """
    threads = threads or min(DEFAULT_THREADS, _cpus())
    model = _fp32_model(state_dict, arch, num_classes)
    kept: list[VariantFile] = []
    refused: dict[str, str] = {}
    if calibration:
        try:
            kept.append(make_int8(model, arch, num_classes, calibration, example, workdir,
                                  engine=engine, threads=threads, say=say))
        except VariantError as exc:
            refused[INT8] = str(exc)
            say(f"int8 variant refused: {exc}")
    if graph:
        try:
            kept.append(make_graph(model, example, workdir, threads=threads, say=say))
        except VariantError as exc:
            refused[GRAPH] = str(exc)
            say(f"fp32-graph variant not kept: {exc}")
    eager = [v.metrics["fp32_ms_per_image"] for v in kept]
    fp32_ms = min(eager) if eager else measure_ms({FP32: model}, example, threads)[FP32]
    figures: dict[str, Any] = {FP32: {"ms_per_image": fp32_ms, "threads": threads}}
    figures.update({v.name: v.metrics for v in kept})
    return kept, figures, refused


def make_int8(model: ResNet, arch: Architecture, num_classes: int, inputs: Sequence[Tensor], example: Tensor,
              workdir: Path, *, engine: str | None, threads: int, say: Say) -> VariantFile:
    """Calibrate, judge on held-out images, save, reload as serving does, time. VariantError if refused."""
    from model_store.quantize import (
        default_engine,
        int8_format,
        load_int8,
        quantize_static,
        save_int8,
        using_engine,
    )

    engine = engine or default_engine()
    calib, held = split_calibration(inputs)
    say(f"int8 ({engine}): calibrating on {len(calib)} images, judging on {len(held)} held-out images")
    with using_engine(engine):
        quantized = quantize_static(model, _batches(calib), engine)
        reference, candidate = _logits(model, held), _logits(quantized, held)
        result = agreement(reference, candidate)
        say(f"int8 agreement with fp32: {result.describe()}")
        if not result.passes:
            raise VariantError(f"int8 refused: {result.describe()}")
        path = workdir / VARIANT_FILES[INT8]
        save_int8(quantized, path, engine)
        reloaded = load_int8(arch, num_classes, path, engine)
        if not torch.equal(_logits(reloaded, held[:_BATCH]), candidate[:_BATCH]):
            raise VariantError("int8 refused: the saved file does not reproduce the judged network exactly")
        timings = measure_ms({FP32: model, INT8: reloaded}, example, threads)
    say(f"int8: {timings[INT8]:.1f} ms per image vs fp32 {timings[FP32]:.1f} ms at {threads} thread(s)")
    metrics = {"engine": engine, "calibration_images": len(calib), **result.to_dict(),
               "ms_per_image": timings[INT8], "speedup_vs_fp32": round(timings[FP32] / timings[INT8], 3),
               "threads": threads, "fp32_ms_per_image": timings[FP32]}
    return VariantFile(INT8, path, int8_format(engine), metrics)


def make_graph(model: ResNet, example: Tensor, workdir: Path, *, threads: int, say: Say) -> VariantFile:
    """Trace and freeze, check it computes what eager does, keep it only if >= 10% faster."""
    from model_store.checksums import sha256_file
    from model_store.graph import GRAPH_FORMAT, load_graph, save_graph, trace_frozen

    say("fp32-graph: tracing and freezing a TorchScript graph")
    path = workdir / VARIANT_FILES[GRAPH]
    save_graph(trace_frozen(model, example), path)
    graph = load_graph(path, WeightsFile(file=path.name, format=GRAPH_FORMAT, sha256=sha256_file(path),
                                         size=path.stat().st_size))
    probe = torch.rand((2, *example.shape[1:]), generator=torch.Generator().manual_seed(1))
    expected, got = _logits(model, [*probe]), _logits(graph, [*probe])
    scale = max(1.0, expected.abs().max().item())
    difference = (got - expected).abs().max().item()
    if not difference <= 1e-3 * scale:
        raise VariantError(f"the frozen graph's logits differ from eager by {difference:.2g}")
    timings = measure_ms({FP32: model, GRAPH: graph}, example, threads)
    speedup = timings[FP32] / timings[GRAPH]
    say(f"fp32-graph: {timings[GRAPH]:.1f} ms per image vs eager {timings[FP32]:.1f} ms "
        f"({speedup:.2f}x) at {threads} thread(s)")
    if speedup < MIN_GRAPH_SPEEDUP:
        path.unlink(missing_ok=True)
        raise VariantError(f"{timings[GRAPH]:.1f} ms per image vs eager {timings[FP32]:.1f} ms is a "
                           f"{speedup:.2f}x speed-up at {threads} thread(s); a graph is kept only from "
                           f"{MIN_GRAPH_SPEEDUP:.2f}x")
    metrics = {"ms_per_image": timings[GRAPH], "speedup_vs_fp32": round(speedup, 3), "threads": threads,
               "fp32_ms_per_image": timings[FP32]}
    return VariantFile(GRAPH, path, GRAPH_FORMAT, metrics)


def measure_ms(models: Mapping[str, Callable[[Tensor], Tensor]], example: Tensor, threads: int,
               rounds: int = _TIMING_ROUNDS) -> dict[str, float]:
    """Best-of-`rounds` milliseconds per call of each model on `example`, interleaved.

    Interleaving and taking the minimum keep a shared machine's load from favouring one model:
    whatever else runs slows every model's slow rounds, not their best ones.
    """
    best = {name: math.inf for name in models}
    with torch_threads(threads), torch.inference_mode():
        for _ in range(_TIMING_WARMUP):
            for fn in models.values():
                fn(example)
        for _ in range(rounds):
            for name, fn in models.items():
                start = time.perf_counter()
                fn(example)
                best[name] = min(best[name], (time.perf_counter() - start) * 1000.0)
    return {name: round(ms, 3) for name, ms in best.items()}


def _fp32_model(state_dict: Mapping[str, Tensor], arch: Architecture, num_classes: int) -> ResNet:
    model = build_model(arch, num_classes, device="meta")
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return model.eval()


def _logits(model: Callable[[Tensor], Tensor] | nn.Module, inputs: Sequence[Tensor]) -> Tensor:
    with torch.inference_mode():
        return torch.cat([model(batch) for batch in _batches(inputs)]) if inputs else torch.empty(0)


def _batches(inputs: Sequence[Tensor]) -> Iterator[Tensor]:
    for start in range(0, len(inputs), _BATCH):
        yield torch.stack(list(inputs[start:start + _BATCH]))


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with `threads` intra-op threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cpus() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
