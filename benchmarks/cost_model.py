"""Monthly cost of one scenario on Lambda (+ what it needs beside it) and on SageMaker.

Pure arithmetic over a `Scenario` and a `Pricing`: no I/O, no torch. Every option returns an
`OptionCost` whose line items add up to its total, so the report can show the bill, not just a sum.

Modelling choices (also printed in the report's assumptions):
- Lambda bills each duration rounded up to the next 1 ms; SageMaker Serverless is charged for
  the same (rounded) duration, so both sides run the same workload.
- Cold starts: `cold_start_fraction` x on-demand requests each bill `init_ms` at the duration price
  (init is billed for every function since 2025-08-01). Requests served by provisioned
  concurrency never cold-start.
- Provisioned concurrency is configured all month; traffic is spread evenly, so it serves up to
  `N x seconds per month / duration` requests at the lower provisioned duration price and the
  rest spill over to on-demand.
- The free tier (1 M requests, 400,000 GB-s) is the first usage of the month, shown as a negative
  line item; AWS does not grant it to functions with provisioned concurrency.
- Ephemeral storage above 512 MB is billed for every billed second (invocations and inits).
- GB means 1,024 MB and KB 1,024 bytes, as AWS bills them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from benchmarks.cost_format import format_mb
from benchmarks.cost_pricing import Pricing
from benchmarks.cost_scenario import Scenario
from benchmarks.exceptions import ScenarioError

MB_PER_GB = 1024.0
KB_PER_GB = 1024.0 * 1024.0
FREE_EPHEMERAL_MB = 512


@dataclass(frozen=True)
class OptionCost:
    """One option's monthly bill: `items` add up to `total_usd` (None when impossible)."""

    total_usd: float | None
    items: Mapping[str, float]
    requests_per_month: float
    possible: bool = True
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    details: Mapping[str, float] = field(default_factory=dict)

    @property
    def per_million_usd(self) -> float | None:
        """Cost per 1 M requests at this volume (fixed costs spread over the requests)."""
        if self.total_usd is None or self.requests_per_month <= 0:
            return None
        return self.total_usd / self.requests_per_month * 1e6


@dataclass(frozen=True)
class LambdaUsage:
    """The billable quantities behind a Lambda bill, split by who serves each request."""

    requests: float
    provisioned_requests: float
    on_demand_requests: float
    cold_starts: float
    memory_gb: float
    duration_s: float
    init_s: float
    provisioned_capacity: float

    @property
    def invoke_gb_s(self) -> float:
        return self.on_demand_requests * self.duration_s * self.memory_gb

    @property
    def init_gb_s(self) -> float:
        return self.cold_starts * self.init_s * self.memory_gb

    @property
    def provisioned_gb_s(self) -> float:
        return self.provisioned_requests * self.duration_s * self.memory_gb

    @property
    def billed_seconds(self) -> float:
        return (self.on_demand_requests + self.provisioned_requests) * self.duration_s + \
            self.cold_starts * self.init_s


def billed_seconds(duration_ms: float) -> float:
    """A duration as Lambda bills it: rounded up to the next whole millisecond."""
    return math.ceil(round(duration_ms, 6)) / 1000.0


def lambda_usage(scenario: Scenario, pricing: Pricing) -> LambdaUsage:
    """Split the month's requests between provisioned and on-demand environments."""
    config, work = scenario.lambda_config, scenario.workload
    duration_s = billed_seconds(work.duration_ms)
    capacity = config.provisioned_concurrency * pricing.seconds_per_month / duration_s
    provisioned = min(work.requests_per_month, capacity)
    on_demand = work.requests_per_month - provisioned
    return LambdaUsage(
        requests=work.requests_per_month,
        provisioned_requests=provisioned,
        on_demand_requests=on_demand,
        cold_starts=on_demand * work.cold_start_fraction,
        memory_gb=config.memory_mb / MB_PER_GB,
        duration_s=duration_s,
        init_s=billed_seconds(work.init_ms) if work.init_ms > 0 else 0.0,
        provisioned_capacity=capacity,
    )


