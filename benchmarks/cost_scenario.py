"""Cost scenarios: a TOML file describing one workload, resolved into typed inputs.

A scenario may leave the figures a benchmark measures (duration, init, memory size) to a
latency.json; resolution records where each one came from, so the report can say so. Typos are
errors rather than silently ignored keys, because a misspelt key would quietly change a bill.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.cost_latency import (
    DEFAULT_VARIANT,
    LatencyReport,
    priced_variant,
    select_cold_start,
    select_warm_result,
)
from benchmarks.cost_pricing import ARCHITECTURES
from benchmarks.exceptions import BenchmarkError, ScenarioError

LAMBDA_MEMORY_MB = (128, 10_240)
LAMBDA_EPHEMERAL_MB = (512, 10_240)
LAMBDA_TIMEOUT_MS = 900_000
LAMBDA_PAYLOAD_KB = 6 * 1024

_KEYS: dict[str, set[str]] = {
    "workload": {"requests_per_month", "duration_ms", "init_ms", "cold_start_fraction",
                 "payload_in_kb", "payload_out_kb"},
    "lambda": {"memory_mb", "ephemeral_mb", "architecture", "provisioned_concurrency", "free_tier"},
    "sagemaker_serverless": {"memory_mb"},
    "sagemaker_realtime": {"instances"},
    "supporting": {"model_mb", "cold_start_read_mb", "image_mb"},
    "latency": {"image", "variant", "path"},
}


@dataclass(frozen=True)
class Workload:
    """What the function does each month. Durations are as measured (billing rounds them up)."""

    requests_per_month: float
    duration_ms: float
    init_ms: float
    cold_start_fraction: float = 0.01
    payload_in_kb: float = 100.0
    payload_out_kb: float = 2.0


@dataclass(frozen=True)
class LambdaConfig:
    """The function's configuration."""

    memory_mb: int
    ephemeral_mb: int = 512
    architecture: str = "x86_64"
    provisioned_concurrency: int = 0
    free_tier: bool = False


@dataclass(frozen=True)
class Supporting:
    """Sizes of what Lambda needs beside it: the model on EFS and S3, the image in ECR.

    `model_mb` is stored (every file of the version); `cold_start_read_mb` is what one cold start
    reads from EFS (only the priced variant's weights file); None means all of `model_mb`.
    """

    model_mb: float = 100.0
    image_mb: float = 1024.0
    cold_start_read_mb: float | None = None

    @property
    def read_mb(self) -> float:
        return self.model_mb if self.cold_start_read_mb is None else self.cold_start_read_mb


@dataclass(frozen=True)
class LatencyChoice:
    """Which latency.json measurement stands for the workload.

    None: the default (1 MP photo; the variant the function serves; the emulator path if measured).
    Once resolved against a latency.json, `variant` is the variant priced.
    """

    image: str | None = None
    variant: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Scenario:
    """One fully resolved scenario; `sources` says where measured-or-given inputs came from."""

    name: str
    workload: Workload
    lambda_config: LambdaConfig
    serverless_memory_mb: int
    supporting: Supporting = Supporting()
    realtime_instances: tuple[str, ...] | None = None
    latency_choice: LatencyChoice = LatencyChoice()
    sources: Mapping[str, str] = field(default_factory=dict)
    engine: str | None = None  # what runs the priced variant, when latency.json says

    @property
    def variant(self) -> str | None:
        """The weights variant whose measurements are priced (None: no latency file, nothing measured)."""
        return self.latency_choice.variant

    def with_requests(self, requests_per_month: float) -> Scenario:
        """The same scenario at another monthly volume (for curves and break-even)."""
        return replace(self, workload=replace(self.workload, requests_per_month=requests_per_month))

    def with_lambda(self, **changes: Any) -> Scenario:
        """The same scenario with other Lambda settings (e.g. the other architecture)."""
        return replace(self, lambda_config=replace(self.lambda_config, **changes))


