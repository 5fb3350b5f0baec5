"""`python -m benchmarks latency`: how long a prediction takes, cold and warm, and what it needs.

The run, in order (one progress line per group on stderr):
1. the model: the synced version named by --model-root/--model-name/--model-version, or the demo
   ResNet-50 published and synced into a scratch directory (no user data needed);
2. synthetic photos of about 0.3, 1 and 4 megapixels (`latency_images`);
3. cold starts in fresh processes (engine import, handler import, init, first prediction; peak
   RSS; whether torch got imported);
4. the matmul peak: fp32 torch matmul per thread count (torch, here in the parent process only);
5. warm requests straight to the `Classifier`, per Lambda size (thread count), variant and photo,
   each through the same `Predictor` the handler uses (ONNX Runtime or torch, `threads=` at load),
   spread over interleaved rounds with the matmul peak measured again after each (the roofline:
   the best peak and the model's FLOPs);
6. the same through the emulator's Function URL, each runtime start doubling as a cold start, and
   the function as deployed (no MODEL_VARIANT, the handler picks) for the headline cold start,
   plus a batch of direct invocations on that served variant;
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.cost_latency import (
    DEFAULT_IMAGE,
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
    classifier_request,
    cold_start_child,
    direct_batch,
    interleaved_series,
    median_parts,
    warm_series,
)
from benchmarks.latency_model import ModelRef, demo_model, existing_model
from benchmarks.latency_report import render_markdown
from benchmarks.latency_roofline import Roofline, matmul_gflops, network_flops
from benchmarks.latency_sizing import SizeStep, measured_steps, plan_note, recommend_memory, size_plan
from benchmarks.latency_stats import median
from benchmarks.latency_targets import TARGET_MEMORY_MB, TargetFigures, evaluate, targets_table
from handler.classifier import Classifier
from model_store.exceptions import ModelStoreError

REPORT_JSON = "latency.json"
REPORT_MD = "latency.md"
DEFAULT_OUT = Path("benchmarks/reports")
LARGEST_IMAGE = "4mp"
DEFAULT_CHOICE = "unset"  # MODEL_VARIANT of an emulator start as deployed: the handler picks


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
    rounds: int  # the Classifier-path samples of each configuration are spread over this many rounds

    @classmethod
    def choose(cls, quick: bool, samples: int | None = None) -> RunSettings:
        if quick:
            base = cls(quick=True, samples=5, warmup=1, cold_repeats=1, matmul_repeats=3, batch_size=8,
                       batch_repeats=2, emulator_all_sizes=False, rounds=1)
        else:
            base = cls(quick=False, samples=30, warmup=3, cold_repeats=3, matmul_repeats=5, batch_size=8,
                       batch_repeats=5, emulator_all_sizes=True, rounds=3)
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
            report = LatencyRun(args, settings, Path(scratch), progress).measure()
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


class LatencyRun:
    """One run: the model, photos and size plan it measures, and everything measured so far."""

    def __init__(self, args: argparse.Namespace, settings: RunSettings, scratch: Path, progress: Progress) -> None:
        self.settings, self.scratch, self.progress = settings, scratch, progress
        self.machine = machine_info()
        self.model = _model(args, scratch, progress)
        self.variants = _variants(self.model, args.variant)
        self.photos = photo_set()
        self.photo_paths = _write_photos(self.photos, scratch)
        progress("photos " + ", ".join(f"{p.label} {p.width}x{p.height} ({p.kilobytes:,.0f} KB)"
                                       for p in self.photos))
        self.cores = usable_cores()
        self.plan = size_plan(self.cores)
        self.steps = measured_steps(self.plan)
        self.top = self.steps[-1]
        # Issue 8's targets are for 2 threads (3,008 MB); a 1-core machine judges them at what it has.
        self.target_step = next((s for s in self.steps if s.memory_mb == TARGET_MEMORY_MB), self.top)
        # What the function serves without MODEL_VARIANT is what the recommendation, the decode
        # targets and the cost model go by; the batch and the headline cold start run it too.
        self.served = self.model.served_variant
        self.headline_variant = self.served if self.served in self.variants else self.variants[0]
        self.engines: dict[str, str] = {}  # variant -> engine, as its Predictor says
        self.first_photo = next(p for p in self.photos if p.label == DEFAULT_IMAGE)
        self.results: list[LatencyResult] = []
        self.child_colds: list[ChildColdStart] = []
        self.emulator_colds: list[dict[str, Any]] = []
        self.emulator_rss_mb = 0.0
        self.batch: dict[str, Any] = {}
        self.roofline: Roofline | None = None
        self.skipped: dict[str, str] = {}  # variant -> why this machine cannot run it

    def measure(self) -> LatencyReport:
        """Every group in the module docstring's order; returns the report without writing it."""
        self.cold_starts_in_fresh_processes()
        gflops = self.matmul_peaks()
        self.classifier_runs(gflops)
        model = self.model
        self.roofline = Roofline.from_measured(network_flops(model.manifest.arch, model.manifest.num_classes,
                                                             model.manifest.preprocess.output_size), gflops)
        self.progress(f"{model.manifest.arch.label}: {self.roofline.flops / 1e9:,.2f} GFLOP per image; "
                      "roofline " + ", ".join(f"{self.roofline.time_ms(t):,.1f} ms at {t} thread(s) "
                                              f"({gflops[t]:,.1f} GFLOP/s, best of every round)"
                                              for t in sorted(gflops)))
        runnable = [v for v in self.variants if v not in self.skipped]
        if not runnable:
            raise LatencyBenchmarkError("no variant of the model can run here: "
                                        + "; ".join(f"{v}: {why}" for v, why in self.skipped.items()))
        if self.settings.emulator_all_sizes:
            for variant in runnable:
                for step in self.steps:
                    self.emulator_runs(variant, step)
        # The function as deployed (no MODEL_VARIANT: the handler's choice) gives the headline cold start.
        for i in range(self.settings.cold_repeats):
            self.emulator_runs(None, self.top, warm=not self.settings.emulator_all_sizes and i == 0)
        if not self.batch:  # the target size was not one the served variant ran at through the emulator
            with EmulatedFunction(model, None, self.target_step.memory_mb, self.target_step.threads,
                                  self.scratch) as function:
                function.cold_start(self.first_photo.jpeg)
                self._batch(function)
        busy = busy_note(self.machine, self.cores)
        if busy:
            self.progress(busy)
        return self.report()

    def cold_starts_in_fresh_processes(self) -> None:
        repeats = self.settings.cold_repeats
        for i in range(repeats):
            cold = cold_start_child(self.model, None, self.top.threads,
                                    self.photo_paths[self.first_photo.label], self.photo_paths.get(LARGEST_IMAGE))
            self.child_colds.append(cold)
            parts = ", ".join(f"{k} {v:,.0f}" for k, v in cold.parts_ms.items())
            self.progress(f"cold start {i + 1}/{repeats} in a fresh process ({cold.variant}, {cold.engine}): "
                          f"{parts} ms; peak RSS {cold.peak_rss_mb:,.0f} MB; torch imported: "
                          f"{'yes' if cold.torch_imported else 'no'}")

    def matmul_peaks(self) -> dict[int, float]:
        gflops = {}
        for step in self.steps:
            gflops[step.threads] = matmul_gflops(step.threads, repeats=self.settings.matmul_repeats)
            self.progress(f"matmul peak at {step.threads} thread(s): {gflops[step.threads]:,.1f} GFLOP/s")
        return gflops

    def classifier_runs(self, gflops: dict[int, float]) -> None:
        """Warm requests to every variant's `Classifier`, at every measured size, in interleaved rounds.

        A thread count is fixed when the predictor is made (an ONNX Runtime session's pool; torch's
        process-wide one), so each size loads the variants afresh with `threads=`, as a runtime of
        that size would. Within a size, every (variant, photo) gets its share of the samples in each
        round (`interleaved_series`), and the matmul peak is measured again after each round: the
        roofline is the best of all of them, so a quiet moment raises the bar rather than lowering it.
        """
        settings = self.settings
        repeats = max(1, settings.matmul_repeats // max(1, settings.rounds))
        for step in self.steps:
            # (no walrus here: its name would outlive the comprehension and keep a model loaded)
            loaded = {variant: classifier for variant, classifier in
                      ((v, self._classifier(v, step)) for v in self.variants) if classifier is not None}

            def remeasure_peak(threads: int = step.threads) -> None:
                gflops[threads] = max(gflops[threads], matmul_gflops(threads, repeats=repeats))

            configurations = {(variant, photo): (classifier_request(classifier), photo.jpeg)
                              for variant, classifier in loaded.items() for photo in self.photos}
            series = interleaved_series(configurations, settings.samples, settings.warmup, settings.rounds,
                                        between_rounds=remeasure_peak)
            for (variant, photo), warm in series.items():
                self._add(_result(step, variant, photo, "classifier", warm))
            del loaded, configurations
            gc.collect()  # one size's models in memory at a time, and none while the emulator runs its own

    def _classifier(self, variant: str, step: SizeStep) -> Classifier | None:
        """`variant` loaded for `step`'s thread count and warmed up, or None (recorded) if it cannot run here."""
        if variant in self.skipped:
            return None
        model = self.model
        try:
            classifier = Classifier.from_root(model.root, model.name, version=model.version, variant=variant,
                                              threads=step.threads)
        except ModelStoreError as exc:
            self.skipped[variant] = str(exc)
            self.progress(f"skipping variant {variant}: {exc}")
            return None
        predictor = classifier.predictor
        self.engines[variant] = predictor.engine
        if predictor.threads != step.threads:
            raise LatencyBenchmarkError(f"the {variant} predictor runs {predictor.threads} thread(s), "
                                        f"not the {step.threads} asked for")
        classifier.warm_up()
        return classifier

    def emulator_runs(self, variant: str | None, step: SizeStep, *, warm: bool = True) -> None:
        """A cold start, then (if `warm`) warm requests, through one emulated function of `step`'s size.

        `variant` None deploys without MODEL_VARIANT; the results carry the variant that answered.
        """
        with EmulatedFunction(self.model, variant, step.memory_mb, step.threads, self.scratch) as function:
            self._record_cold(function.cold_start(self.first_photo.jpeg), step, requested=variant)
            for photo in self.photos if warm else ():
                series = warm_series(function.predict, photo.jpeg, self.settings.samples, self.settings.warmup)
                self._add(_result(step, function.variant, photo, "emulator", series))
            if warm and not self.batch and step == self.target_step and function.variant == self.served:
                self._batch(function)
            self.emulator_rss_mb = max(self.emulator_rss_mb, function.peak_rss_mb())

    def _batch(self, function: EmulatedFunction) -> None:
        """Issue 8's batch row: `{"images": [...]}` vs `{"image": ...}` direct invocations, served variant."""
        settings = self.settings
        figures = direct_batch(function.invoke, self.first_photo.jpeg, settings.batch_size, settings.batch_repeats)
        self.batch = {**figures, "image": self.first_photo.label, "variant": function.variant,
                      "engine": self.model.engine(function.variant), "memory_mb": function.memory_mb,
                      "threads": function.threads, "repeats": settings.batch_repeats}
        self.progress(f"batch of {settings.batch_size} by direct invocation ({function.variant}, "
                      f"{function.threads} thread(s)): {self.batch['per_image_ms']:,.1f} ms per image against "
                      f"{self.batch['single_p50_ms']:,.1f} ms single, {self.batch['speedup']:.2f}x")

    def _add(self, result: LatencyResult) -> None:
        self.results.append(result)
        self.progress(_describe(result))

    def _record_cold(self, cold: ColdSample, step: SizeStep, *, requested: str | None) -> None:
        self.emulator_colds.append({"memory_mb": step.memory_mb, "threads": step.threads,
                                    "requested": requested or DEFAULT_CHOICE, **cold.to_dict()})
        asked = requested or f"MODEL_VARIANT unset: {cold.variant}"
        asked += f", {cold.engine}"
        self.progress(f"emulator cold start ({step.memory_mb:,} MB, {asked}): init {cold.init_ms:,.0f} ms, "
                      f"first response after {cold.first_response_ms:,.0f} ms")

    def _classifier_results(self, step_name: str, *, threads: int | None = None, memory_mb: int | None = None,
                        variant: str | None = None, image: str | None = None) -> list[LatencyResult]:
        return [r for r in self.results if r.path == "classifier" and step_name in r.steps
                and (threads is None or r.threads == threads) and (memory_mb is None or r.memory_mb == memory_mb)
                and (variant is None or r.variant == variant) and (image is None or r.image == image)]

    def report(self) -> LatencyReport:
        """The LatencyReport: headline figures, the recommendation, the roofline and the targets."""
        assert self.roofline is not None
        roofline, top, target, headline = self.roofline, self.top, self.target_step, self.headline_variant
        peak_rss = max(c.peak_rss_mb for c in self.child_colds)
        p50_by_memory = {r.memory_mb: r.p50_ms
                         for r in self._classifier_results("end_to_end", variant=headline, image=DEFAULT_IMAGE)}
        recommendation = recommend_memory(p50_by_memory, peak_rss)
        headline_colds = [c for c in self.emulator_colds
                          if c["memory_mb"] == top.memory_mb and c["requested"] == DEFAULT_CHOICE]
        served = headline_colds[0]["variant"]
        engines = {**{v: self.model.engine(v) for v in self.model.variants}, **self.engines}
        cold_start = replace(_median_cold(headline_colds), parts_ms=median_parts(self.child_colds))
        variant_colds = {served: cold_start}
        for variant in self.variants:
            asked = [c for c in self.emulator_colds if c["memory_mb"] == top.memory_mb and c["requested"] == variant]
            if asked and variant != served:
                variant_colds[variant] = _median_cold(asked)
        torch_imported = any(c.torch_imported for c in self.child_colds)
        targets = evaluate(TargetFigures(
            threads=target.threads, roofline=roofline,
            inference_p50_ms={r.variant: r.steps["inference"]["p50_ms"] for r in
                              self._classifier_results("inference", threads=target.threads, image=DEFAULT_IMAGE)},
            decode_preprocess_p50_ms={r.image: r.steps["decode_preprocess"]["p50_ms"] for r in
                                      self._classifier_results("decode_preprocess", memory_mb=target.memory_mb,
                                                           variant=headline)},
            decode_split_ms={r.image: (r.steps["decode"]["p50_ms"], r.steps["preprocess"]["p50_ms"]) for r in
                             self._classifier_results("decode_preprocess", memory_mb=target.memory_mb,
                                                      variant=headline)},
            cold_start_ms=cold_start.first_response_ms, peak_rss_mb=peak_rss,
            batch_speedup=self.batch.get("speedup"), batch_size=self.batch.get("batch_size"),
            batch_variant=self.batch.get("variant"), engines=engines, served_variant=served,
            decode_variant=headline,
            torch_imported=torch_imported,
        ))
        roofline_data = roofline.to_dict()
        roofline_data["variants"] = [
            {"variant": r.variant, "threads": r.threads, "memory_mb": r.memory_mb,
             "inference_p50_ms": r.steps["inference"]["p50_ms"], "roofline_ms": round(roofline.time_ms(r.threads), 2),
             "ratio": round(roofline.ratio(r.steps["inference"]["p50_ms"], r.threads), 3)}
            for r in self._classifier_results("inference", image=DEFAULT_IMAGE)
        ]
        details = {
            "run": {**self.settings.describe(), "duration_s": round(self.progress.elapsed_s, 1),
                    "load_average_at_end": load_average(), "busy": busy_note(self.machine, self.cores)},
            "model": self.model.describe(),
            "photos": [p.describe() for p in self.photos],
            "sizes": [s.to_dict() for s in self.plan],
            "sizes_note": plan_note(self.plan, self.cores),
            "target_threads": target.threads,
            "recommendation": {"memory_mb": recommendation.memory_mb, "reason": recommendation.reason,
                               "rule": recommendation.rule,
                               "basis": f"classifier path, {headline} ({engines.get(headline)}), "
                                        f"{DEFAULT_IMAGE} photo, end-to-end p50"},
            "cold_starts": {
                "child": [c.to_dict() for c in self.child_colds],
                "emulator": self.emulator_colds,
                "headline": f"{top.memory_mb:,} MB ({top.threads} threads), the handler's choice of variant "
                            f"({served}), median of {len(headline_colds)} start(s)",
                "served_variant": served,
                "engine": engines.get(served),
                "child_engines": sorted({c.engine for c in self.child_colds}),
                "torch_imported": torch_imported,
                "torchvision_imported": any(c.torchvision_imported for c in self.child_colds),
            },
            "emulator": {"pinning": pinning_method(), "peak_rss_mb": round(self.emulator_rss_mb, 1),
                         "sizes": sorted({c["memory_mb"] for c in self.emulator_colds})},
            "batch": self.batch,
            "variants": [v for v in self.variants if v not in self.skipped],
            "skipped_variants": self.skipped,
        }
        return LatencyReport(results=tuple(self.results), machine=self.machine,
                             recommended_memory_mb=recommendation.memory_mb, cold_start=cold_start,
                             peak_rss_mb=peak_rss, roofline=roofline_data,
                             targets=tuple(t.to_dict() for t in targets), details=details,
                             served_variant=served, engines=engines, variant_cold_starts=variant_colds,
                             model_files_mb=self.model.files_mb())


def _model(args: argparse.Namespace, scratch: Path, progress: Progress) -> ModelRef:
    given = [args.model_root, args.model_name, args.model_version]
    if any(x is not None for x in given) and not all(x is not None for x in given):
        raise LatencyBenchmarkError("give --model-root, --model-name and --model-version together "
                                    "(or none of them, to measure the demo model)")
    if args.model_root is not None:
        model = existing_model(args.model_root, args.model_name, args.model_version)
        progress(f"model {model.name}/{model.version} from {model.root} ({model.manifest.arch.label})")
        return model
    progress("publishing and syncing the demo ResNet-50 (133 classes) and its faster variants into a scratch "
             "model root")
    model = demo_model(scratch, say=lambda message: progress(f"publish: {message}"))
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


def _write_photos(photos: Sequence[Photo], scratch: Path) -> dict[str, Path]:
    paths = {}
    for photo in photos:
        path = scratch / f"photo-{photo.label}.jpg"
        path.write_bytes(photo.jpeg)
        paths[photo.label] = path
    return paths


def _median_cold(colds: Sequence[dict[str, Any]]) -> ColdStart:
    """The median emulator cold start of one variant (the first's variant and engine)."""
    return ColdStart(init_ms=round(median([c["init_ms"] for c in colds]), 2),
                     first_response_ms=round(median([c["first_response_ms"] for c in colds]), 2),
                     variant=colds[0]["variant"], engine=colds[0]["engine"])


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
