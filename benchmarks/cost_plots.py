"""The cost report's two plots, drawn with matplotlib's object API on the Agg canvas (PNG).

No pyplot: it keeps global state and may pick an interactive backend; `Figure` + `FigureCanvasAgg`
render headless and leave nothing behind between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from benchmarks.cost_format import format_requests, format_usd
from benchmarks.cost_latency import LatencyReport
from benchmarks.cost_model import (
    lambda_breakpoints,
    lambda_side_usd,
    sagemaker_realtime_cost,
    sagemaker_serverless_cost,
)
from benchmarks.cost_pricing import ARCHITECTURES, Pricing
from benchmarks.cost_report import CostEstimate, scenario_at_memory
from benchmarks.cost_scenario import Scenario

COST_VS_REQUESTS = "cost_vs_requests.png"
COST_BY_MEMORY = "cost_by_memory.png"
DEFAULT_MEMORY_SIZES = (512, 1024, 1769, 2048, 3008, 4096, 5308, 6144, 8192, 10240)
_DPI = 110


def _log_grid(low: float, high: float, points: int = 160) -> list[float]:
    span = high / low
    return [low * span ** (i / (points - 1)) for i in range(points)]


def _usd_axis(value: float, _pos: int) -> str:
    return format_usd(value) if value >= 0.01 else f"${value:.3g}"


def plot_cost_vs_requests(result: CostEstimate, path: Path) -> Path:
    """Monthly cost against requests per month (log-log), every option, break-even points marked."""
    s, pricing = result.scenario, result.pricing
    crossings = [c for be in result.break_even.values() for c in be.crossings]
    requests = s.workload.requests_per_month
    low = min(1e3, max(requests, 1.0) / 10, *(c / 10 for c in crossings))
    high = max(1e9, requests * 10, *(c * 10 for c in crossings))
    grid = sorted({*_log_grid(low, high), *crossings, *(b for b in lambda_breakpoints(s, pricing)
                                                        if low <= b <= high)})
    fig = Figure(figsize=(9, 5.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scenario_arch = s.lambda_config.architecture
    for arch in ARCHITECTURES:
        label = f"Lambda {arch} + EFS/S3/ECR" + ("" if arch == scenario_arch else " (same duration)")
        _line(ax, grid, _curve(s.with_lambda(architecture=arch), pricing, "lambda"), label,
              style="-" if arch == scenario_arch else ":", width=2.4 if arch == scenario_arch else 1.4)
    if result.serverless.possible:
        _line(ax, grid, _curve(s, pricing, "serverless"), result.serverless_label(), style="--")
    for name in result.realtime:
        _line(ax, grid, _curve(s, pricing, name), f"SageMaker real-time {name}", style="-.")
    marked = sorted((c, be.option) for be in result.break_even.values() for c in be.crossings)
    for index, (crossing, option) in enumerate(marked):
        cost = lambda_side_usd(s.with_requests(crossing), pricing)
        ax.plot([crossing], [cost], "o", color="black", markersize=6, zorder=5)
        # alternate below/above the point so neighbouring labels do not overprint each other
        ax.annotate(f"{format_requests(crossing)}\n{option}", (crossing, cost), fontsize=7,
                    textcoords="offset points", xytext=(6, -22 if index % 2 == 0 else 8))
    if requests > 0:
        ax.axvline(requests, color="grey", linewidth=1, linestyle=":")
        ax.annotate(f"scenario: {format_requests(requests)}", (requests, ax.get_ylim()[0]), fontsize=8,
                    textcoords="offset points", xytext=(4, 6), color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("requests per month")
    ax.set_ylabel("cost per month (USD)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: format_requests(v)))
    ax.yaxis.set_major_formatter(FuncFormatter(_usd_axis))
    ax.set_title(f"Monthly cost vs volume: {s.workload.duration_ms:,.0f} ms per request, "
                 f"Lambda {s.lambda_config.memory_mb:,} MB (break-even points marked)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def _curve(scenario: Scenario, pricing: Pricing, option: str) -> Callable[[float], float | None]:
    """Monthly cost of `option` ("lambda", "serverless" or an instance type) by requests per month."""
    def cost(requests: float) -> float | None:
        at = scenario.with_requests(requests)
        if option == "lambda":
            return lambda_side_usd(at, pricing)
        if option == "serverless":
            return sagemaker_serverless_cost(at, pricing).total_usd
        return sagemaker_realtime_cost(at, pricing, option).total_usd
    return cost


def _line(ax: Axes, grid: Sequence[float], cost_at: Callable[[float], float | None], label: str, *,
          style: str, width: float = 1.6) -> None:
    """One option's curve; log axes cannot show zero, so non-positive points are left out."""
    points = [(r, cost_at(r)) for r in grid]
    kept = [(r, c) for r, c in points if c is not None and c > 0]
    ax.plot([r for r, _ in kept], [c for _, c in kept], style, label=label, linewidth=width)