def load_scenario(path: str | Path, latency: LatencyReport | None = None) -> Scenario:
    """Read a scenario file, taking omitted measured inputs from `latency` when given."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {path} is not valid TOML: {exc}") from exc
    return scenario_from_dict(data, name=Path(path).stem, latency=latency, where=str(path))


def scenario_from_dict(
    data: Mapping[str, Any],
    *,
    name: str = "scenario",
    latency: LatencyReport | None = None,
    where: str = "scenario",
) -> Scenario:
    """Validate parsed TOML and resolve it into a `Scenario`."""
    check = _Checker(where)
    check.known_keys(data)
    work, lam = data.get("workload", {}), data.get("lambda", {})
    sources: dict[str, str] = {}

    memory_mb = _resolve_memory(check, lam, latency, sources)
    choice = _resolve_choice(check, data.get("latency", {}), latency, sources)
    cold_fraction = check.number(work, "workload", "cold_start_fraction", 0.01, high=1.0)
    workload = Workload(
        requests_per_month=check.number(work, "workload", "requests_per_month"),
        duration_ms=_resolve_duration(check, work, latency, memory_mb, choice, sources),
        init_ms=_resolve_init(check, work, latency, choice, cold_fraction, sources),
        cold_start_fraction=cold_fraction,
        payload_in_kb=check.number(work, "workload", "payload_in_kb", 100.0, high=LAMBDA_PAYLOAD_KB),
        payload_out_kb=check.number(work, "workload", "payload_out_kb", 2.0, high=LAMBDA_PAYLOAD_KB),
    )
    architecture = check.text(lam, "lambda", "architecture", "x86_64")
    if architecture not in ARCHITECTURES:
        raise ScenarioError(f"{where}: lambda.architecture must be one of {', '.join(ARCHITECTURES)}, "
                            f"got {architecture!r}")
    free_tier = lam.get("free_tier", False)
    if not isinstance(free_tier, bool):
        raise ScenarioError(f"{where}: lambda.free_tier must be true or false")
    lambda_config = LambdaConfig(
        memory_mb=memory_mb,
        ephemeral_mb=check.integer(lam, "lambda", "ephemeral_mb", 512, *LAMBDA_EPHEMERAL_MB),
        architecture=architecture,
        provisioned_concurrency=check.integer(lam, "lambda", "provisioned_concurrency", 0, 0, 100_000),
        free_tier=free_tier,
    )
    serverless_memory = _resolve_serverless_memory(check, data.get("sagemaker_serverless", {}),
                                                   memory_mb, sources)
    supporting = _resolve_supporting(check, data.get("supporting", {}), latency, choice, sources)
    return Scenario(
        name=name,
        workload=workload,
        lambda_config=lambda_config,
        serverless_memory_mb=serverless_memory,
        supporting=supporting,
        realtime_instances=check.names(data.get("sagemaker_realtime", {}), "sagemaker_realtime", "instances"),
        latency_choice=choice,
        sources=sources,
        engine=latency.engines.get(choice.variant) if latency is not None and choice.variant else None,
    )


def _resolve_choice(check: _Checker, table: Mapping[str, Any], latency: LatencyReport | None,
                    sources: dict[str, str]) -> LatencyChoice:
    """The scenario's [latency] table, with the variant filled in from latency.json when omitted."""
    choice = LatencyChoice(**{k: check.text(table, "latency", k, None) for k in ("image", "variant", "path")})
    if choice.variant is not None:
        sources["variant"] = "scenario"
    elif latency is not None:
        choice = replace(choice, variant=priced_variant(latency))
        sources["variant"] = ("latency.json served_variant (what the function serves without MODEL_VARIANT)"
                              if latency.served_variant else
                              f"{DEFAULT_VARIANT} (latency.json does not say which variant is served)")
    return choice


def _resolve_memory(check: _Checker, lam: Mapping[str, Any], latency: LatencyReport | None,
                    sources: dict[str, str]) -> int:
    if "memory_mb" in lam:
        sources["memory_mb"] = "scenario"
        return check.integer(lam, "lambda", "memory_mb", None, *LAMBDA_MEMORY_MB)
    if latency is not None and latency.recommended_memory_mb is not None:
        sources["memory_mb"] = "latency.json recommended_memory_mb"
        return check.integer({"memory_mb": latency.recommended_memory_mb}, "latency.json",
                             "memory_mb", None, *LAMBDA_MEMORY_MB)
    raise ScenarioError(f"{check.where}: set lambda.memory_mb, or pass --latency with a "
                        "recommended_memory_mb")


def _resolve_duration(check: _Checker, work: Mapping[str, Any], latency: LatencyReport | None,
                      memory_mb: int, choice: LatencyChoice, sources: dict[str, str]) -> float:
    if "duration_ms" in work:
        sources["duration_ms"] = "scenario"
        return check.number(work, "workload", "duration_ms", low=1e-9, high=LAMBDA_TIMEOUT_MS)
    if latency is None:
        raise ScenarioError(f"{check.where}: set workload.duration_ms, or pass --latency latency.json")
    try:
        result = select_warm_result(latency, memory_mb, image=choice.image, variant=choice.variant,
                                    path=choice.path)
    except BenchmarkError as exc:
        raise ScenarioError(f"{check.where}: workload.duration_ms omitted and {exc}") from exc
    sources["duration_ms"] = (f"latency.json warm p50 end to end, path {result.path}, image {result.image}, "
                              f"variant {result.variant}, measured at {result.memory_mb} MB "
                              f"({result.threads} thread{'s' if result.threads != 1 else ''})")
    return result.p50_ms


