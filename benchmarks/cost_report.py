"""A scenario's costs gathered into one `CostEstimate`, and written out as JSON or as cost.md.

cost.md is for a person with a minute: the verdict first, then the table, then the plots, then
the assumptions with every price's source and date. The JSON carries the same numbers unrounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.cost_breakeven import BreakEven, impossible, solve_break_even
from benchmarks.cost_format import format_mb, format_requests, format_usd
from benchmarks.cost_latency import LatencyReport, select_warm_result, variant_label
from benchmarks.cost_model import (
    OptionCost,
    billed_seconds,
    lambda_cost,
    realtime_instance_names,
    sagemaker_realtime_cost,
    sagemaker_serverless_cost,
    supporting_cost,
)
from benchmarks.cost_pricing import ARCHITECTURES, Pricing
from benchmarks.cost_scenario import Scenario
from benchmarks.exceptions import BenchmarkError

SERVERLESS = "SageMaker Serverless"


@dataclass(frozen=True)
class CostEstimate:
    """Every option's bill for one scenario, and where Lambda breaks even with each."""

    scenario: Scenario
    pricing: Pricing
    lambda_bill: OptionCost
    supporting: OptionCost
    serverless: OptionCost
    realtime: Mapping[str, OptionCost]
    break_even: Mapping[str, BreakEven]
    by_architecture: Mapping[str, tuple[OptionCost, OptionCost]]

    @property
    def lambda_side_usd(self) -> float:
        return float(self.lambda_bill.total_usd or 0.0) + float(self.supporting.total_usd or 0.0)

    def serverless_label(self) -> str:
        return f"{SERVERLESS} {format_mb(self.scenario.serverless_memory_mb)}"


def estimate(scenario: Scenario, pricing: Pricing) -> CostEstimate:
    """Cost every option for `scenario` and solve each break-even."""
    serverless = sagemaker_serverless_cost(scenario, pricing)
    instances = realtime_instance_names(scenario, pricing)
    realtime = {name: sagemaker_realtime_cost(scenario, pricing, name) for name in instances}
    break_even: dict[str, BreakEven] = {}
    if serverless.possible:
        break_even["sagemaker_serverless"] = solve_break_even(
            scenario, pricing, SERVERLESS, lambda s: float(sagemaker_serverless_cost(s, pricing).total_usd or 0)
        )
    else:
        break_even["sagemaker_serverless"] = impossible(SERVERLESS)
    for name in instances:
        break_even[name] = solve_break_even(scenario, pricing, name, _realtime_usd(pricing, name))
    by_architecture = {}
    for arch in ARCHITECTURES:
        variant = scenario.with_lambda(architecture=arch)
        by_architecture[arch] = (lambda_cost(variant, pricing), supporting_cost(variant, pricing))
    return CostEstimate(
        scenario=scenario, pricing=pricing, lambda_bill=lambda_cost(scenario, pricing),
        supporting=supporting_cost(scenario, pricing), serverless=serverless, realtime=realtime,
        break_even=break_even, by_architecture=by_architecture,
    )


def _realtime_usd(pricing: Pricing, instance: str) -> Callable[[Scenario], float]:
    """The monthly bill of one real-time instance as a function of the scenario (for break-even)."""
    def usd(scenario: Scenario) -> float:
        return float(sagemaker_realtime_cost(scenario, pricing, instance).total_usd or 0.0)
    return usd


def scenario_at_memory(scenario: Scenario, memory_mb: int, latency: LatencyReport | None) -> Scenario | None:
    """The scenario at another Lambda memory size (SageMaker Serverless at the same size).

    A duration that came from latency.json is looked up again for the new size (more memory, more
    CPU); a duration given in the scenario is kept. None when no measurement fits the size.
    """
    changed = scenario.with_lambda(memory_mb=memory_mb)
    if scenario.sources.get("duration_ms", "scenario") != "scenario" and latency is not None:
        choice = scenario.latency_choice
        try:
            result = select_warm_result(latency, memory_mb, image=choice.image, variant=choice.variant,
                                        path=choice.path)
        except BenchmarkError:
            return None
        changed = replace(changed, workload=replace(changed.workload, duration_ms=result.p50_ms))
    return replace(changed, serverless_memory_mb=memory_mb)


# ---------------------------------------------------------------- JSON


