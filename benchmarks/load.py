"""`python -m benchmarks load`: a burst of mixed photos with hostile inputs mixed in, through the emulator.

What a public endpoint lives through, on one machine: N requests from `--concurrency` clients to
as many emulated runtimes (the real handler under awslambdaric, behind the Function URL), photos
of about 0.3, 1 and 4 megapixels as JPEG and PNG, and `--hostile-fraction` of the requests drawn
from the hostile corpus (tests/hostile/corpus.py: truncated files, bombs, bad JSON, wrong
methods...). The run, in order (progress on stderr):

1. the model: the synced version named by --model-root/--model-name/--model-version, or the demo
   ResNet-50 published and synced into a scratch directory;
2. the emulator with `--concurrency` runtimes, warmed up with every photo a few times; then the
   runtimes' resident memory (RSS) is read;
3. the N requests, in a fixed order drawn from `--seed`;
4. the figures and the criteria of issue 6, printed as a table:

| criterion | limit |
|---|---|
| answers with a 5xx status | 0 |
| runtime restarts | 0 |
| photos answered 200, hostile requests answered their exact expected status | all |
| RSS growth from after warm-up to the end | <= `--max-rss-growth` % (5) |
| p99 / p50 of photo latency (client side), for each photo size | <= `--max-p99-ratio` (2.0) |

The latency criterion is judged per photo size (the worst size counts) because the spread of a
*mix* of sizes measures the mix, not the service: when inference is cheap, a 1 MP PNG costs three
times a 0.3 MP JPEG however steady the function is. The p99/p50 of all sizes together is printed
as well, and `--judge-mixed-latency` applies the limit to it instead.
The exit status is 1, with one line naming the failed criteria, when any is not met.
`--json FILE` also writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.exceptions import LoadBenchmarkError
from benchmarks.latency_images import PHOTO_SIZES, photo_set, synthetic_pixels
from benchmarks.latency_model import ModelRef, demo_model, existing_model
from benchmarks.latency_stats import percentile
from emulator import Emulator, EmulatorConfig
from emulator.exceptions import EmulatorError

REQUEST_TIMEOUT_S = 120.0
QUICK_REQUESTS = 200
PNG_SIZES = ("0.3mp", "1mp")  # a 4 MP PNG of a photo is over the 6 MB a Function URL accepts
WARMUP_ROUNDS = 2  # each photo this many times per runtime before the RSS baseline


@dataclass(frozen=True)
class Payload:
    """One kind of request the clients send."""

    name: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    expected_status: int
    hostile: bool


@dataclass(frozen=True)
class Sample:
    """One answered request."""

    name: str
    hostile: bool
    status: int  # 0 when the connection itself failed
    expected_status: int
    ms: float


@dataclass
class LoadResult:
    """Every figure the benchmark prints (and writes with --json)."""

    model: dict[str, Any]
    requests: int
    concurrency: int
    photos: int
    hostile: int
    warmup_requests: int
    status_counts: dict[str, int]
    five_xx: int
    connection_failures: int
    photos_not_200: int
    hostile_unexpected: list[str]
    restarts: int
    function_errors: int
    timeouts: int
    rss_after_warmup_mb: float
    rss_end_mb: float
    rss_growth_pct: float
    p50_ms: float
    p99_ms: float
    p99_over_p50: float  # all photo sizes together
    worst_size_p99_over_p50: float  # the photo size with the widest spread
    per_photo_ms: dict[str, dict[str, float]]
    duration_s: float
    criteria: dict[str, dict[str, Any]] = field(default_factory=dict)

    def failed(self) -> list[str]:
        return [name for name, check in self.criteria.items() if not check["ok"]]


@dataclass(frozen=True)
class LoadSettings:
    """How much load, and the limits it is judged by."""

    requests: int = 2000
    concurrency: int = 2
    hostile_fraction: float = 0.05
    seed: int = 6
    threads: int | None = None  # inference threads per runtime (OMP_NUM_THREADS); default: CPUs / concurrency
    memory_mb: int = 3008
    max_rss_growth_pct: float = 5.0
    max_p99_ratio: float = 2.0
    judge_mixed_latency: bool = False  # apply max_p99_ratio to all sizes together, not per size

    def check(self) -> None:
        if self.requests < 1:
            raise LoadBenchmarkError("--requests must be at least 1")
        if self.concurrency < 1:
            raise LoadBenchmarkError("--concurrency must be at least 1")
        if not 0.0 <= self.hostile_fraction <= 1.0:
            raise LoadBenchmarkError("--hostile-fraction must be between 0 and 1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the `load` subcommand."""
    parser.add_argument("--requests", type=int, metavar="N",
                        help=f"requests to send after the warm-up (default: 2000, or {QUICK_REQUESTS} with --quick)")
    parser.add_argument("--concurrency", type=int, default=2, metavar="N",
                        help="emulated runtimes, and clients sending at once (default: 2)")
    parser.add_argument("--hostile-fraction", type=float, default=0.05, metavar="F",
                        help="share of requests drawn from the hostile corpus (default: 0.05)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests instead of 2000")
    parser.add_argument("--seed", type=int, default=6, help="seed of the request order (default: 6)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="inference threads per runtime, as OMP_NUM_THREADS (default: this machine's CPUs "
                             "divided by --concurrency)")
    parser.add_argument("--memory-mb", type=int, default=3008, metavar="MB",
                        help="the emulated function's memory size, as reported (default: 3008)")
    parser.add_argument("--max-rss-growth", type=float, default=5.0, metavar="PCT",
                        help="criterion: RSS growth after warm-up, in percent (default: 5)")
    parser.add_argument("--max-p99-ratio", type=float, default=2.0, metavar="R",
                        help="criterion: p99 / p50 of photo latency, per photo size (default: 2.0)")
    parser.add_argument("--judge-mixed-latency", action="store_true",
                        help="apply --max-p99-ratio to all photo sizes together instead of to each size")
    parser.add_argument("--model-root", type=Path, metavar="DIR",
                        help="a model root holding a synced version (default: make the demo ResNet-50)")
    parser.add_argument("--model-name", metavar="NAME", help="with --model-root: the model's name")
    parser.add_argument("--model-version", metavar="VERSION", help="with --model-root: the version")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")


def run(args: argparse.Namespace) -> int:
    """Make or find the model, run the load, print the table; non-zero when a criterion fails."""
    settings = LoadSettings(
        requests=args.requests if args.requests is not None else (QUICK_REQUESTS if args.quick else 2000),
        concurrency=args.concurrency, hostile_fraction=args.hostile_fraction, seed=args.seed,
        threads=args.threads, memory_mb=args.memory_mb, max_rss_growth_pct=args.max_rss_growth,
        max_p99_ratio=args.max_p99_ratio, judge_mixed_latency=args.judge_mixed_latency)
    settings.check()
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="breedserve-load-") as scratch:
        if args.model_root is not None:
            if not (args.model_name and args.model_version):
                raise LoadBenchmarkError("--model-root needs --model-name and --model-version")
            model = existing_model(args.model_root, args.model_name, args.model_version)
        else:
            progress("publishing and syncing the demo ResNet-50 (once per run)")
            model = demo_model(Path(scratch))
        result = run_load(settings, model, progress)
    print(render(result, settings))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    failed = result.failed()
    if failed:
        raise LoadBenchmarkError("load criteria not met: " + "; ".join(
            f"{name} ({result.criteria[name]['value']} vs {result.criteria[name]['limit']})" for name in failed))
    return 0


