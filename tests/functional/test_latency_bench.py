"""`python -m benchmarks latency`: a quick run writes a latency.json the cost report can use.

The end-to-end test measures a ResNet-18 (not the default ResNet-50 demo) with two samples per
configuration, so it stays fast on a shared 2-core machine; the figures themselves are never
asserted against targets, only their shape and their consistency. The pure parts (percentiles,
memory rule, size plan, FLOP counting, targets, photos) are checked directly first.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from torch import nn

from benchmarks.cost_latency import load_latency, select_warm_result
from benchmarks.latency_images import PHOTO_SIZES, photo_set, synthetic_pixels
from benchmarks.latency_roofline import Roofline, count_flops
from benchmarks.latency_sizing import recommend_memory, size_plan
from benchmarks.latency_stats import percentile
from benchmarks.latency_targets import TargetFigures, evaluate
from model_store.manifest import Architecture, dog_breed_classes
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync

REPO = Path(__file__).resolve().parents[2]
MEASURED = REPO / "benchmarks" / "scenarios" / "measured.toml"
ARCH = Architecture(depth=18)
NAME, VERSION = "dogs", "r18"


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def resnet18_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synced ResNet-18 with 133 classes: the real serving path at a fifth of ResNet-50's work."""
    base = tmp_path_factory.mktemp("latency-model")
    store = (base / "store").as_uri()
    publish_state_dict(build_model(ARCH, 133).state_dict(), store, NAME, VERSION, arch=ARCH,
                       class_names=dog_breed_classes(), preprocess="resize224", trained=False,
                       source="test: random ResNet-18", progress=False)
    root = base / "models"
    sync(store, NAME, root, version=VERSION, progress=False)
    return root


def test_percentiles_interpolate_between_ranks() -> None:
    # GIVEN ten samples 1..10
    values = [float(v) for v in range(10, 0, -1)]
    # WHEN / THEN p50 is the mean of the middle two, p90 interpolates, the ends are min and max
    assert percentile(values, 50) == 5.5
    assert percentile(values, 90) == pytest.approx(9.1)
    assert (percentile(values, 0), percentile(values, 100)) == (1.0, 10.0)


def test_sizes_above_the_cores_are_capped_and_not_measured() -> None:
    # GIVEN a 2-core machine
    # WHEN the Lambda sizes are planned
    plan = {s.memory_mb: s for s in size_plan(2)}
    # THEN 1,769 and 3,008 MB run with 1 and 2 threads; 5,308 and 10,240 MB are capped, unmeasured
    assert (plan[1769].threads, plan[3008].threads) == (1, 2)
    assert plan[5308].capped and not plan[5308].measured and plan[5308].threads == 2
    assert plan[10240].vcpus == 6 and not plan[10240].measured
    assert all(s.measured for s in size_plan(6))


def test_recommendation_takes_the_smallest_size_near_the_best_p50_with_memory_headroom() -> None:
    # GIVEN 2 vCPUs 40% faster than 1, then 2 vCPUs only 5% faster
    # WHEN the rule is applied
    # THEN the first case needs 3,008 MB, the second is content with 1,769 MB
    assert recommend_memory({1769: 140.0, 3008: 100.0}, 600.0).memory_mb == 3008
    assert recommend_memory({1769: 105.0, 3008: 100.0}, 600.0).memory_mb == 1769
    # AND a peak RSS of 1,300 MB (1.5x = 1,950 MB) rules 1,769 MB out however fast it is
    assert recommend_memory({1769: 100.0, 3008: 100.0}, 1300.0).memory_mb == 3008
    # AND nothing fits when the peak RSS is too large for every measured size
    assert recommend_memory({1769: 100.0}, 5000.0).memory_mb is None


def test_flops_are_counted_from_conv_and_linear_shapes() -> None:
    # GIVEN a 3x3 conv (3 -> 8 channels, same padding) and a linear layer on a 16x16 input
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    # WHEN its FLOPs are counted
    flops = count_flops(model, (16, 16))
    # THEN each multiply-add counts two
    assert flops == 2 * (8 * 16 * 16 * 3 * 3 * 3) + 2 * (8 * 16 * 16 * 10)


def test_targets_are_na_without_int8_and_judged_with_it() -> None:
    # GIVEN a 100 ms roofline at 2 threads and fp32 at 120 ms
    roofline = Roofline(flops=10_000_000_000, gflops_by_threads={2: 100.0})
    fp32_only = TargetFigures(threads=2, roofline=roofline, inference_p50_ms={"fp32": 120.0},
                              decode_preprocess_p50_ms={"1mp": 3.0, "4mp": 15.0}, cold_start_ms=1500.0,
                              peak_rss_mb=900.0, batch_speedup=None, batch_size=None)
    # WHEN the targets are evaluated without and with an int8 variant
    without = {t.name: t for t in evaluate(fp32_only)}
    with_int8 = {t.name: t for t in evaluate(replace(fp32_only, inference_p50_ms={"fp32": 120.0, "int8": 50.0}))}
    # THEN int8 is n/a, then met (50 <= 60 ms); fp32 misses 1.1x (120 > 110 ms); decode 4 MP misses
    int8_name = next(n for n in without if n.startswith("int8"))
    assert without[int8_name].met is None and "no int8 variant" in without[int8_name].detail
    assert with_int8[int8_name].met is True and with_int8[int8_name].target == pytest.approx(60.0)
    fp32 = next(t for n, t in without.items() if n.startswith("best fp32"))
    assert fp32.met is False and fp32.ratio == pytest.approx(120 / 110)
    assert [t.met for n, t in without.items() if n.startswith("decode")] == [True, False]
    assert next(t for n, t in without.items() if n.startswith("batch")).met is None


