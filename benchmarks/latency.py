"""`python -m benchmarks latency`: how long a prediction takes, cold and warm, and what it needs.

The run, in order (one progress line per group on stderr):
1. the model: the synced version named by --model-root/--model-name/--model-version, or the demo
   ResNet-50 published and synced into a scratch directory (no user data needed);
2. synthetic photos of about 0.3, 1 and 4 megapixels (`latency_images`);
3. cold starts in fresh processes (imports, model load, first prediction; peak RSS);
4. the roofline: fp32 matmul peak per thread count and the model's FLOPs;
5. warm requests straight to the `Classifier`, per Lambda size (thread count), variant and photo,
   and a batch;
6. the same through the emulator's Function URL, each runtime start doubling as a cold start;
7. the recommended memory size and issue 8's targets table (printed at the end).

It writes latency.json (`benchmarks.cost_latency` schema, read by `python -m benchmarks cost`)
and latency.md. `--quick` shrinks repetitions so the whole run takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.cost_latency import (
    DEFAULT_IMAGE,
    DEFAULT_VARIANT,
    ColdStart,
    LatencyReport,
    LatencyResult,
    save_latency,
)
from benchmarks.exceptions import LatencyBenchmarkError
from benchmarks.latency_emulator import ColdSample, EmulatedFunction, pinning_method
from benchmarks.latency_images import Photo, photo_set
from benchmarks.latency_machine import busy_note, load_average, machine_info, usable_cores
from benchmarks.latency_measure import (
    ChildColdStart,
    WarmSeries,
    batch_per_image_ms,
    classifier_request,
    cold_start_child,
    median_parts,
    warm_series,
)
from benchmarks.latency_model import ModelRef, demo_model, existing_model
from benchmarks.latency_report import render_markdown
from benchmarks.latency_roofline import Roofline, count_flops, matmul_gflops, torch_threads
from benchmarks.latency_sizing import SizeStep, measured_steps, plan_note, recommend_memory, size_plan
from benchmarks.latency_stats import median
from benchmarks.latency_targets import TARGET_MEMORY_MB, TargetFigures, evaluate, targets_table
from handler.classifier import Classifier
from model_store.exceptions import ModelStoreError

REPORT_JSON = "latency.json"
REPORT_MD = "latency.md"
DEFAULT_OUT = Path("benchmarks/reports")
LARGEST_IMAGE = "4mp"


@dataclass(frozen=True)
class RunSettings:
    """How much to measure: the full run or `--quick`."""

    quick: bool
    samples: int  # recorded requests per configuration
    warmup: int  # requests discarded before them
    cold_repeats: int  # fresh-process and emulator cold starts at the largest measured size
    matmul_repeats: int
    batch_size: int
    batch_repeats: int
    emulator_all_sizes: bool  # quick: the emulator runs only at the largest measured size

    @classmethod
    def choose(cls, quick: bool, samples: int | None = None) -> RunSettings:
        if quick:
            base = cls(quick=True, samples=5, warmup=1, cold_repeats=1, matmul_repeats=2, batch_size=4,
                       batch_repeats=2, emulator_all_sizes=False)
        else:
            base = cls(quick=False, samples=30, warmup=3, cold_repeats=3, matmul_repeats=5, batch_size=8,
                       batch_repeats=5, emulator_all_sizes=True)
        if samples is None:
            return base
        if samples < 1:
            raise LatencyBenchmarkError("--samples must be at least 1")
        return replace(base, samples=samples)

    def describe(self) -> dict[str, Any]:
        return {"mode": "quick" if self.quick else "full", **asdict(self)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the `latency` subcommand."""
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, emulator at one size only: about a minute on 2 cores")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"where to write {REPORT_JSON} and {REPORT_MD} (default: {DEFAULT_OUT})")
    parser.add_argument("--model-root", type=Path, metavar="DIR",
                        help="a model root holding a synced version (default: make the demo ResNet-50)")
    parser.add_argument("--model-name", metavar="NAME", help="with --model-root: the model's name")
    parser.add_argument("--model-version", metavar="VERSION", help="with --model-root: the version")
    parser.add_argument("--variant", action="append", metavar="NAME",
                        help="measure only this weights variant (repeatable; default: every variant "
                             "the manifest offers)")
    parser.add_argument("--samples", type=int, metavar="N",
                        help="recorded requests per configuration (default: 30, or 5 with --quick)")