def lambda_cost(scenario: Scenario, pricing: Pricing) -> OptionCost:
    """The Lambda bill alone: duration, init, requests, ephemeral storage, provisioned concurrency."""
    config = scenario.lambda_config
    arch = config.architecture
    usage = lambda_usage(scenario, pricing)
    tiered = pricing.lambda_duration[arch]
    on_demand_gb_s = usage.invoke_gb_s + usage.init_gb_s
    on_demand_usd = tiered.cost(on_demand_gb_s)
    share = usage.invoke_gb_s / on_demand_gb_s if on_demand_gb_s > 0 else 1.0
    extra_ephemeral_gb = max(0, config.ephemeral_mb - FREE_EPHEMERAL_MB) / MB_PER_GB
    requests_usd = usage.requests / 1e6 * pricing.lambda_requests.usd
    notes: list[str] = []
    free_usd = 0.0
    if config.free_tier and config.provisioned_concurrency > 0:
        notes.append("free tier not applied: AWS does not grant it to functions with provisioned concurrency")
    elif config.free_tier:
        free = pricing.lambda_free_tier
        free_usd = -(min(usage.requests, free.requests) / 1e6 * pricing.lambda_requests.usd
                     + tiered.cost(min(on_demand_gb_s, free.gb_seconds)))
    items = {
        "duration": on_demand_usd * share,
        "init": on_demand_usd * (1.0 - share),
        "requests": requests_usd,
        "ephemeral_storage": extra_ephemeral_gb * usage.billed_seconds * pricing.lambda_ephemeral.usd,
        "provisioned_concurrency": config.provisioned_concurrency * usage.memory_gb
        * pricing.seconds_per_month * pricing.lambda_pc_capacity[arch].usd,
        "provisioned_duration": usage.provisioned_gb_s * pricing.lambda_pc_duration[arch].usd,
        "free_tier": free_usd,
    }
    return OptionCost(total_usd=sum(items.values()), items=items,
                      requests_per_month=usage.requests, notes=tuple(notes))


def supporting_cost(scenario: Scenario, pricing: Pricing) -> OptionCost:
    """What Lambda needs beside it: the model on EFS (stored; the served weights read at each cold
    start), S3, ECR."""
    usage = lambda_usage(scenario, pricing)
    model_gb = scenario.supporting.model_mb / MB_PER_GB
    efs_storage = model_gb * pricing.efs_storage.usd
    efs_reads = usage.cold_starts * scenario.supporting.read_mb / MB_PER_GB * pricing.efs_elastic_read.usd
    items = {
        "efs": efs_storage + efs_reads,
        "s3": model_gb * pricing.s3_storage.usd,
        "ecr": scenario.supporting.image_mb / MB_PER_GB * pricing.ecr_storage.usd,
    }
    return OptionCost(total_usd=sum(items.values()), items=items, requests_per_month=usage.requests,
                      details={"efs_storage": efs_storage, "efs_elastic_reads": efs_reads})


def lambda_side_usd(scenario: Scenario, pricing: Pricing) -> float:
    """Lambda plus supporting services: what the verdict compares against SageMaker."""
    return float(lambda_cost(scenario, pricing).total_usd or 0.0) + \
        float(supporting_cost(scenario, pricing).total_usd or 0.0)


def serverless_impossible_reasons(scenario: Scenario, pricing: Pricing) -> tuple[str, ...]:
    """Why SageMaker Serverless cannot run this workload (empty when it can)."""
    limits, work = pricing.serverless_limits, scenario.workload
    memory = scenario.serverless_memory_mb
    reasons: list[str] = []
    if memory > max(limits.memory_mb):
        reasons.append(f"needs {format_mb(memory)} of memory; SageMaker Serverless offers at most "
                       f"{format_mb(max(limits.memory_mb))}")
    elif memory not in limits.memory_mb:
        sizes = ", ".join(f"{m:,}" for m in limits.memory_mb)
        reasons.append(f"memory must be one of {sizes} MB, got {memory:,} MB")
    if billed_seconds(work.duration_ms) > limits.max_duration_s:
        reasons.append(f"a prediction takes {work.duration_ms / 1000:,.1f} s; SageMaker Serverless "
                       f"allows at most {limits.max_duration_s:g} s")
    for label, size_kb in (("request", work.payload_in_kb), ("response", work.payload_out_kb)):
        if size_kb > limits.max_payload_mb * 1024:
            reasons.append(f"the {label} payload is {size_kb / 1024:,.1f} MB; SageMaker Serverless "
                           f"accepts at most {limits.max_payload_mb:g} MB")
    return tuple(reasons)