def test_synthetic_photos_are_deterministic_and_sized_like_phone_jpegs() -> None:
    # GIVEN the benchmark's photo set
    photos = photo_set()
    # WHEN / THEN each has its label's size, decodes, and weighs 100-600 KB per megapixel
    assert [p.label for p in photos] == list(PHOTO_SIZES)
    for photo in photos:
        with Image.open(io.BytesIO(photo.jpeg)) as image:
            assert image.size == PHOTO_SIZES[photo.label] and image.format == "JPEG"
        assert 100 <= photo.kilobytes / photo.megapixels <= 600, photo.describe()
    # AND the same seed gives the same pixels, another seed other pixels
    assert (synthetic_pixels(64, 48, 3) == synthetic_pixels(64, 48, 3)).all()
    assert (synthetic_pixels(64, 48, 3) != synthetic_pixels(64, 48, 4)).any()


def test_quick_run_writes_latency_json_that_the_cost_report_uses(resnet18_root: Path, tmp_path: Path) -> None:
    # GIVEN a synced ResNet-18 and an output directory
    out = tmp_path / "reports"
    # WHEN the quick latency benchmark runs on it with two samples per configuration
    proc = _bench("latency", "--quick", "--samples", "2", "--out", str(out), "--model-root", str(resnet18_root),
                  "--model-name", NAME, "--model-version", VERSION)
    # THEN it succeeds, reports progress per group on stderr and prints the targets table
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("latency [") >= 10
    assert "| target | measured | goal | ratio | met |" in proc.stdout
    assert "n/a: no int8 variant" in proc.stdout
    # AND latency.json loads through the cost model's schema with every photo on both paths
    report = load_latency(out / "latency.json")
    results = report.results
    assert {(r.path, r.image) for r in results} >= {(p, i) for p in ("classifier", "emulator") for i in PHOTO_SIZES}
    assert {r.threads for r in results if r.path == "classifier"} == {1, 2}
    for r in results:
        assert r.samples == 2 and 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert set(r.steps) >= {"decode", "preprocess", "inference", "end_to_end"}
        assert r.steps["inference"]["p50_ms"] < r.p99_ms
    # AND the cold start, peak RSS, recommendation, roofline and targets are filled in
    cold = report.cold_start
    assert cold is not None and cold.first_response_ms is not None and 0 < cold.init_ms < cold.first_response_ms
    assert set(cold.parts_ms) >= {"import_torch", "import_handler", "model_load", "first_prediction"}
    assert report.peak_rss_mb is not None and report.peak_rss_mb > 100
    assert report.recommended_memory_mb in (1769, 3008)
    assert report.roofline["model_gflop"] == pytest.approx(3.63, abs=0.01)  # ResNet-18, 224x224, 133 classes
    assert len(report.targets) == 7
    assert report.machine["cores"] >= 1 and report.machine["torch_version"]
    assert report.details["cold_starts"]["torchvision_imported"] is False
    markdown = (out / "latency.md").read_text()
    for heading in ("## Targets", "## Cold start", "## Warm latency", "## Roofline", "## Lambda memory sizes"):
        assert heading in markdown

    # WHEN the cost report is made from that file
    cost_out = tmp_path / "cost"
    cost = _bench("cost", "--scenario", str(MEASURED), "--latency", str(out / "latency.json"),
                  "--out", str(cost_out), "--format", "json", timeout=120)
    # THEN it writes both plots, at the recommended memory, with the measured emulator p50 as duration
    assert cost.returncode == 0, cost.stderr
    for name in ("cost.md", "cost_vs_requests.png", "cost_by_memory.png"):
        assert (cost_out / name).stat().st_size > 0, name
    data = json.loads(cost.stdout)
    assert data["scenario"]["lambda"]["memory_mb"] == report.recommended_memory_mb
    expected = select_warm_result(report, report.recommended_memory_mb, image="1mp", variant="fp32")
    assert data["scenario"]["duration_ms"] == pytest.approx(expected.p50_ms)
    assert data["scenario"]["init_ms"] == pytest.approx(cold.init_ms)


def test_a_missing_model_version_is_one_error_line(resnet18_root: Path, tmp_path: Path) -> None:
    # GIVEN a model root without the version asked for
    # WHEN the benchmark is pointed at it
    proc = _bench("latency", "--quick", "--out", str(tmp_path), "--model-root", str(resnet18_root),
                  "--model-name", NAME, "--model-version", "missing", timeout=120)
    # THEN it exits 1 with one line naming what is missing, and writes nothing
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot use {NAME}/missing under ")
    assert not (tmp_path / "latency.json").exists()
