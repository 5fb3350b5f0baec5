"""Issue 8's targets, each with its measured value and ratio: printed by every run, never asserted.

Timed tests on a shared 2-core machine would fail at random; a table that says how far each
figure is from its target, run after run, is what tells whether an optimization bought anything.
Every row is measured at the thread count of 3,008 MB (2 vCPUs; fewer if this machine has fewer
cores), on the Classifier path with the ~1 MP photo unless it says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.cost_latency import variant_label
from benchmarks.latency_roofline import Roofline

TARGET_MEMORY_MB = 3008  # 2 vCPUs: issue 8's "2 threads"
INT8_ROOFLINE = 0.6
FP32_ROOFLINE = 1.1
DECODE_TARGETS_MS = {"1mp": 4.0, "4mp": 12.0}
COLD_START_MS = 2000.0
PEAK_RSS_MB = 1024.0
BATCH_SPEEDUP = 1.5


def precision(variant: str) -> str:
    """`int8` for quantized variants (the name says int8), `fp32` for fp32 and its optimized graphs."""
    return "int8" if "int8" in variant.lower() else "fp32"


@dataclass(frozen=True)
class Target:
    """One row of the targets table; `measured` is None when the figure does not exist (n/a)."""

    name: str
    measured: float | None
    target: float
    unit: str
    comparison: str  # "<=" or ">="
    detail: str = ""

    @property
    def ratio(self) -> float | None:
        """measured / target: at most 1 meets a "<=" target, at least 1 a ">=" one."""
        return None if self.measured is None else self.measured / self.target

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured <= self.target if self.comparison == "<=" else self.measured >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "measured": None if self.measured is None else round(self.measured, 3),
                "target": self.target, "unit": self.unit, "comparison": self.comparison,
                "ratio": None if self.ratio is None else round(self.ratio, 3), "met": self.met,
                "detail": self.detail}


@dataclass(frozen=True)
class TargetFigures:
    """The measured figures the targets are judged on."""

    threads: int
    roofline: Roofline
    inference_p50_ms: Mapping[str, float]  # variant -> inference p50 at `threads`
    decode_preprocess_p50_ms: Mapping[str, float]  # photo label -> decode+preprocess p50 at `threads`
    cold_start_ms: float | None  # fresh runtime process to first response (emulator)
    peak_rss_mb: float | None
    batch_speedup: float | None  # single-request ms per image / batch ms per image
    batch_size: int | None
    batch_variant: str | None = None  # the variant served by default, which the batch ran
    engines: Mapping[str, str] = field(default_factory=dict)  # variant -> "onnxruntime" | "torch"
    served_variant: str | None = None  # what the function serves without MODEL_VARIANT
    torch_imported: bool | None = None  # whether the fresh serving process imported torch
    decode_split_ms: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # label -> (decode, preprocess)
    decode_variant: str | None = None  # whose Classifier the decode figures come from (the served one if measured)

    def label(self, variant: str | None) -> str:
        """`int8 (onnxruntime)`: a variant and the engine that ran it, for the detail column."""
        if variant is None:
            return "variant unknown"
        return variant_label(variant, self.engines.get(variant))


def evaluate(f: TargetFigures) -> tuple[Target, ...]:
    """Every target of issue 8 against the figures (n/a rows say why)."""
    rows = [_roofline_target(f, "int8", INT8_ROOFLINE), _roofline_target(f, "fp32", FP32_ROOFLINE)]
    served = f.label(f.served_variant)
    decoded_by = f.label(f.decode_variant or f.served_variant)
    for label, limit in DECODE_TARGETS_MS.items():
        ms = f.decode_preprocess_p50_ms.get(label)
        split = f.decode_split_ms.get(label)
        detail = f"Classifier of {decoded_by}" if split is None else \
            f"decode {split[0]:.1f} + preprocess {split[1]:.1f} ms (p50 each), Classifier of {decoded_by}"
        rows.append(Target(f"decode + preprocess p50, {label} JPEG", ms, limit, "ms", "<=",
                           detail if ms is not None else f"n/a: no {label} photo measured"))
    rows.append(Target("cold start: runtime start to first response", f.cold_start_ms, COLD_START_MS, "ms", "<=",
                       f"emulator, weights on local disk, {served}" if f.cold_start_ms is not None
                       else "n/a: not measured"))
    torch_note = "" if f.torch_imported is None else f", torch imported: {'yes' if f.torch_imported else 'no'}"
    rows.append(Target("peak RSS (cold start + largest photo)", f.peak_rss_mb, PEAK_RSS_MB, "MB", "<=",
                       f"VmHWM of a fresh serving process, {served}{torch_note}" if f.peak_rss_mb is not None
                       else "n/a: not measured"))
    name = "batch throughput per image vs single requests"
    if f.batch_speedup is None:
        rows.append(Target(name, None, BATCH_SPEEDUP, "x", ">=", "n/a: not measured"))
    else:
        rows.append(Target(name, f.batch_speedup, BATCH_SPEEDUP, "x", ">=",
                           f"direct invocation, batch of {f.batch_size} vs single, 1mp photo, "
                           f"{f.label(f.batch_variant)}"))
    return tuple(rows)


def _roofline_target(f: TargetFigures, kind: str, factor: float) -> Target:
    """The fastest variant of `kind` against `factor` x the fp32 roofline time at the target threads."""
    roof_ms = f.roofline.time_ms(f.threads)
    name = f"{'int8' if kind == 'int8' else 'best fp32'} inference p50 <= {factor} x roofline"
    goal_ms = factor * roof_ms
    measured = {v: ms for v, ms in f.inference_p50_ms.items() if precision(v) == kind}
    if not measured:
        return Target(name, None, goal_ms, "ms", "<=", f"n/a: no {kind} variant")
    variant, ms = min(measured.items(), key=lambda item: item[1])
    threads = f"{f.threads} thread{'s' if f.threads != 1 else ''}"
    return Target(name, ms, goal_ms, "ms", "<=",
                  f"{f.label(variant)}: {ms / roof_ms:.2f} x the roofline ({roof_ms:.1f} ms at {threads})")


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.1f} {unit}"


def targets_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table printed at the end of every run and written into latency.md.

    Takes the rows' JSON form (`Target.to_dict()`), so a latency.json can be shown again as is.
    """
    lines = ["| target | measured | goal | ratio | met | detail |", "|---|---:|---:|---:|:---:|---|"]
    for row in rows:
        unit, met, ratio = row["unit"], row.get("met"), row.get("ratio")
        shown_met = "n/a" if met is None else ("yes" if met else "NO")
        goal = f"{'≤' if row['comparison'] == '<=' else '≥'} {format_value(row['target'], unit)}"
        lines.append(f"| {row['name']} | {format_value(row.get('measured'), unit)} | {goal} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {shown_met} | {row.get('detail', '')} |")
    return "\n".join(lines)