class Progress:
    """Lines on stderr with the time since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"load [{time.perf_counter() - self.start:6.1f} s]: {message}", file=sys.stderr, flush=True)


# --- traffic ------------------------------------------------------------------------------------

def photo_payloads() -> list[Payload]:
    """The synthetic photos as JPEG (0.3, 1, 4 MP) and PNG (0.3, 1 MP)."""
    from PIL import Image

    payloads = [Payload(f"{p.label}-jpeg", "POST", "/predict", (("Content-Type", "image/jpeg"),), p.jpeg, 200, False)
                for p in photo_set()]
    for seed, label in enumerate(PNG_SIZES, start=10):
        width, height = PHOTO_SIZES[label]
        buffer = io.BytesIO()
        Image.fromarray(synthetic_pixels(width, height, seed=seed), mode="RGB").save(buffer, "PNG")
        payloads.append(Payload(f"{label}-png", "POST", "/predict", (("Content-Type", "image/png"),),
                                buffer.getvalue(), 200, False))
    return payloads


def hostile_payloads(num_classes: int) -> list[Payload]:
    """The corpus's HTTP cases, built for the handler's default body limit."""
    try:
        from tests.hostile.corpus import cached_corpus
    except ImportError as exc:
        raise LoadBenchmarkError(f"the hostile corpus (tests/hostile/corpus.py) cannot be imported ({exc}): "
                                 "run from the repository root") from exc
    from handler.config import DEFAULT_MAX_BODY_BYTES

    return [Payload(case.name, case.method, case.target, case.headers, case.body, case.status, True)
            for case in cached_corpus(num_classes, DEFAULT_MAX_BODY_BYTES) if not case.direct]


def schedule(settings: LoadSettings, photos: Sequence[Payload], hostile: Sequence[Payload]) -> list[Payload]:
    """The N requests in a fixed order: each hostile with probability `hostile_fraction`, else a photo."""
    rng = random.Random(settings.seed)
    return [rng.choice(hostile) if hostile and rng.random() < settings.hostile_fraction else rng.choice(photos)
            for _ in range(settings.requests)]


def send(port: int, payload: Payload) -> Sample:
    """One request to the emulated Function URL, timed as the client sees it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    start = time.perf_counter()
    try:
        connection.request(payload.method, payload.target, body=payload.body, headers=dict(payload.headers))
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        connection.close()
    return Sample(payload.name, payload.hostile, status, payload.expected_status,
                  (time.perf_counter() - start) * 1000.0)


