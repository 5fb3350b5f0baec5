"""The price table: benchmarks/pricing.toml read into typed, frozen records.

Prices live in a data file, not in code, so that updating one is a one-line change that keeps its
source URL and as-of date beside it; the report prints both for every price it used.
"""

from __future__ import annotations

import tomllib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from benchmarks.cost_format import format_unit_price
from benchmarks.exceptions import PricingError

ARCHITECTURES = ("x86_64", "arm64")
DEFAULT_PRICING_FILE = "pricing.toml"


@dataclass(frozen=True, kw_only=True)
class Sourced(ABC):
    """Where an entry of the table came from: the page and the day it was read."""

    source: str
    as_of: date
    note: str = ""

    @abstractmethod
    def describe(self) -> str:
        """The entry in words, for the report's price table."""


@dataclass(frozen=True, kw_only=True)
class Price(Sourced):
    """One unit price."""

    usd: float
    unit: str

    def describe(self) -> str:
        return f"{format_unit_price(self.usd)} per {self.unit}"


@dataclass(frozen=True)
class Tier:
    """A volume tier: `usd` per unit for usage up to `up_to` (None: no upper bound)."""

    up_to: float | None
    usd: float


@dataclass(frozen=True, kw_only=True)
class TieredPrice(Sourced):
    """A price that drops with monthly volume (Lambda duration)."""

    tiers: tuple[Tier, ...]
    unit: str

    def cost(self, usage: float) -> float:
        """Cost of `usage` units in one month, each tier priced at its own rate."""
        total, floor = 0.0, 0.0
        for tier in self.tiers:
            ceiling = float("inf") if tier.up_to is None else tier.up_to
            if usage <= floor:
                break
            total += (min(usage, ceiling) - floor) * tier.usd
            floor = ceiling
        return total

    def describe(self) -> str:
        parts, floor = [], 0.0
        for tier in self.tiers:
            span = f"over {floor / 1e9:g} B" if tier.up_to is None else f"to {tier.up_to / 1e9:g} B"
            parts.append(f"{format_unit_price(tier.usd)} ({span})")
            floor = tier.up_to or floor
        return f"per {self.unit}: " + ", ".join(parts)

    def thresholds(self) -> tuple[float, ...]:
        """Usage levels where the rate changes."""
        return tuple(t.up_to for t in self.tiers if t.up_to is not None)


@dataclass(frozen=True, kw_only=True)
class FreeTier(Sourced):
    """Lambda's monthly free allowance."""

    requests: float
    gb_seconds: float

    def describe(self) -> str:
        return f"{self.requests:,.0f} requests and {self.gb_seconds:,.0f} GB-s per month"


@dataclass(frozen=True, kw_only=True)
class ServerlessLimits(Sourced):
    """What a SageMaker Serverless endpoint accepts."""

    memory_mb: tuple[int, ...]
    max_duration_s: float
    max_payload_mb: float

    def describe(self) -> str:
        sizes = ", ".join(f"{m:,}" for m in self.memory_mb)
        return (f"memory {sizes} MB; at most {self.max_duration_s:g} s and {self.max_payload_mb:g} MB "
                "per invocation")


@dataclass(frozen=True)
class Pricing:
    """Every price and limit the cost model uses (one region)."""

    region: str
    hours_per_month: float
    lambda_duration: Mapping[str, TieredPrice]
    lambda_requests: Price
    lambda_ephemeral: Price
    lambda_pc_capacity: Mapping[str, Price]
    lambda_pc_duration: Mapping[str, Price]
    lambda_free_tier: FreeTier
    efs_storage: Price
    efs_elastic_read: Price
    s3_storage: Price
    ecr_storage: Price
    serverless_compute: Price
    serverless_limits: ServerlessLimits
    sagemaker_data_in: Price
    sagemaker_data_out: Price
    sagemaker_realtime: Mapping[str, Price]

    @property
    def seconds_per_month(self) -> float:
        return self.hours_per_month * 3600.0

    def entries(self) -> Iterator[tuple[str, Sourced]]:
        """Every entry with a readable name, in table order (for the report's assumptions)."""
        for arch in ARCHITECTURES:
            yield f"Lambda duration ({arch})", self.lambda_duration[arch]
        yield "Lambda requests", self.lambda_requests
        yield "Lambda ephemeral storage", self.lambda_ephemeral
        for arch in ARCHITECTURES:
            yield f"Lambda provisioned concurrency ({arch})", self.lambda_pc_capacity[arch]
            yield f"Lambda provisioned duration ({arch})", self.lambda_pc_duration[arch]
        yield "Lambda free tier", self.lambda_free_tier
        yield "EFS storage", self.efs_storage
        yield "EFS elastic reads", self.efs_elastic_read
        yield "S3 storage", self.s3_storage
        yield "ECR storage", self.ecr_storage
        yield "SageMaker Serverless compute", self.serverless_compute
        yield "SageMaker Serverless limits", self.serverless_limits
        yield "SageMaker data in", self.sagemaker_data_in
        yield "SageMaker data out", self.sagemaker_data_out
        for name, price in self.sagemaker_realtime.items():
            yield f"SageMaker real-time {name}", price


