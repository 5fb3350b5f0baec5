"""Percentiles of timing samples, as latency.json reports them.

Percentiles use linear interpolation between the two nearest ranks (numpy's default), so p50 of
an even count is the mean of the middle two and p99 of a small sample is close to its maximum:
with 30 samples p99 says "about the worst", which is why the sample count is always reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from benchmarks.exceptions import LatencyBenchmarkError


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values` by linear interpolation."""
    if not values:
        raise LatencyBenchmarkError("no samples to take a percentile of")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean and min in ms (rounded to µs) of one series of samples."""
    return {
        "p50_ms": round(percentile(values, 50), 3),
        "p90_ms": round(percentile(values, 90), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "mean_ms": round(sum(values) / len(values), 3),
        "min_ms": round(min(values), 3),
    }


def summarize_steps(samples: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per step name, the summary of that step over samples (each a {step: ms} mapping)."""
    series: dict[str, list[float]] = {}
    for sample in samples:
        for step, value in sample.items():
            series.setdefault(step, []).append(float(value))
    return {step: summarize(values) for step, values in series.items()}


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)