def _data_processing(scenario: Scenario, pricing: Pricing) -> dict[str, float]:
    work = scenario.workload
    return {
        "data_in": work.requests_per_month * work.payload_in_kb / KB_PER_GB * pricing.sagemaker_data_in.usd,
        "data_out": work.requests_per_month * work.payload_out_kb / KB_PER_GB * pricing.sagemaker_data_out.usd,
    }


def sagemaker_serverless_cost(scenario: Scenario, pricing: Pricing) -> OptionCost:
    """SageMaker Serverless at `serverless_memory_mb` for the same requests and duration."""
    requests = scenario.workload.requests_per_month
    reasons = serverless_impossible_reasons(scenario, pricing)
    if reasons:
        return OptionCost(total_usd=None, items={}, requests_per_month=requests, possible=False,
                          reasons=reasons)
    compute = (requests * billed_seconds(scenario.workload.duration_ms)
               * scenario.serverless_memory_mb / MB_PER_GB * pricing.serverless_compute.usd)
    items = {"compute": compute, **_data_processing(scenario, pricing)}
    return OptionCost(total_usd=sum(items.values()), items=items, requests_per_month=requests)


def realtime_instance_names(scenario: Scenario, pricing: Pricing) -> tuple[str, ...]:
    """The real-time instance types to compare: the scenario's choice, or every priced one."""
    names = scenario.realtime_instances or tuple(pricing.sagemaker_realtime)
    unknown = [n for n in names if n not in pricing.sagemaker_realtime]
    if unknown:
        raise ScenarioError(f"no price for SageMaker instance {unknown[0]!r}; priced: "
                            f"{', '.join(pricing.sagemaker_realtime)}")
    return names


def sagemaker_realtime_cost(scenario: Scenario, pricing: Pricing, instance: str) -> OptionCost:
    """One real-time endpoint instance running all month, plus data processed in and out."""
    hourly = pricing.sagemaker_realtime[instance].usd
    items = {"instance": hourly * pricing.hours_per_month, **_data_processing(scenario, pricing)}
    requests = scenario.workload.requests_per_month
    busy = requests * billed_seconds(scenario.workload.duration_ms) / pricing.seconds_per_month
    notes = ["one instance all month; more instances for more throughput are not costed"]
    if busy > 1:
        notes.append(f"one {instance} serving one request at a time at {scenario.workload.duration_ms:,.0f} ms "
                     f"would need {busy:,.1f}x the month: this volume needs more instances than costed")
    return OptionCost(total_usd=sum(items.values()), items=items, requests_per_month=requests,
                      notes=tuple(notes), details={"busy_fraction": busy})


def lambda_breakpoints(scenario: Scenario, pricing: Pricing) -> tuple[float, ...]:
    """Monthly volumes where the Lambda side's cost per extra request changes.

    Between them the Lambda bill (and every SageMaker bill) is linear in requests, which is what
    lets break-even be solved exactly rather than searched for.
    """
    config, work = scenario.lambda_config, scenario.workload
    duration_s = billed_seconds(work.duration_ms)
    init_s = billed_seconds(work.init_ms) if work.init_ms > 0 else 0.0
    gb_s_per_request = config.memory_mb / MB_PER_GB * (duration_s + work.cold_start_fraction * init_s)
    capacity = config.provisioned_concurrency * pricing.seconds_per_month / duration_s
    points = {capacity} if capacity > 0 else set()
    if gb_s_per_request > 0:
        points |= {capacity + t / gb_s_per_request
                   for t in pricing.lambda_duration[config.architecture].thresholds()}
    if config.free_tier and config.provisioned_concurrency == 0:
        points.add(pricing.lambda_free_tier.requests)
        if gb_s_per_request > 0:
            points.add(pricing.lambda_free_tier.gb_seconds / gb_s_per_request)
    return tuple(sorted(p for p in points if p > 0))