def run(args: argparse.Namespace) -> int:
    """Measure, write latency.json and latency.md, print the targets table."""
    settings = RunSettings.choose(args.quick, args.samples)
    progress = Progress()
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LatencyBenchmarkError(f"cannot create {out}: {exc.strerror or exc}") from exc
    with tempfile.TemporaryDirectory(prefix="breedserve-latency-") as scratch:
        try:
            report = measure(args, settings, Path(scratch), progress)
        except ModelStoreError as exc:
            raise LatencyBenchmarkError(f"the model cannot be loaded: {exc}") from exc
    try:
        save_latency(report, out / REPORT_JSON)
        (out / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    except OSError as exc:
        raise LatencyBenchmarkError(f"cannot write the report into {out}: {exc.strerror or exc}") from exc
    progress(f"wrote {out / REPORT_JSON} and {out / REPORT_MD}")
    sys.stdout.write("Targets (issue 8; measured, never asserted):\n\n" + targets_table(report.targets) + "\n")
    busy = report.details["run"].get("busy")
    if busy:
        sys.stdout.write(f"\nWarning: {busy}.\n")
    if report.recommended_memory_mb is not None:
        sys.stdout.write(f"\nRecommended memory size: {report.recommended_memory_mb:,} MB "
                         f"({report.details['recommendation']['reason']})\n")
    return 0


class Progress:
    """One line per measurement group on stderr, with the time since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"latency [{time.perf_counter() - self.start:6.1f} s]: {message}", file=sys.stderr, flush=True)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Measurements:
    """Everything measured so far, gathered for the report."""

    results: list[LatencyResult] = field(default_factory=list)
    child_colds: list[ChildColdStart] = field(default_factory=list)
    emulator_colds: list[dict[str, Any]] = field(default_factory=list)
    emulator_rss_mb: float = 0.0
    batch: dict[str, Any] = field(default_factory=dict)

    def inference_p50(self, threads: int, image: str, path: str = "classifier") -> dict[str, float]:
        return {r.variant: r.steps["inference"]["p50_ms"] for r in self.results
                if r.threads == threads and r.image == image and r.path == path and "inference" in r.steps}

    def find(self, memory_mb: int, variant: str, image: str, path: str = "classifier") -> LatencyResult | None:
        return next((r for r in self.results if (r.memory_mb, r.variant, r.image, r.path)
                     == (memory_mb, variant, image, path)), None)


def measure(args: argparse.Namespace, settings: RunSettings, scratch: Path, progress: Progress) -> LatencyReport:
    """The whole run (see the module docstring); returns the report without writing it."""
    machine = machine_info()
    model = _model(args, scratch, progress)
    variants = _variants(model, args.variant)
    photos = photo_set()
    photo_paths = _write_photos(photos, scratch)
    progress("photos " + ", ".join(f"{p.label} {p.width}x{p.height} ({p.kilobytes:,.0f} KB)" for p in photos))
    cores = usable_cores()
    plan = size_plan(cores)
    steps = measured_steps(plan)
    top = steps[-1]
    # Issue 8's targets are for 2 threads (3,008 MB); a 1-core machine judges them at what it has.
    target_step = next((s for s in steps if s.memory_mb == TARGET_MEMORY_MB), top)
    headline_variant = DEFAULT_VARIANT if DEFAULT_VARIANT in variants else variants[0]
    photo_1mp = _photo(photos, DEFAULT_IMAGE)
    m = Measurements()

    for i in range(settings.cold_repeats):
        cold = cold_start_child(model, headline_variant, top.threads, photo_paths[photo_1mp.label],
                                photo_paths.get(LARGEST_IMAGE))
        m.child_colds.append(cold)
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in cold.parts_ms.items())
        progress(f"cold start {i + 1}/{settings.cold_repeats} in a fresh process: {parts} ms; "
                 f"peak RSS {cold.peak_rss_mb:,.0f} MB")

    gflops = {}
    for step in steps:
        gflops[step.threads] = matmul_gflops(step.threads, repeats=settings.matmul_repeats)
        progress(f"matmul peak at {step.threads} thread(s): {gflops[step.threads]:,.1f} GFLOP/s")

    roofline: Roofline | None = None
    for variant in variants:
        classifier = Classifier.from_root(model.root, model.name, version=model.version, variant=variant)
        if roofline is None:
            roofline = Roofline(_count_flops(model, classifier), gflops)
            progress(f"{model.manifest.arch.label}: {roofline.flops / 1e9:,.2f} GFLOP per image; roofline "
                     + ", ".join(f"{roofline.time_ms(t):,.1f} ms at {t} thread(s)" for t in sorted(gflops)))
        for step in steps:
            with torch_threads(step.threads):
                for photo in photos:
                    series = warm_series(classifier_request(classifier), photo.jpeg, settings.samples,
                                         settings.warmup)
                    m.results.append(_result(step, variant, photo, "classifier", series))
                    progress(_describe(m.results[-1]))
                if step == target_step and variant == headline_variant:
                    m.batch = _batch(classifier, photo_1mp, settings, m.find(step.memory_mb, variant, DEFAULT_IMAGE))
                    if m.batch:
                        progress(f"batch of {settings.batch_size}: {m.batch['per_image_ms']:,.1f} ms per image, "
                                 f"{m.batch['speedup']:.2f}x single requests")
        del classifier
        gc.collect()
    assert roofline is not None

    emulator_steps = steps if settings.emulator_all_sizes else (top,)
    for variant in variants:
        for step in emulator_steps:
            _emulator_runs(model, variant, step, photos, photo_1mp, settings, scratch, m, progress)
    for i in range(settings.cold_repeats - 1):
        with EmulatedFunction(model, headline_variant, top.memory_mb, top.threads, scratch) as function:
            _record_cold(m, function.cold_start(photo_1mp.jpeg), top, headline_variant, progress)
            m.emulator_rss_mb = max(m.emulator_rss_mb, function.peak_rss_mb())

    busy = busy_note(machine, cores)
    if busy:
        progress(busy)
    return _report(model, variants, photos, plan, top, target_step, headline_variant, roofline, machine,
                   settings, m, progress, cores)


def _model(args: argparse.Namespace, scratch: Path, progress: Progress) -> ModelRef:
    given = [args.model_root, args.model_name, args.model_version]
    if any(x is not None for x in given) and not all(x is not None for x in given):
        raise LatencyBenchmarkError("give --model-root, --model-name and --model-version together "
                                    "(or none of them, to measure the demo model)")
    if args.model_root is not None:
        model = existing_model(args.model_root, args.model_name, args.model_version)
        progress(f"model {model.name}/{model.version} from {model.root} ({model.manifest.arch.label})")
        return model
    progress("publishing and syncing the demo ResNet-50 (133 classes) into a scratch model root")
    model = demo_model(scratch)
    progress(f"model {model.name}/{model.version} ready in {model.root}")
    return model


def _variants(model: ModelRef, wanted: Sequence[str] | None) -> tuple[str, ...]:
    if not wanted:
        return model.variants
    missing = [v for v in wanted if v not in model.variants]
    if missing:
        raise LatencyBenchmarkError(f"{model.name}/{model.version} has no variant {', '.join(missing)}; "
                                    f"it has {', '.join(model.variants)}")
    return tuple(dict.fromkeys(wanted))


def _photo(photos: Sequence[Photo], label: str) -> Photo:
    return next(p for p in photos if p.label == label)


def _write_photos(photos: Sequence[Photo], scratch: Path) -> dict[str, Path]:
    paths = {}
    for photo in photos:
        path = scratch / f"photo-{photo.label}.jpg"
        path.write_bytes(photo.jpeg)
        paths[photo.label] = path
    return paths


def _count_flops(model: ModelRef, classifier: Classifier) -> int:
    """FLOPs from the fp32 network's layers (a quantized network's modules are not nn.Conv2d)."""
    fp32 = classifier if classifier.variant == "fp32" else Classifier.from_root(
        model.root, model.name, version=model.version, variant="fp32")
    return count_flops(fp32.model, model.manifest.preprocess.output_size)


def _result(step: SizeStep, variant: str, photo: Photo, path: str, series: WarmSeries) -> LatencyResult:
    summary = series.summary()
    return LatencyResult(memory_mb=step.memory_mb, threads=step.threads, variant=variant, image=photo.label,
                         path=path, p50_ms=summary["p50_ms"], p90_ms=summary["p90_ms"], p99_ms=summary["p99_ms"],
                         samples=len(series.end_to_end_ms), steps=series.step_summary())


def _describe(r: LatencyResult) -> str:
    steps = ", ".join(f"{name} {r.steps[name]['p50_ms']:,.1f}" for name in ("decode", "preprocess", "inference")
                      if name in r.steps)
    return (f"{r.path} {r.variant} {r.threads} thread(s) ({r.memory_mb:,} MB) {r.image}: "
            f"p50 {r.p50_ms:,.1f} / p90 {r.p90_ms:,.1f} / p99 {r.p99_ms:,.1f} ms ({steps} ms)")


def _batch(classifier: Classifier, photo: Photo, settings: RunSettings,
           single: LatencyResult | None) -> dict[str, Any]:
    per_image = batch_per_image_ms(classifier, photo.jpeg, settings.batch_size, settings.batch_repeats)
    if per_image is None or single is None:
        return {}
    return {"batch_size": settings.batch_size, "image": photo.label, "per_image_ms": per_image,
            "single_p50_ms": single.p50_ms, "speedup": single.p50_ms / per_image, "repeats": settings.batch_repeats}


def _emulator_runs(model: ModelRef, variant: str, step: SizeStep, photos: Sequence[Photo], first: Photo,
                   settings: RunSettings, scratch: Path, m: Measurements, progress: Progress) -> None:
    with EmulatedFunction(model, variant, step.memory_mb, step.threads, scratch) as function:
        _record_cold(m, function.cold_start(first.jpeg), step, variant, progress)
        for photo in photos:
            series = warm_series(function.predict, photo.jpeg, settings.samples, settings.warmup)
            m.results.append(_result(step, variant, photo, "emulator", series))
            progress(_describe(m.results[-1]))
        m.emulator_rss_mb = max(m.emulator_rss_mb, function.peak_rss_mb())


def _record_cold(m: Measurements, cold: ColdSample, step: SizeStep, variant: str, progress: Progress) -> None:
    m.emulator_colds.append({"memory_mb": step.memory_mb, "threads": step.threads, "variant": variant,
                             **cold.to_dict()})
    progress(f"emulator cold start ({step.memory_mb:,} MB, {variant}): init {cold.init_ms:,.0f} ms, "
             f"first response after {cold.first_response_ms:,.0f} ms")


def _report(model: ModelRef, variants: tuple[str, ...], photos: Sequence[Photo], plan: tuple[SizeStep, ...],
            top: SizeStep, target_step: SizeStep, headline_variant: str, roofline: Roofline,
            machine: dict[str, Any], settings: RunSettings, m: Measurements, progress: Progress,
            cores: int) -> LatencyReport:
    peak_rss = max(c.peak_rss_mb for c in m.child_colds)
    p50_by_memory = {r.memory_mb: r.p50_ms for r in m.results
                     if r.path == "classifier" and r.variant == headline_variant and r.image == DEFAULT_IMAGE}
    recommendation = recommend_memory(p50_by_memory, peak_rss)
    headline_colds = [c for c in m.emulator_colds
                      if c["memory_mb"] == top.memory_mb and c["variant"] == headline_variant]
    cold_start = ColdStart(
        init_ms=round(median([c["init_ms"] for c in headline_colds]), 2),
        first_response_ms=round(median([c["first_response_ms"] for c in headline_colds]), 2),
        parts_ms=median_parts(m.child_colds),
    )
    decode_pre = _decode_preprocess(m, target_step, headline_variant)
    targets = evaluate(TargetFigures(
        threads=target_step.threads, roofline=roofline,
        inference_p50_ms=m.inference_p50(target_step.threads, DEFAULT_IMAGE),
        decode_preprocess_p50_ms=decode_pre, cold_start_ms=cold_start.first_response_ms, peak_rss_mb=peak_rss,
        batch_speedup=m.batch.get("speedup"), batch_size=m.batch.get("batch_size"),
    ))
    roofline_data = roofline.to_dict()
    roofline_data["variants"] = [
        {"variant": r.variant, "threads": r.threads, "memory_mb": r.memory_mb,
         "inference_p50_ms": r.steps["inference"]["p50_ms"], "roofline_ms": round(roofline.time_ms(r.threads), 2),
         "ratio": round(roofline.ratio(r.steps["inference"]["p50_ms"], r.threads), 3)}
        for r in m.results if r.path == "classifier" and r.image == DEFAULT_IMAGE and "inference" in r.steps
    ]
    details = {
        "run": {**settings.describe(), "duration_s": round(progress.elapsed_s, 1),
                "load_average_at_end": load_average(), "busy": busy_note(machine, cores)},
        "model": model.describe(),
        "photos": [p.describe() for p in photos],
        "sizes": [s.to_dict() for s in plan],
        "sizes_note": plan_note(plan, cores),
        "target_threads": target_step.threads,
        "recommendation": {"memory_mb": recommendation.memory_mb, "reason": recommendation.reason,
                           "rule": recommendation.rule,
                           "basis": f"classifier path, {headline_variant}, {DEFAULT_IMAGE} photo, end-to-end p50"},
        "cold_starts": {
            "child": [c.to_dict() for c in m.child_colds],
            "emulator": m.emulator_colds,
            "headline": f"{top.memory_mb:,} MB ({top.threads} threads), {headline_variant}, "
                        f"median of {len(headline_colds)} start(s)",
            "torchvision_imported": any(c.torchvision_imported for c in m.child_colds),
        },
        "emulator": {"pinning": pinning_method(), "peak_rss_mb": round(m.emulator_rss_mb, 1),
                     "sizes": sorted({c["memory_mb"] for c in m.emulator_colds})},
        "batch": m.batch,
        "variants": list(variants),
    }
    return LatencyReport(results=tuple(m.results), machine=machine,
                         recommended_memory_mb=recommendation.memory_mb, cold_start=cold_start,
                         peak_rss_mb=peak_rss, roofline=roofline_data, targets=tuple(t.to_dict() for t in targets),
                         details=details)


def _decode_preprocess(m: Measurements, step: SizeStep, variant: str) -> dict[str, float]:
    return {r.image: r.steps["decode_preprocess"]["p50_ms"] for r in m.results
            if r.path == "classifier" and r.memory_mb == step.memory_mb and r.variant == variant
            and "decode_preprocess" in r.steps}
