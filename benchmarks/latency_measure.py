"""The measurements themselves: warm requests, a direct-invocation batch, and a fresh-process cold start.

Each function returns plain figures; `benchmarks.latency` decides what to run and writes them up.
Warm series discard their first requests (thread pools and allocator caches settle) and then
record every request, so p99 shows the slow ones too.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.exceptions import LatencyBenchmarkError
from benchmarks.latency_model import ModelRef
from benchmarks.latency_stats import summarize, summarize_steps
from handler.classifier import Classifier

REPO_ROOT = Path(__file__).resolve().parents[1]
COLD_CHILD_TIMEOUT_S = 300.0
HANDLER_STEPS = ("decode", "preprocess", "inference")
K = TypeVar("K")


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


Request = Callable[[bytes], tuple[float, Mapping[str, Any]]]
"""One request: photo bytes in, (ms as the caller saw it, the handler's `timing_ms`) out."""


def warm_series(request: Request, photo: bytes, samples: int, warmup: int) -> WarmSeries:
    """Send `warmup` + `samples` requests through `request`; keep the last `samples`."""
    return interleaved_series({None: (request, photo)}, samples, warmup, rounds=1)[None]


def interleaved_series(configurations: Mapping[K, tuple[Request, bytes]], samples: int, warmup: int,
                       rounds: int, between_rounds: Callable[[], None] | None = None) -> dict[K, WarmSeries]:
    """`samples` recorded requests per configuration, spread over `rounds` that visit each in turn.

    On a shared host, load comes in bursts of a second or more. Taken one after the other, a
    configuration whose 30 requests fall in a burst has its whole p50 inflated, and the verdict
    depends on when it ran; spread over rounds, a burst lands on a share of every configuration's
    samples, which the p50 looks past unless the host is busy for most of the run. Each
    configuration gets `warmup` discarded requests before its first round and one before each
    later round (the switch from another model leaves its thread pool idle and its caches cold,
    which a function serving one model never sees). `between_rounds` runs after each round.
    """
    rounds = max(1, min(rounds, samples))
    shares = [samples // rounds + (1 if i < samples % rounds else 0) for i in range(rounds)]
    totals: dict[K, list[float]] = {key: [] for key in configurations}
    steps: dict[K, list[dict[str, float]]] = {key: [] for key in configurations}
    for index, share in enumerate(shares):
        for key, (request, photo) in configurations.items():
            for _ in range(warmup if index == 0 else 1):
                request(photo)
            for _ in range(share):
                elapsed_ms, timing = request(photo)
                totals[key].append(elapsed_ms)
                steps[key].append(step_sample(timing, elapsed_ms))
        if between_rounds is not None:
            between_rounds()
    return {key: WarmSeries(tuple(totals[key]), tuple(steps[key])) for key in configurations}


def classifier_request(classifier: Classifier) -> Request:
    """A request straight to `Classifier.classify`, timed around the call."""
    def request(photo: bytes) -> tuple[float, Mapping[str, Any]]:
        start = time.perf_counter()
        body = classifier.classify(photo)
        return (time.perf_counter() - start) * 1000.0, body["timing_ms"]
    return request


Invoke = Callable[[dict[str, Any]], tuple[float, dict[str, Any]]]
"""A direct invocation (`aws lambda invoke`): event in, (ms as the caller saw it, the answer) out."""


def direct_batch(invoke: Invoke, photo: bytes, batch_size: int, repeats: int) -> dict[str, Any]:
    """Throughput of one `{"images": [...]}` invocation of `batch_size` copies vs `{"image": ...}` ones.

    Both go through the same path (direct invocation of the real handler), so the ratio is what
    batching buys a caller: single-request p50 / (batch p50 / batch size). Singles are
    `batch_size x repeats` requests, batches `repeats`, after one discarded request of each shape
    (a new batch shape sets up its own kernels).
    """
    encoded = base64.b64encode(photo).decode("ascii")
    single, batch = {"image": encoded}, {"images": [encoded] * batch_size}
    _answered(invoke(single)[1], 1)
    _answered(invoke(batch)[1], batch_size)
    singles, batches = [], []
    inference: dict[str, list[float]] = {"single": [], "batch": []}  # the handler's own inference step
    for _ in range(max(1, repeats)):
        for _ in range(batch_size):
            elapsed_ms, body = invoke(single)
            _answered(body, 1)
            singles.append(elapsed_ms)
            _inference_ms(body, inference["single"])
        elapsed_ms, body = invoke(batch)
        _answered(body, batch_size)
        batches.append(elapsed_ms)
        _inference_ms(body, inference["batch"])
    single_p50 = summarize(singles)["p50_ms"]
    batch_p50 = summarize(batches)["p50_ms"]
    per_image = batch_p50 / batch_size
    figures: dict[str, Any] = {
        "batch_size": batch_size, "path": "direct invocation", "single_p50_ms": round(single_p50, 3),
        "batch_p50_ms": round(batch_p50, 3), "per_image_ms": round(per_image, 3),
        "speedup": single_p50 / per_image, "singles": len(singles), "batches": len(batches)}
    for shape, values in inference.items():  # where the time goes: the forward pass vs the rest
        if values:
            figures[f"{shape}_inference_p50_ms"] = round(summarize(values)["p50_ms"], 3)
    return figures


def _inference_ms(body: Mapping[str, Any], into: list[float]) -> None:
    value = (body.get("timing_ms") or {}).get("inference")
    if isinstance(value, int | float):
        into.append(float(value))


def _answered(body: Mapping[str, Any], expected: int) -> None:
    """A batch answer must hold `expected` predictions, a single answer one; else the figure is void."""
    results = body.get("results") if expected > 1 else [body]
    if not isinstance(results, list) or len(results) != expected or \
            not all(isinstance(r, dict) and "predictions" in r for r in results):
        raise LatencyBenchmarkError(f"a direct invocation did not answer {expected} prediction(s): "
                                    f"{json.dumps(body)[:300]}")


@dataclass(frozen=True)
class ChildColdStart:
    """One fresh-process cold start: parts in ms, peak RSS, the engine and what the child imported."""

    parts_ms: dict[str, float]
    total_ms: float
    peak_rss_mb: float
    torchvision_imported: bool
    variant: str
    engine: str
    torch_imported: bool

    def to_dict(self) -> dict[str, Any]:
        return {"parts_ms": self.parts_ms, "total_ms": round(self.total_ms, 2), "peak_rss_mb": self.peak_rss_mb,
                "variant": self.variant, "engine": self.engine, "torch_imported": self.torch_imported,
                "torchvision_imported": self.torchvision_imported}


def cold_start_child(model: ModelRef, variant: str | None, threads: int, photo: Path,
                     largest: Path | None) -> ChildColdStart:
    """Run `benchmarks.latency_cold` in a fresh interpreter and read its figures.

    `variant` None leaves MODEL_VARIANT unset: the handler chooses, as deployed. The child imports
    the engine of the variant it is expected to serve first (`ModelRef.engine`).
    """
    expected = variant or model.served_variant
    command = [sys.executable, "-m", "benchmarks.latency_cold", "--root", str(model.root), "--name", model.name,
               "--version", model.version, "--threads", str(threads), "--photo", str(photo),
               "--engine", model.engine(expected)]
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
                          torchvision_imported=bool(data["torchvision_imported"]), variant=str(data["variant"]),
                          engine=str(data["engine"]), torch_imported=bool(data["torch_imported"]))


def median_parts(samples: Sequence[ChildColdStart]) -> dict[str, float]:
    """Per part, the median over cold starts (each part on its own)."""
    return {part: stats["p50_ms"] for part, stats in summarize_steps(s.parts_ms for s in samples).items()}
