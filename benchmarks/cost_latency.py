"""The latency.json schema: what the latency benchmark writes and the cost model reads.

One module owns the shape so that writer and reader cannot drift: the latency benchmark builds a
`LatencyReport` and calls `save_latency`; the cost model calls `load_latency` and
`select_warm_result`. Unknown keys are kept out of the dataclasses but do not fail the load, so
the writer may add fields without breaking older readers. docs/benchmarks.md shows an example.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.exceptions import LatencyFileError

SCHEMA_VERSION = 1
PATHS = ("emulator", "classifier")  # preference order: end to end through the Function URL first
DEFAULT_IMAGE = "1mp"
DEFAULT_VARIANT = "fp32"
"""What a latency.json without `served_variant` (written before the ONNX variants) stands for."""


def variant_label(variant: str, engine: str | None) -> str:
    """`int8 (onnxruntime)`: a weights variant and the engine that runs it; the bare variant when unknown."""
    return f"{variant} ({engine})" if engine else variant


@dataclass(frozen=True)
class LatencyResult:
    """Warm latency of one configuration; `p50_ms` etc. are end to end for that `path`."""

    memory_mb: int
    threads: int
    variant: str
    image: str
    path: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    samples: int | None = None
    steps: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ColdStart:
    """One cold start; `init_ms` is the init phase Lambda bills (the emulator's init duration)."""

    init_ms: float
    first_response_ms: float | None = None
    parts_ms: Mapping[str, float] = field(default_factory=dict)
    variant: str | None = None  # the weights variant that answered (None: not recorded)
    engine: str | None = None  # what ran it: "onnxruntime" or "torch"


@dataclass(frozen=True)
class LatencyReport:
    """The whole latency.json."""

    results: tuple[LatencyResult, ...]
    machine: Mapping[str, Any] = field(default_factory=dict)
    recommended_memory_mb: int | None = None
    cold_start: ColdStart | None = None
    peak_rss_mb: float | None = None
    # Written by the latency benchmark for people and for issue 8's targets; the cost model does not
    # read them. `roofline`: matmul peak and model FLOPs; `targets`: rows of {name, measured, target,
    # ratio, met, note}; `details`: thread plan, cold-start samples, photos, batch run, rules used.
    roofline: Mapping[str, Any] = field(default_factory=dict)
    targets: tuple[Mapping[str, Any], ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)
    # What the cost model prices by default: the variant the function serves without MODEL_VARIANT
    # (its warm p50 and `cold_start`), the engine of each variant, the cold start of every other
    # variant measured as deployed, and each variant's weights file (read from EFS per cold start).
    served_variant: str | None = None
    engines: Mapping[str, str] = field(default_factory=dict)
    variant_cold_starts: Mapping[str, ColdStart] = field(default_factory=dict)
    model_files_mb: Mapping[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (results as a list, absent optionals as null)."""
        data = asdict(self)
        data["results"] = [asdict(r) for r in self.results]
        data["targets"] = [dict(t) for t in self.targets]
        return data


def save_latency(report: LatencyReport, path: str | Path) -> None:
    """Write `report` as latency.json (what the latency benchmark calls)."""
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_latency(path: str | Path) -> LatencyReport:
    """Read and check a latency.json; raises LatencyFileError naming the bad key."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise LatencyFileError(f"cannot read latency file {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise LatencyFileError(f"latency file {path} is not valid JSON: {exc}") from exc
    return latency_from_dict(data, str(path))


def latency_from_dict(data: Any, where: str = "latency.json") -> LatencyReport:
    """Build a `LatencyReport` from parsed JSON."""
    if not isinstance(data, dict):
        raise LatencyFileError(f"{where}: the top level must be an object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise LatencyFileError(f"{where}: schema_version {version!r} is not {SCHEMA_VERSION}; "
                               "re-run `python -m benchmarks latency`")
    raw_results = data.get("results")
    if not isinstance(raw_results, list):
        raise LatencyFileError(f"{where}: `results` must be a list")
    results = tuple(_result(r, f"{where}: results[{i}]") for i, r in enumerate(raw_results))
    cold = data.get("cold_start")
    machine = data.get("machine") or {}
    if not isinstance(machine, dict):
        raise LatencyFileError(f"{where}: `machine` must be an object")
    recommended = data.get("recommended_memory_mb")
    roofline, details = data.get("roofline") or {}, data.get("details") or {}
    targets = data.get("targets") or []
    if not isinstance(roofline, dict) or not isinstance(details, dict):
        raise LatencyFileError(f"{where}: `roofline` and `details` must be objects")
    if not isinstance(targets, list | tuple) or not all(isinstance(t, dict) for t in targets):
        raise LatencyFileError(f"{where}: `targets` must be a list of objects")
    return LatencyReport(
        results=results,
        machine=machine,
        recommended_memory_mb=None if recommended is None else int(_number(recommended, where,
                                                                           "recommended_memory_mb")),
        cold_start=None if cold is None else _cold_start(cold, f"{where}: cold_start"),
        peak_rss_mb=None if data.get("peak_rss_mb") is None else _number(data["peak_rss_mb"], where,
                                                                         "peak_rss_mb"),
        roofline=roofline,
        targets=tuple(targets),
        details=details,
        served_variant=_optional_text(data, where, "served_variant"),
        engines=_text_map(data.get("engines"), where, "engines"),
        variant_cold_starts=_cold_starts(data.get("variant_cold_starts"), where),
        model_files_mb=_number_map(data.get("model_files_mb"), where, "model_files_mb"),
    )


def priced_variant(report: LatencyReport, variant: str | None = None) -> str:
    """`variant` if given, else the one the function serves by default (fp32 for older files)."""
    return variant or report.served_variant or DEFAULT_VARIANT


def select_cold_start(report: LatencyReport, variant: str | None = None) -> ColdStart:
    """The cold start of `variant` (default: the served one) as the emulator measured it.

    A file from before variants were recorded has one cold start of unknown variant, which stands
    for any (as it always did).
    """
    wanted = priced_variant(report, variant)
    headline = report.cold_start
    if headline is not None and headline.variant in (None, wanted):
        return headline
    found = report.variant_cold_starts.get(wanted)
    if found is not None:
        return found
    measured = sorted({*report.variant_cold_starts, *([headline.variant] if headline and headline.variant else [])})
    raise LatencyFileError(f"no cold start of variant {wanted!r} was measured (measured: "
                           f"{', '.join(measured) or 'none'}); a full latency run measures every variant")


def select_warm_result(
    report: LatencyReport,
    memory_mb: int,
    *,
    image: str | None = None,
    variant: str | None = None,
    path: str | None = None,
) -> LatencyResult:
    """The measurement to use for a function of `memory_mb`.

    Lambda's CPU share grows with memory, so the measurement at the largest measured size not
    above `memory_mb` is a safe (never optimistic) stand-in for sizes that were not measured.
    Without `path`, the emulator (end to end through the Function URL) is preferred; without
    `variant`, the variant the function serves by default (`priced_variant`).
    """
    image = image or DEFAULT_IMAGE
    variant = priced_variant(report, variant)
    candidates = [r for r in report.results if r.image == image and r.variant == variant]
    if not candidates:
        seen = sorted({f"{r.image}/{r.variant}" for r in report.results}) or ["none"]
        raise LatencyFileError(f"no warm result for image {image!r}, variant {variant!r}; "
                               f"measured image/variant: {', '.join(seen)}")
    wanted_paths = (path,) if path else PATHS
    for wanted in wanted_paths:
        on_path = [r for r in candidates if r.path == wanted]
        fitting = [r for r in on_path if r.memory_mb <= memory_mb]
        if fitting:
            return max(fitting, key=lambda r: (r.memory_mb, -r.p50_ms))
        if on_path and path:
            sizes = ", ".join(str(s) for s in sorted({r.memory_mb for r in on_path}))
            raise LatencyFileError(f"no warm result at or below {memory_mb} MB (path {wanted!r}); "
                                   f"measured memory sizes: {sizes} MB")
    sizes = ", ".join(str(s) for s in sorted({r.memory_mb for r in candidates}))
    raise LatencyFileError(f"no warm result at or below {memory_mb} MB for paths {', '.join(wanted_paths)}; "
                           f"measured memory sizes: {sizes} MB")


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise LatencyFileError(f"{where}: `{key}` must be a number >= 0, got {value!r}")
    return float(value)


def _text(data: Mapping[str, Any], where: str, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise LatencyFileError(f"{where}: `{key}` must be a non-empty string")
    return value


def _optional_text(data: Mapping[str, Any], where: str, key: str) -> str | None:
    return None if data.get(key) is None else _text(data, where, key)


def _text_map(value: Any, where: str, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise LatencyFileError(f"{where}: `{key}` must map a variant to a non-empty string")
    return dict(value)


def _number_map(value: Any, where: str, key: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LatencyFileError(f"{where}: `{key}` must map a variant to a number")
    return {k: _number(v, where, f"{key}.{k}") for k, v in value.items()}


def _cold_starts(value: Any, where: str) -> dict[str, ColdStart]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LatencyFileError(f"{where}: `variant_cold_starts` must map a variant to a cold start")
    return {k: _cold_start(v, f"{where}: variant_cold_starts.{k}") for k, v in value.items()}


def _result(data: Any, where: str) -> LatencyResult:
    if not isinstance(data, dict):
        raise LatencyFileError(f"{where}: must be an object")
    for key in ("memory_mb", "threads", "p50_ms", "p90_ms", "p99_ms"):
        if key not in data:
            raise LatencyFileError(f"{where}: missing `{key}`")
    steps = data.get("steps") or {}
    if not isinstance(steps, dict) or not all(isinstance(v, dict) for v in steps.values()):
        raise LatencyFileError(f"{where}: `steps` must map a step name to {{\"p50_ms\": ...}}")
    samples = data.get("samples")
    return LatencyResult(
        memory_mb=int(_number(data["memory_mb"], where, "memory_mb")),
        threads=int(_number(data["threads"], where, "threads")),
        variant=_text(data, where, "variant"),
        image=_text(data, where, "image"),
        path=_text(data, where, "path"),
        p50_ms=_number(data["p50_ms"], where, "p50_ms"),
        p90_ms=_number(data["p90_ms"], where, "p90_ms"),
        p99_ms=_number(data["p99_ms"], where, "p99_ms"),
        samples=None if samples is None else int(_number(samples, where, "samples")),
        steps={name: {k: _number(v, f"{where}.steps.{name}", k) for k, v in step.items()}
               for name, step in steps.items()},
    )


def _cold_start(data: Any, where: str) -> ColdStart:
    if not isinstance(data, dict) or "init_ms" not in data:
        raise LatencyFileError(f"{where}: must be an object with `init_ms`")
    parts = data.get("parts_ms") or {}
    if not isinstance(parts, dict):
        raise LatencyFileError(f"{where}: `parts_ms` must be an object")
    first = data.get("first_response_ms")
    return ColdStart(
        init_ms=_number(data["init_ms"], where, "init_ms"),
        first_response_ms=None if first is None else _number(first, where, "first_response_ms"),
        parts_ms={k: _number(v, where, f"parts_ms.{k}") for k, v in parts.items()},
        variant=_optional_text(data, where, "variant"),
        engine=_optional_text(data, where, "engine"),
    )
