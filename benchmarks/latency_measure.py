"""The measurements themselves: warm requests, a batch, and a cold start in a fresh process.

Each function returns plain figures; `benchmarks.latency` decides what to run and writes them up.
Warm series discard their first requests (thread pools and allocator caches settle) and then
record every request, so p99 shows the slow ones too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.exceptions import LatencyBenchmarkError
from benchmarks.latency_model import ModelRef
from benchmarks.latency_stats import summarize, summarize_steps
from handler.classifier import Classifier

REPO_ROOT = Path(__file__).resolve().parents[1]
COLD_CHILD_TIMEOUT_S = 300.0
HANDLER_STEPS = ("decode", "preprocess", "inference")


@dataclass(frozen=True)
class WarmSeries:
    """Samples of one configuration: end-to-end ms and per-step ms for each request."""

    end_to_end_ms: tuple[float, ...]
    steps: tuple[dict[str, float], ...]

    def summary(self) -> dict[str, float]:
        return summarize(self.end_to_end_ms)

    def step_summary(self) -> dict[str, dict[str, float]]:
        return summarize_steps(self.steps)


def step_sample(timing: Mapping[str, Any], end_to_end_ms: float) -> dict[str, float]:
    """One request's steps from the handler's `timing_ms`, plus derived ones the report compares.

    `decode_preprocess` is issue 8's decode target; `handler` is the handler's own total and
    `outside_handler` what the path adds around it (the runtime, the emulator, HTTP, base64).
    """
    sample = {step: float(timing[step]) for step in HANDLER_STEPS if step in timing}
    if "decode" in sample and "preprocess" in sample:
        sample["decode_preprocess"] = sample["decode"] + sample["preprocess"]
    if "total" in timing:
        sample["handler"] = float(timing["total"])
        sample["outside_handler"] = max(0.0, end_to_end_ms - float(timing["total"]))
    sample["end_to_end"] = end_to_end_ms
    return sample


def warm_series(request: Callable[[bytes], tuple[float, Mapping[str, Any]]], photo: bytes,
                samples: int, warmup: int) -> WarmSeries:
    """Send `warmup` + `samples` requests through `request` (returns ms and `timing_ms`); keep the last."""
    for _ in range(warmup):
        request(photo)
    totals, steps = [], []
    for _ in range(samples):
        elapsed_ms, timing = request(photo)
        totals.append(elapsed_ms)
        steps.append(step_sample(timing, elapsed_ms))
    return WarmSeries(tuple(totals), tuple(steps))


def classifier_request(classifier: Classifier) -> Callable[[bytes], tuple[float, Mapping[str, Any]]]:
    """A request straight to `Classifier.classify`, timed around the call."""
    def request(photo: bytes) -> tuple[float, Mapping[str, Any]]:
        start = time.perf_counter()
        body = classifier.classify(photo)
        return (time.perf_counter() - start) * 1000.0, body["timing_ms"]
    return request


def batch_per_image_ms(classifier: Classifier, photo: bytes, batch_size: int, repeats: int) -> float | None:
    """Median ms per image of `classify_batch` on `batch_size` copies; None without a batch API."""
    classify_batch = getattr(classifier, "classify_batch", None)
    if classify_batch is None:
        return None
    items = [photo] * batch_size
    classify_batch(items)  # warm-up: a new batch shape sets up its own kernels
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        classify_batch(items)
        times.append((time.perf_counter() - start) * 1000.0 / batch_size)
    return summarize(times)["p50_ms"]


@dataclass(frozen=True)
class ChildColdStart:
    """One fresh-process cold start: parts in ms, peak RSS and what the child imported."""

    parts_ms: dict[str, float]
    total_ms: float
    peak_rss_mb: float
    torchvision_imported: bool
    variant: str

    def to_dict(self) -> dict[str, Any]:
        return {"parts_ms": self.parts_ms, "total_ms": round(self.total_ms, 2), "peak_rss_mb": self.peak_rss_mb,
                "torchvision_imported": self.torchvision_imported, "variant": self.variant}


def cold_start_child(model: ModelRef, variant: str | None, threads: int, photo: Path,
                     largest: Path | None) -> ChildColdStart:
    """Run `benchmarks.latency_cold` in a fresh interpreter and read its figures.

    `variant` None lets the loader choose, as the handler does without MODEL_VARIANT.
    """
    command = [sys.executable, "-m", "benchmarks.latency_cold", "--root", str(model.root), "--name", model.name,
               "--version", model.version, "--threads", str(threads), "--photo", str(photo)]
    if variant is not None:
        command += ["--variant", variant]
    if largest is not None:
        command += ["--largest", str(largest)]
    spawned = time.time()
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=COLD_CHILD_TIMEOUT_S,
                              cwd=REPO_ROOT, check=False)  # -m finds this checkout's packages from cwd
    except subprocess.TimeoutExpired as exc:
        raise LatencyBenchmarkError(f"the cold-start child took over {COLD_CHILD_TIMEOUT_S:.0f} s") from exc
    total_ms = (time.perf_counter() - start) * 1000.0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LatencyBenchmarkError(f"the cold-start child failed (exit {proc.returncode}): {last}")
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise LatencyBenchmarkError(f"the cold-start child printed no JSON: {proc.stdout[-200:]!r}") from exc
    parts = {"python_start": round(max(0.0, (data["started_epoch"] - spawned) * 1000.0), 3)}
    parts.update({k: float(v) for k, v in data["parts_ms"].items()})
    return ChildColdStart(parts_ms=parts, total_ms=total_ms, peak_rss_mb=float(data["peak_rss_mb"]),
                          torchvision_imported=bool(data["torchvision_imported"]), variant=str(data["variant"]))


def median_parts(samples: Sequence[ChildColdStart]) -> dict[str, float]:
    """Per part, the median over cold starts (each part on its own)."""
    return {part: stats["p50_ms"] for part, stats in summarize_steps(s.parts_ms for s in samples).items()}