def _option_json(cost: OptionCost) -> dict[str, Any]:
    data: dict[str, Any] = {"total_usd": cost.total_usd, "per_million_usd": cost.per_million_usd,
                            "items": dict(cost.items)}
    if cost.details:
        data["details"] = dict(cost.details)
    if cost.notes:
        data["notes"] = list(cost.notes)
    return data


def to_json_dict(result: CostEstimate) -> dict[str, Any]:
    """The `--format json` structure (issue 5), with the inputs and verdict alongside."""
    s, work, config = result.scenario, result.scenario.workload, result.scenario.lambda_config
    requests = work.requests_per_month
    side = result.lambda_side_usd
    return {
        "scenario": {
            "name": s.name,
            "requests_per_month": requests,
            "duration_ms": work.duration_ms,
            "billed_duration_ms": billed_seconds(work.duration_ms) * 1000,
            "init_ms": work.init_ms,
            "cold_start_fraction": work.cold_start_fraction,
            "payload_in_kb": work.payload_in_kb,
            "payload_out_kb": work.payload_out_kb,
            "lambda": {"memory_mb": config.memory_mb, "ephemeral_mb": config.ephemeral_mb,
                       "architecture": config.architecture,
                       "provisioned_concurrency": config.provisioned_concurrency,
                       "free_tier": config.free_tier},
            "sagemaker_serverless": {"memory_mb": s.serverless_memory_mb},
            "supporting": {"model_mb": s.supporting.model_mb, "cold_start_read_mb": s.supporting.read_mb,
                           "image_mb": s.supporting.image_mb},
            "variant": s.variant,
            "engine": s.engine,
            "sources": dict(s.sources),
        },
        "lambda": {"architecture": config.architecture, "memory_mb": config.memory_mb,
                   **_option_json(result.lambda_bill)},
        "supporting": _option_json(result.supporting),
        "lambda_with_supporting": {"total_usd": side,
                                   "per_million_usd": side / requests * 1e6 if requests > 0 else None},
        "lambda_by_architecture": {
            arch: {"total_usd": bill.total_usd, "per_million_usd": bill.per_million_usd,
                   "with_supporting_usd": (bill.total_usd or 0) + (sup.total_usd or 0),
                   "with_supporting_per_million_usd": ((bill.total_usd or 0) + (sup.total_usd or 0))
                   / requests * 1e6 if requests > 0 else None}
            for arch, (bill, sup) in result.by_architecture.items()
        },
        "sagemaker_serverless": {"possible": result.serverless.possible,
                                 "memory_mb": s.serverless_memory_mb,
                                 "reasons": list(result.serverless.reasons),
                                 **_option_json(result.serverless)},
        "sagemaker_realtime": {
            name: {"hourly_usd": result.pricing.sagemaker_realtime[name].usd,
                   "hours": result.pricing.hours_per_month, **_option_json(cost)}
            for name, cost in result.realtime.items()
        },
        "break_even": {
            key: {"requests_per_month": be.requests_per_month, "crossings": list(be.crossings),
                  "lambda_cheaper": be.lambda_cheaper, "note": be.note}
            for key, be in result.break_even.items()
        },
        "verdict": verdict(result),
        "pricing": {"region": result.pricing.region,
                    "as_of": sorted({e.as_of.isoformat() for _, e in result.pricing.entries()})},
    }


# ---------------------------------------------------------------- verdict and markdown


def _alternatives(result: CostEstimate) -> list[tuple[str, float]]:
    options = [(name, float(cost.total_usd)) for name, cost in result.realtime.items()
               if cost.total_usd is not None]
    if result.serverless.total_usd is not None:
        options.insert(0, (result.serverless_label(), float(result.serverless.total_usd)))
    return options