def load_pricing(path: str | Path | None = None) -> Pricing:
    """Read a price table; without `path`, the one shipped as benchmarks/pricing.toml."""
    try:
        if path is None:
            text = resources.files("benchmarks").joinpath(DEFAULT_PRICING_FILE).read_text(encoding="utf-8")
            where = f"benchmarks/{DEFAULT_PRICING_FILE}"
        else:
            text = Path(path).read_text(encoding="utf-8")
            where = str(path)
        data = tomllib.loads(text)
    except OSError as exc:
        raise PricingError(f"cannot read price table {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PricingError(f"price table {path} is not valid TOML: {exc}") from exc
    return _parse(data, where)


def _parse(data: dict[str, Any], where: str) -> Pricing:
    reader = _Reader(data, where)
    meta = reader.table("meta")
    return Pricing(
        region=str(reader.value(meta, "meta", "region")),
        hours_per_month=reader.number(meta, "meta", "hours_per_month"),
        lambda_duration={a: reader.tiered(f"lambda.duration.{a}") for a in ARCHITECTURES},
        lambda_requests=reader.price("lambda.requests"),
        lambda_ephemeral=reader.price("lambda.ephemeral_storage"),
        lambda_pc_capacity={a: reader.price(f"lambda.provisioned_concurrency.{a}") for a in ARCHITECTURES},
        lambda_pc_duration={a: reader.price(f"lambda.provisioned_duration.{a}") for a in ARCHITECTURES},
        lambda_free_tier=reader.free_tier("lambda.free_tier"),
        efs_storage=reader.price("efs.storage"),
        efs_elastic_read=reader.price("efs.elastic_read"),
        s3_storage=reader.price("s3.storage"),
        ecr_storage=reader.price("ecr.storage"),
        serverless_compute=reader.price("sagemaker_serverless.compute"),
        serverless_limits=reader.limits("sagemaker_serverless.limits"),
        sagemaker_data_in=reader.price("sagemaker.data_in"),
        sagemaker_data_out=reader.price("sagemaker.data_out"),
        sagemaker_realtime={
            name: reader.price(f'sagemaker_realtime."{name}"', ("sagemaker_realtime", name))
            for name in reader.table("sagemaker_realtime")
        },
    )


class _Reader:
    """Walks the TOML tree and names the missing key (file + dotted path) when one is absent."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def table(self, dotted: str, parts: tuple[str, ...] | None = None) -> dict[str, Any]:
        node: Any = self.data
        for part in parts or tuple(dotted.split(".")):
            if not isinstance(node, dict) or part not in node:
                raise PricingError(f"{self.where}: missing table [{dotted}]")
            node = node[part]
        if not isinstance(node, dict):
            raise PricingError(f"{self.where}: [{dotted}] must be a table")
        return node

    def value(self, table: dict[str, Any], dotted: str, key: str) -> Any:
        if key not in table:
            raise PricingError(f"{self.where}: [{dotted}] lacks `{key}`")
        return table[key]

    def number(self, table: dict[str, Any], dotted: str, key: str) -> float:
        value = self.value(table, dotted, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise PricingError(f"{self.where}: [{dotted}] `{key}` must be a number >= 0, got {value!r}")
        return float(value)

    def provenance(self, table: dict[str, Any], dotted: str) -> tuple[str, date, str]:
        source = self.value(table, dotted, "source")
        as_of = self.value(table, dotted, "as_of")
        if not isinstance(source, str) or not source.startswith("https://"):
            raise PricingError(f"{self.where}: [{dotted}] `source` must be an https URL")
        if not isinstance(as_of, date):
            raise PricingError(f"{self.where}: [{dotted}] `as_of` must be a TOML date like 2026-11-22")
        return source, as_of, str(table.get("note", ""))

    def price(self, dotted: str, parts: tuple[str, ...] | None = None) -> Price:
        table = self.table(dotted, parts)
        source, as_of, note = self.provenance(table, dotted)
        return Price(
            usd=self.number(table, dotted, "usd"), unit=str(self.value(table, dotted, "unit")),
            source=source, as_of=as_of, note=note,
        )

    def tiered(self, dotted: str) -> TieredPrice:
        table = self.table(dotted)
        source, as_of, note = self.provenance(table, dotted)
        raw = self.value(table, dotted, "tiers")
        if not isinstance(raw, list) or not raw:
            raise PricingError(f"{self.where}: [{dotted}] `tiers` must be a non-empty list")
        tiers = tuple(
            Tier(up_to=None if "up_to" not in t else self.number(t, dotted, "up_to"),
                 usd=self.number(t, dotted, "usd"))
            for t in raw
        )
        bounds = [t.up_to for t in tiers[:-1] if t.up_to is not None]
        if tiers[-1].up_to is not None or len(bounds) != len(tiers) - 1 or bounds != sorted(bounds):
            raise PricingError(
                f"{self.where}: [{dotted}] tiers need rising `up_to` bounds and a last tier without one"
            )
        return TieredPrice(tiers=tiers, unit=str(self.value(table, dotted, "unit")),
                           source=source, as_of=as_of, note=note)

    def free_tier(self, dotted: str) -> FreeTier:
        table = self.table(dotted)
        source, as_of, note = self.provenance(table, dotted)
        return FreeTier(requests=self.number(table, dotted, "requests"),
                        gb_seconds=self.number(table, dotted, "gb_seconds"),
                        source=source, as_of=as_of, note=note)

    def limits(self, dotted: str) -> ServerlessLimits:
        table = self.table(dotted)
        source, as_of, note = self.provenance(table, dotted)
        sizes = self.value(table, dotted, "memory_mb")
        if not isinstance(sizes, list) or not sizes or not all(isinstance(s, int) for s in sizes):
            raise PricingError(f"{self.where}: [{dotted}] `memory_mb` must be a list of integers")
        return ServerlessLimits(
            memory_mb=tuple(sorted(sizes)),
            max_duration_s=self.number(table, dotted, "max_duration_s"),
            max_payload_mb=self.number(table, dotted, "max_payload_mb"),
            source=source, as_of=as_of, note=note,
        )