def memory_sizes(scenario: Scenario, latency: LatencyReport | None) -> list[int]:
    """Memory sizes to compare: the measured ones when the duration was measured, else a fixed set."""
    sizes = set(DEFAULT_MEMORY_SIZES)
    if scenario.sources.get("duration_ms", "scenario") != "scenario" and latency is not None:
        sizes = {r.memory_mb for r in latency.results}
    return sorted(sizes | {scenario.lambda_config.memory_mb})


def plot_cost_by_memory(result: CostEstimate, latency: LatencyReport | None, path: Path) -> Path:
    """Cost per 1 M requests by Lambda memory size, x86_64 and arm64, SageMaker Serverless beside."""
    s, pricing = result.scenario, result.pricing
    volume = s.workload.requests_per_month if s.workload.requests_per_month > 0 else 1e6
    base = s.with_requests(volume)
    fig = Figure(figsize=(9, 5.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sizes = memory_sizes(s, latency)
    for arch, marker in zip(ARCHITECTURES, ("o", "^")):
        xs, ys = [], []
        for size in sizes:
            at = scenario_at_memory(base, size, latency)
            if at is not None:
                xs.append(size)
                ys.append(lambda_side_usd(at.with_lambda(architecture=arch), pricing) / volume * 1e6)
        ax.plot(xs, ys, marker=marker, label=f"Lambda {arch} + EFS/S3/ECR")
    xs, ys = [], []
    for size in pricing.serverless_limits.memory_mb:
        at = scenario_at_memory(base, size, latency)
        cost = None if at is None else sagemaker_serverless_cost(at, pricing).total_usd
        if cost is not None:
            xs.append(size)
            ys.append(cost / volume * 1e6)
    if xs:
        ax.plot(xs, ys, "s--", label="SageMaker Serverless (same memory)")
    measured = s.sources.get("duration_ms", "scenario") != "scenario"
    how = "measured p50 per size" if measured else f"duration fixed at {s.workload.duration_ms:,.0f} ms"
    ax.set_title(f"Cost per 1M requests by memory size at {format_requests(volume)} requests/month ({how})",
                 fontsize=10)
    ax.set_xlabel("memory (MB)")
    ax.set_ylabel("cost per 1M requests (USD)")
    ax.yaxis.set_major_formatter(FuncFormatter(_usd_axis))
    ax.axvline(s.lambda_config.memory_mb, color="grey", linewidth=1, linestyle=":")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def write_plots(result: CostEstimate, latency: LatencyReport | None, out_dir: Path) -> dict[str, str]:
    """Write both PNGs into `out_dir`; returns {title: file name} for cost.md's relative links."""
    plot_cost_vs_requests(result, out_dir / COST_VS_REQUESTS)
    plot_cost_by_memory(result, latency, out_dir / COST_BY_MEMORY)
    return {"Monthly cost vs requests per month": COST_VS_REQUESTS,
            "Cost per 1M requests by Lambda memory size": COST_BY_MEMORY}