def verdict(result: CostEstimate) -> str:
    """Two or three sentences: which option is cheapest at this volume, and when that flips."""
    s, work = result.scenario, result.scenario.workload
    served = "" if s.variant is None else f", {s.variant}" + (f" on {s.engine}" if s.engine else "")
    lambda_label = f"Lambda ({s.lambda_config.architecture}, {format_mb(s.lambda_config.memory_mb)}{served})"
    options = _alternatives(result)
    side = result.lambda_side_usd
    volume = f"{format_requests(work.requests_per_month)} requests/month ({work.duration_ms:,.0f} ms each)"
    cheapest_name, cheapest_usd = min(options, key=lambda o: o[1]) if options else ("", float("inf"))
    if side <= cheapest_usd:
        head = (f"{lambda_label} is the cheapest option at {volume}: {format_usd(side)}/month "
                f"with EFS, S3 and ECR")
        if options:
            head += f", against {format_usd(cheapest_usd)} for the next cheapest ({cheapest_name})"
    else:
        head = (f"{cheapest_name} is cheaper than {lambda_label} at {volume}: {format_usd(cheapest_usd)}"
                f"/month against {format_usd(side)} for Lambda with EFS, S3 and ECR")
    sentences = [head + "."]
    flips = [be.note for be in result.break_even.values() if be.lambda_cheaper != "impossible"]
    if flips:
        sentences.append("; ".join(flips) + ".")
    if not result.serverless.possible:
        sentences.append(f"{SERVERLESS} cannot run this workload: {'; '.join(result.serverless.reasons)}.")
    overloaded = [c.notes[-1] for c in result.realtime.values() if c.details.get("busy_fraction", 0) > 1]
    if overloaded:
        sentences.append(f"Caution: {overloaded[0]}.")
    return " ".join(sentences)


def _per_million(total: float | None, requests: float) -> str:
    return format_usd(total / requests * 1e6) if total is not None and requests > 0 else "n/a"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _summary_rows(result: CostEstimate) -> list[list[str]]:
    s = result.scenario
    requests = s.workload.requests_per_month
    rows = []
    for arch, (bill, sup) in result.by_architecture.items():
        total = (bill.total_usd or 0) + (sup.total_usd or 0)
        mark = " (scenario)" if arch == s.lambda_config.architecture else " (same duration)"
        rows.append([f"Lambda {arch} {format_mb(s.lambda_config.memory_mb)} + EFS/S3/ECR{mark}",
                     format_usd(total), _per_million(total, requests), "—"])
    be = result.break_even["sagemaker_serverless"]
    if result.serverless.possible:
        rows.append([result.serverless_label(), format_usd(result.serverless.total_usd),
                     _per_million(result.serverless.total_usd, requests), be.note])
    else:
        rows.append([result.serverless_label(), "impossible", "n/a", "; ".join(result.serverless.reasons)])
    for name, cost in result.realtime.items():
        rows.append([f"SageMaker real-time {name} (730 h)", format_usd(cost.total_usd),
                     _per_million(cost.total_usd, requests), result.break_even[name].note])
    return rows


def _items_rows(result: CostEstimate) -> list[list[str]]:
    rows = [[f"Lambda: {k.replace('_', ' ')}", format_usd(v)] for k, v in result.lambda_bill.items.items()
            if v != 0]
    rows.append(["**Lambda bill**", f"**{format_usd(result.lambda_bill.total_usd)}**"])
    details = result.supporting.details
    rows += [["EFS storage", format_usd(details["efs_storage"])],
             ["EFS elastic reads (model per cold start)", format_usd(details["efs_elastic_reads"])],
             ["S3 storage (model)", format_usd(result.supporting.items["s3"])],
             ["ECR storage (image)", format_usd(result.supporting.items["ecr"])],
             ["**Supporting**", f"**{format_usd(result.supporting.total_usd)}**"]]
    if result.serverless.possible:
        rows += [[f"{SERVERLESS}: {k.replace('_', ' ')}", format_usd(v)]
                 for k, v in result.serverless.items.items()]
    return rows