# --- the run ------------------------------------------------------------------------------------

def run_load(settings: LoadSettings, model: ModelRef, progress: Callable[[str], None] = lambda _: None) -> LoadResult:
    """Start the emulator, warm it up, send the requests, and judge the figures."""
    settings.check()
    photos = photo_payloads()
    hostile = hostile_payloads(model.manifest.num_classes)
    plan = schedule(settings, photos, hostile)
    threads = settings.threads or max(1, len(os.sched_getaffinity(0)) // settings.concurrency)
    log: deque[str] = deque(maxlen=20)
    config = EmulatorConfig(model_root=model.root, model_name=model.name, model_version=model.version, port=0,
                            concurrency=settings.concurrency, timeout_s=60.0, memory_mb=settings.memory_mb,
                            environment={"OMP_NUM_THREADS": str(threads), "POWERTOOLS_METRICS_DISABLED": "true"})
    progress(f"starting {settings.concurrency} runtimes of {model.name}/{model.version} "
             f"({model.manifest.arch.label}, {threads} inference thread(s) each)")
    try:
        emulator = Emulator(config, log=log.append).start()
    except EmulatorError as exc:
        raise LoadBenchmarkError(f"the emulator did not start: {exc}") from exc
    with emulator:
        try:
            emulator.wait_ready(timeout=600)
        except EmulatorError as exc:
            raise LoadBenchmarkError(f"the runtimes did not become ready: {exc}; last lines: {list(log)[-3:]}") from exc
        warmup = [p for p in photos for _ in range(WARMUP_ROUNDS * settings.concurrency)]
        progress(f"warm-up: {len(warmup)} photo requests")
        warm_samples = _send_all(emulator.port, warmup, settings.concurrency)
        if any(s.status != 200 for s in warm_samples):
            bad = next(s for s in warm_samples if s.status != 200)
            raise LoadBenchmarkError(f"warm-up request {bad.name} answered {bad.status}; last lines: {list(log)[-3:]}")
        rss_warm = _rss_mb(emulator)
        variant = _served_variant(emulator.port)
        progress(f"RSS after warm-up: {rss_warm:.1f} MB; sending {len(plan)} requests "
                 f"({sum(p.hostile for p in plan)} hostile)")
        started = time.perf_counter()
        samples = _send_all(emulator.port, plan, settings.concurrency, progress)
        duration_s = time.perf_counter() - started
        stats = emulator.stats()
        rss_end = _rss_mb(emulator)
    result = summarize(settings, model, samples, len(warmup), stats.restarts, stats.errors, stats.timeouts,
                       rss_warm, rss_end, duration_s)
    result.model["variant_served"] = variant
    progress(f"done in {duration_s:.1f} s")
    return result


def _send_all(port: int, plan: Sequence[Payload], concurrency: int,
              progress: Callable[[str], None] | None = None) -> list[Sample]:
    """`plan` from `concurrency` clients at once; progress every tenth of the way."""
    step = max(1, len(plan) // 10)
    samples: list[Sample] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for sample in pool.map(lambda p: send(port, p), plan):
            samples.append(sample)
            if progress is not None and len(samples) % step == 0:
                fives = sum(1 for s in samples if s.status >= 500 or s.status == 0)
                progress(f"{len(samples)}/{len(plan)} requests, {fives} 5xx or failed")
    return samples


def _served_variant(port: int) -> str:
    """The weights variant the handler chose (GET /health names it)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", "/health")
        return str(json.loads(connection.getresponse().read())["model"].get("variant", "?"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadBenchmarkError(f"GET /health failed after the warm-up: {exc}") from exc
    finally:
        connection.close()


def _rss_mb(emulator: Emulator) -> float:
    """Resident memory of every runtime's process tree, summed (what the REPORT lines' memory reads)."""
    return round(sum(r.rss_mb for r in emulator.stats().runtimes), 1)


def summarize(settings: LoadSettings, model: ModelRef, samples: Sequence[Sample], warmup_requests: int,
              restarts: int, function_errors: int, timeouts: int, rss_warm: float, rss_end: float,
              duration_s: float) -> LoadResult:
    """The figures and the criteria of issue 6 from the samples."""
    photo_samples = [s for s in samples if not s.hostile]
    hostile_samples = [s for s in samples if s.hostile]
    ok_photo_ms = [s.ms for s in photo_samples if s.status == 200]
    if not ok_photo_ms:
        raise LoadBenchmarkError("no photo request was answered 200: nothing to take latency percentiles of")
    p50, p99 = percentile(ok_photo_ms, 50), percentile(ok_photo_ms, 99)
    per_photo: dict[str, dict[str, float]] = {}
    for name in sorted({s.name for s in photo_samples}):
        values = [s.ms for s in photo_samples if s.name == name and s.status == 200]
        if values:
            p50_size, p99_size = percentile(values, 50), percentile(values, 99)
            per_photo[name] = {"n": len(values), "p50_ms": round(p50_size, 1), "p99_ms": round(p99_size, 1),
                               "p99_over_p50": round(p99_size / p50_size, 2)}
    growth = 100.0 * (rss_end - rss_warm) / rss_warm if rss_warm > 0 else 0.0
    result = LoadResult(
        model=model.describe(), requests=len(samples), concurrency=settings.concurrency,
        photos=len(photo_samples), hostile=len(hostile_samples), warmup_requests=warmup_requests,
        status_counts={str(k): v for k, v in sorted(Counter(s.status for s in samples).items())},
        five_xx=sum(1 for s in samples if s.status >= 500), connection_failures=sum(1 for s in samples if s.status == 0),
        photos_not_200=sum(1 for s in photo_samples if s.status != 200),
        hostile_unexpected=sorted({f"{s.name}: {s.status} (expected {s.expected_status})"
                                   for s in hostile_samples if s.status != s.expected_status}),
        restarts=restarts, function_errors=function_errors, timeouts=timeouts,
        rss_after_warmup_mb=rss_warm, rss_end_mb=rss_end, rss_growth_pct=round(growth, 2),
        p50_ms=round(p50, 1), p99_ms=round(p99, 1), p99_over_p50=round(p99 / p50, 2),
        worst_size_p99_over_p50=max(v["p99_over_p50"] for v in per_photo.values()),
        per_photo_ms=per_photo, duration_s=round(duration_s, 1))
    result.criteria = {
        "no 5xx": _criterion(result.five_xx + result.connection_failures, 0),
        "no runtime restart": _criterion(restarts, 0),
        "photos answered 200": _criterion(result.photos_not_200, 0),
        "hostile answered as expected": _criterion(len(result.hostile_unexpected), 0),
        "RSS growth %": _criterion(result.rss_growth_pct, settings.max_rss_growth_pct),
        "p99/p50": _criterion(result.p99_over_p50 if settings.judge_mixed_latency
                              else result.worst_size_p99_over_p50, settings.max_p99_ratio),
    }
    return result


def _criterion(value: float, limit: float) -> dict[str, Any]:
    return {"value": value, "limit": limit, "ok": value <= limit}


def render(result: LoadResult, settings: LoadSettings) -> str:
    """The table printed at the end."""
    model = result.model
    lines = [
        (f"load: {result.requests} requests ({result.photos} photos, {result.hostile} hostile) from "
         f"{result.concurrency} clients to {result.concurrency} runtimes in {result.duration_s:.1f} s "
         f"(after {result.warmup_requests} warm-up requests)"),
        (f"model: {model['name']}/{model['version']} ({model['arch']}, {model['num_classes']} classes, "
         f"variant {model.get('variant_served', '?')})"),
        f"statuses: {', '.join(f'{k}: {v}' for k, v in result.status_counts.items())}",
        "",
        f"{'figure':<32} {'value':>12}  {'limit':>8}  result",
    ]

    def row(label: str, value: str, name: str | None = None) -> None:
        check = result.criteria.get(name or "", None)
        limit = "" if check is None else f"{check['limit']:g}"
        verdict = "" if check is None else ("ok" if check["ok"] else "FAILED")
        lines.append(f"{label:<32} {value:>12}  {limit:>8}  {verdict}")

    row("5xx answers (incl. no answer)", str(result.five_xx + result.connection_failures), "no 5xx")
    row("runtime restarts", str(result.restarts), "no runtime restart")
    row("photos not answered 200", str(result.photos_not_200), "photos answered 200")
    row("hostile not answered as expected", str(len(result.hostile_unexpected)), "hostile answered as expected")
    row("function errors / timeouts", f"{result.function_errors} / {result.timeouts}")
    row("RSS after warm-up (MB)", f"{result.rss_after_warmup_mb:.1f}")
    row("RSS at end (MB)", f"{result.rss_end_mb:.1f}")
    row("RSS growth (%)", f"{result.rss_growth_pct:+.2f}", "RSS growth %")
    row("photo latency p50 (ms)", f"{result.p50_ms:.1f}")
    row("photo latency p99 (ms)", f"{result.p99_ms:.1f}")
    mixed, per_size = ("p99/p50", None) if settings.judge_mixed_latency else (None, "p99/p50")
    row("p99 / p50, all sizes together", f"{result.p99_over_p50:.2f}", mixed)
    row("p99 / p50, worst photo size", f"{result.worst_size_p99_over_p50:.2f}", per_size)
    lines.append("")
    lines.append("per photo (client side): " + "; ".join(
        f"{name} n={v['n']:g} p50 {v['p50_ms']:.0f} ms p99 {v['p99_ms']:.0f} ms ({v['p99_over_p50']:.2f}x)"
        for name, v in result.per_photo_ms.items()))
    for problem in result.hostile_unexpected[:10]:
        lines.append(f"unexpected: {problem}")
    return "\n".join(lines)