def _resolve_init(check: _Checker, work: Mapping[str, Any], latency: LatencyReport | None,
                  choice: LatencyChoice, cold_fraction: float, sources: dict[str, str]) -> float:
    if "init_ms" in work:
        sources["init_ms"] = "scenario"
        return check.number(work, "workload", "init_ms", high=LAMBDA_TIMEOUT_MS)
    if latency is not None and (latency.cold_start is not None or latency.variant_cold_starts):
        try:
            cold = select_cold_start(latency, choice.variant)
        except BenchmarkError as exc:
            if cold_fraction > 0:
                raise ScenarioError(f"{check.where}: workload.init_ms omitted and {exc}") from exc
        else:
            where = "cold_start" if cold is latency.cold_start else f"variant_cold_starts.{choice.variant}"
            sources["init_ms"] = f"latency.json {where}.init_ms" + (f", variant {cold.variant}" if cold.variant else "")
            return cold.init_ms
    if cold_fraction == 0:
        sources["init_ms"] = "not needed (cold_start_fraction = 0)"
        return 0.0
    raise ScenarioError(f"{check.where}: cold_start_fraction > 0 needs workload.init_ms, or --latency "
                        "with a cold_start.init_ms")


def _resolve_supporting(check: _Checker, table: Mapping[str, Any], latency: LatencyReport | None,
                        choice: LatencyChoice, sources: dict[str, str]) -> Supporting:
    """Model sizes from the scenario, else from latency.json's weights files, else 100 MB.

    Stored: every variant's file (sync copies the whole version). Read per cold start: only the
    priced variant's file, which the loader reads and hashes.
    """
    files = latency.model_files_mb if latency is not None else {}
    if "model_mb" in table:
        sources["model_mb"] = "scenario"
        model_mb = check.number(table, "supporting", "model_mb")
    elif files:
        sources["model_mb"] = f"latency.json model_files_mb: {', '.join(sorted(files))}"
        model_mb = sum(files.values())
    else:
        sources["model_mb"] = "default"
        model_mb = 100.0
    read_mb: float | None = None
    if "cold_start_read_mb" in table:
        sources["cold_start_read_mb"] = "scenario"
        read_mb = check.number(table, "supporting", "cold_start_read_mb")
    elif choice.variant is not None and choice.variant in files:
        sources["cold_start_read_mb"] = f"latency.json model_files_mb.{choice.variant}"
        read_mb = files[choice.variant]
    else:
        sources["cold_start_read_mb"] = "the whole model (model_mb)"
    return Supporting(model_mb=model_mb, image_mb=check.number(table, "supporting", "image_mb", 1024.0),
                      cold_start_read_mb=read_mb)


def _resolve_serverless_memory(check: _Checker, table: Mapping[str, Any], lambda_memory_mb: int,
                               sources: dict[str, str]) -> int:
    if "memory_mb" in table:
        sources["serverless_memory_mb"] = "scenario"
        return check.integer(table, "sagemaker_serverless", "memory_mb", None, 1, 1_000_000)
    sources["serverless_memory_mb"] = "Lambda memory rounded up to a multiple of 1,024 MB"
    return -(-lambda_memory_mb // 1024) * 1024


class _Checker:
    """Reads typed values and names the file and key when one is wrong."""

    def __init__(self, where: str) -> None:
        self.where = where

    def known_keys(self, data: Mapping[str, Any]) -> None:
        for table, value in data.items():
            if table not in _KEYS:
                raise ScenarioError(f"{self.where}: unknown table [{table}]; known: {', '.join(_KEYS)}")
            if not isinstance(value, dict):
                raise ScenarioError(f"{self.where}: [{table}] must be a table")
            unknown = sorted(set(value) - _KEYS[table])
            if unknown:
                raise ScenarioError(f"{self.where}: unknown key {table}.{unknown[0]}; "
                                    f"known: {', '.join(sorted(_KEYS[table]))}")

    def number(self, table: Mapping[str, Any], section: str, key: str, default: float | None = None,
               *, low: float = 0.0, high: float | None = None) -> float:
        if key not in table:
            if default is None:
                raise ScenarioError(f"{self.where}: missing {section}.{key}")
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{self.where}: {section}.{key} must be a number, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise ScenarioError(f"{self.where}: {section}.{key} must be {bound}, got {value:g}")
        return float(value)

    def integer(self, table: Mapping[str, Any], section: str, key: str, default: int | None,
                low: int, high: int) -> int:
        if key not in table:
            if default is None:
                raise ScenarioError(f"{self.where}: missing {section}.{key}")
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ScenarioError(f"{self.where}: {section}.{key} must be a whole number from {low:,} "
                                f"to {high:,}, got {value!r}")
        return value

    def text(self, table: Mapping[str, Any], section: str, key: str, default: str | None) -> Any:
        value = table.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise ScenarioError(f"{self.where}: {section}.{key} must be a non-empty string")
        return value

    def names(self, table: Mapping[str, Any], section: str, key: str) -> tuple[str, ...] | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ScenarioError(f"{self.where}: {section}.{key} must be a list of instance type names")
        return tuple(value)