def _inputs_rows(result: CostEstimate) -> list[list[str]]:
    s, work, config = result.scenario, result.scenario.workload, result.scenario.lambda_config
    src = s.sources
    priced = "not measured (no latency file)" if s.variant is None else variant_label(s.variant, s.engine)
    return [
        ["weights variant priced", priced, src.get("variant", "scenario")],
        ["requests per month", f"{work.requests_per_month:,.0f}", "scenario"],
        ["duration per request", f"{work.duration_ms:,.1f} ms (billed {billed_seconds(work.duration_ms) * 1000:,.0f} ms)",
         src.get("duration_ms", "scenario")],
        ["init per cold start", f"{work.init_ms:,.0f} ms", src.get("init_ms", "scenario")],
        ["cold-start fraction", f"{work.cold_start_fraction:g}", "scenario"],
        ["payload in / out", f"{work.payload_in_kb:,.1f} KB / {work.payload_out_kb:,.1f} KB", "scenario"],
        ["Lambda memory", format_mb(config.memory_mb), src.get("memory_mb", "scenario")],
        ["Lambda ephemeral storage", format_mb(config.ephemeral_mb), "scenario"],
        ["Lambda architecture", config.architecture, "scenario"],
        ["provisioned concurrency", f"{config.provisioned_concurrency:,}", "scenario"],
        ["free tier", "on" if config.free_tier else "off", "scenario"],
        ["model size stored (EFS, S3)", format_mb(s.supporting.model_mb), src.get("model_mb", "scenario")],
        ["model read from EFS per cold start", format_mb(s.supporting.read_mb),
         src.get("cold_start_read_mb", "scenario")],
        ["image size (ECR)", format_mb(s.supporting.image_mb), "scenario"],
        ["SageMaker Serverless memory", format_mb(s.serverless_memory_mb), src.get("serverless_memory_mb", "scenario")],
    ]


ASSUMPTIONS = (
    ("Prices are on-demand list prices for the region shown, without savings plans or taxes; "
     "GB = 1,024 MB and KB = 1,024 bytes, as AWS bills them."),
    ("Each duration is billed rounded up to the next 1 ms; SageMaker Serverless is charged for the same "
     "duration as Lambda (same workload on both sides). Its own cold starts are not billed by AWS."),
    ("Cold starts: cold-start fraction x on-demand requests, each billing the init duration at the "
     "Lambda duration price (init is billed since 2025-08-01) and reading the served variant's weights "
     "file once from EFS (elastic throughput); every variant's file is stored."),
    ("Provisioned concurrency is configured all month (730 h); with traffic spread evenly it serves "
     "up to N x month / duration requests at the provisioned duration price, the rest run on demand."),
    ("The Lambda free tier counts as the month's first usage (a negative line item); AWS does not grant "
     "it to functions with provisioned concurrency. Volume tiers apply to the month's on-demand GB-s."),
    "Ephemeral storage above 512 MB is billed for every billed second (invocations and inits).",
    ("SageMaker data processing ($ per GB in and out) applies to Serverless and real-time endpoints alike; "
     "a real-time option is one instance all month whatever the volume (the verdict warns when one "
     "instance serving one request at a time could not keep up). "
     "SageMaker's own copy of the model in S3 and any container image are not counted."),
    "Lambda arm64 rows reuse the measured (x86_64 host) duration: measure on Graviton before relying on them.",
)


def render_markdown(result: CostEstimate, plots: Mapping[str, str] | None = None) -> str:
    """cost.md: verdict, table, plots (relative links), assumptions with price sources and dates."""
    s = result.scenario
    requests = s.workload.requests_per_month
    lines = [f"# Cost per prediction: Lambda vs SageMaker (scenario `{s.name}`)", "",
             f"**Verdict.** {verdict(result)}", "",
             f"## Monthly cost at {requests:,.0f} requests/month", ""]
    lines += _table(["option", "per month", "per 1M requests", "break-even with Lambda"],
                    _summary_rows(result), right=(1, 2))
    lines += ["", "### Line items", ""]
    lines += _table(["item", "per month"], _items_rows(result), right=(1,))
    zero = [k.replace("_", " ") for k, v in result.lambda_bill.items.items() if v == 0]
    if zero:
        lines += ["", f"Lambda items at $0.00 here (not listed): {', '.join(zero)}."]
    notes = [*result.lambda_bill.notes]
    if notes:
        lines += ["", *(f"Note: {n}." for n in notes)]
    if plots:
        lines += ["", "## Plots", ""]
        for title, link in plots.items():
            lines += [f"![{title}]({link})", ""]
        lines.pop()
    lines += ["", "## Assumptions", ""]
    lines += _table(["input", "value", "from"], _inputs_rows(result))
    lines += [""] + [f"- {a}" for a in ASSUMPTIONS]
    lines += ["", f"### Prices ({result.pricing.region})", ""]
    lines += _table(["item", "price", "source", "as of"],
                    [[name, entry.describe() + (f" ({entry.note})" if entry.note else ""),
                      entry.source, entry.as_of.isoformat()] for name, entry in result.pricing.entries()])
    return "\n".join(lines) + "\n"
