"""The cost model against bills worked out by hand.

Every expected figure is written as the arithmetic a reader can check against the price table
(benchmarks/pricing.toml, us-east-1), never as the model's own output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.cost_breakeven import solve_break_even
from benchmarks.cost_latency import (
    ColdStart,
    LatencyReport,
    LatencyResult,
    latency_from_dict,
    select_cold_start,
    select_warm_result,
)
from benchmarks.cost_model import (
    lambda_breakpoints,
    lambda_cost,
    lambda_side_usd,
    sagemaker_realtime_cost,
    sagemaker_serverless_cost,
    supporting_cost,
)
from benchmarks.cost_pricing import load_pricing
from benchmarks.cost_report import estimate, to_json_dict
from benchmarks.cost_scenario import load_scenario, scenario_from_dict
from benchmarks.exceptions import LatencyFileError, PricingError, ScenarioError

SCENARIOS = Path(__file__).resolve().parents[2] / "benchmarks" / "scenarios"
PRICING = load_pricing()
X86 = 0.0000166667        # $/GB-s, first 6 B GB-s
X86_TIER2 = 0.000015       # next 9 B
ARM = 0.0000133334         # $/GB-s, first 7.5 B
ARM_TIER2 = 0.0000120001
REQUEST = 0.20 / 1e6       # $ per request
MONTH_S = 730 * 3600       # seconds in a 730-hour month
NO_SUPPORT = {"model_mb": 0, "image_mb": 0}


def scenario(work: dict[str, Any] | None = None, lam: dict[str, Any] | None = None,
             **tables: dict[str, Any]) -> Any:
    """A scenario with no cold starts, no payload and no supporting storage unless asked."""
    data: dict[str, Any] = {
        "workload": {"cold_start_fraction": 0, "payload_in_kb": 0, "payload_out_kb": 0, **(work or {})},
        "lambda": {"memory_mb": 1024, **(lam or {})},
        "supporting": NO_SUPPORT,
        **tables,
    }
    return scenario_from_dict(data)


# ---------------------------------------------------------------- Lambda


def test_duration_crosses_the_x86_volume_tier_at_6_billion_gb_s() -> None:
    # GIVEN 700 M requests x 1 s x 10 GB = 7 B GB-s, 1 B past the first tier
    s = scenario({"requests_per_month": 700e6, "duration_ms": 1000}, {"memory_mb": 10240})
    # WHEN the Lambda bill is computed
    bill = lambda_cost(s, PRICING)
    # THEN the first 6 B GB-s cost the tier-1 rate and the last 1 B the tier-2 rate
    assert bill.items["duration"] == pytest.approx(6e9 * X86 + 1e9 * X86_TIER2, rel=1e-12)
    assert bill.items["requests"] == pytest.approx(700e6 * REQUEST)
    assert bill.total_usd == pytest.approx(100_000.2 + 15_000 + 140)


def test_duration_just_under_the_tier_boundary_is_all_tier_one() -> None:
    # GIVEN 599 M requests x 1 s x 10 GB = 5.99 B GB-s
    s = scenario({"requests_per_month": 599e6, "duration_ms": 1000}, {"memory_mb": 10240})
    # WHEN / THEN every GB-s is billed at the first-tier rate
    assert lambda_cost(s, PRICING).items["duration"] == pytest.approx(5.99e9 * X86, rel=1e-12)


def test_arm64_uses_its_own_price_and_tier_boundary() -> None:
    # GIVEN 1 M x 500 ms x 2 GB on arm64, and 800 M x 1 s x 10 GB (8 B GB-s, past arm's 7.5 B tier)
    small = scenario({"requests_per_month": 1e6, "duration_ms": 500},
                     {"memory_mb": 2048, "architecture": "arm64"})
    large = scenario({"requests_per_month": 800e6, "duration_ms": 1000},
                     {"memory_mb": 10240, "architecture": "arm64"})
    # WHEN the bills are computed
    small_bill, large_bill = lambda_cost(small, PRICING), lambda_cost(large, PRICING)
    # THEN arm64 is priced at $0.0000133334/GB-s up to 7.5 B GB-s, then $0.0000120001
    assert small_bill.total_usd == pytest.approx(1e6 * 0.5 * 2 * ARM + 0.20)  # 13.5334
    assert large_bill.items["duration"] == pytest.approx(7.5e9 * ARM + 0.5e9 * ARM_TIER2, rel=1e-12)


def test_free_tier_on_and_off() -> None:
    # GIVEN 5 M requests x 200 ms x 1 GB = 1,000,000 GB-s, with and without the free tier
    work = {"requests_per_month": 5e6, "duration_ms": 200}
    off = lambda_cost(scenario(work, {"free_tier": False}), PRICING)
    on = lambda_cost(scenario(work, {"free_tier": True}), PRICING)
    # THEN without it: 1,000,000 GB-s x X86 + 5 M x $0.20/M
    assert off.total_usd == pytest.approx(1_000_000 * X86 + 1.00)
    assert off.items["free_tier"] == 0
    # AND with it, the first 400,000 GB-s and 1 M requests are free
    assert on.items["free_tier"] == pytest.approx(-(400_000 * X86 + 0.20))
    assert on.total_usd == pytest.approx(600_000 * X86 + 4 * 0.20)


def test_free_tier_covers_a_small_workload_entirely() -> None:
    # GIVEN 800 k requests x 100 ms x 1 GB = 80,000 GB-s, inside both allowances
    s = scenario({"requests_per_month": 800e3, "duration_ms": 100}, {"free_tier": True})
    # WHEN / THEN the Lambda bill is zero
    assert lambda_cost(s, PRICING).total_usd == pytest.approx(0.0, abs=1e-12)


def test_duration_is_billed_rounded_up_to_the_millisecond() -> None:
    # GIVEN a measured 100.2 ms
    s = scenario({"requests_per_month": 1e6, "duration_ms": 100.2})
    # WHEN / THEN Lambda bills 101 ms per request
    assert lambda_cost(s, PRICING).items["duration"] == pytest.approx(1e6 * 0.101 * 1 * X86)


def test_cold_starts_bill_the_init_duration_and_an_efs_read_of_the_model() -> None:
    # GIVEN 1 M requests x 100 ms x 1 GB, 5% cold starts with a 2 s init and a 100 MB model
    s = scenario_from_dict({
        "workload": {"requests_per_month": 1e6, "duration_ms": 100, "init_ms": 2000,
                     "cold_start_fraction": 0.05, "payload_in_kb": 0, "payload_out_kb": 0},
        "lambda": {"memory_mb": 1024},
        "supporting": {"model_mb": 100, "image_mb": 1024},
    })
    # WHEN the bills are computed
    bill, support = lambda_cost(s, PRICING), supporting_cost(s, PRICING)
    # THEN 50,000 cold starts x 2 s x 1 GB = 100,000 GB-s of init at the duration price
    assert bill.items["init"] == pytest.approx(100_000 * X86)
    assert bill.items["duration"] == pytest.approx(100_000 * X86)
    # AND each cold start reads the 100 MB model from EFS at $0.03/GB
    assert support.details["efs_elastic_reads"] == pytest.approx(50_000 * 100 / 1024 * 0.03)  # 146.48
    assert support.items["efs"] == pytest.approx(50_000 * 100 / 1024 * 0.03 + 100 / 1024 * 0.30)
    assert support.items["s3"] == pytest.approx(100 / 1024 * 0.023)
    assert support.items["ecr"] == pytest.approx(1.0 * 0.10)


def test_ephemeral_storage_is_billed_only_above_512_mb() -> None:
    # GIVEN 1 M x 500 ms with 2,048 MB of /tmp: 1.5 GB over the free 512 MB for 500,000 s
    s = scenario({"requests_per_month": 1e6, "duration_ms": 500}, {"ephemeral_mb": 2048})
    # WHEN / THEN 1.5 GB x 500,000 s x $0.0000000309
    assert lambda_cost(s, PRICING).items["ephemeral_storage"] == pytest.approx(1.5 * 500_000 * 0.0000000309)


def test_provisioned_concurrency_serves_its_capacity_and_the_rest_runs_on_demand() -> None:
    # GIVEN 2 provisioned environments of 1 GB, 100 ms per request, 100 M requests, 1% cold starts
    # of 1 s, and the free tier asked for (which AWS does not grant with provisioned concurrency)
    s = scenario({"requests_per_month": 100e6, "duration_ms": 100, "init_ms": 1000,
                  "cold_start_fraction": 0.01},
                 {"provisioned_concurrency": 2, "free_tier": True})
    # WHEN the bill is computed
    bill = lambda_cost(s, PRICING)
    # THEN 2 environments x 2,628,000 s serve 52,560,000 requests of 0.1 s
    provisioned = 2 * MONTH_S / 0.1
    assert provisioned == 52_560_000
    on_demand = 100e6 - provisioned                                    # 47,440,000
    assert bill.items["provisioned_concurrency"] == pytest.approx(2 * 1 * MONTH_S * 0.0000041667)  # 21.90
    assert bill.items["provisioned_duration"] == pytest.approx(provisioned * 0.1 * 0.0000097222)   # 51.10
    assert bill.items["duration"] == pytest.approx(on_demand * 0.1 * X86)                          # 79.07
    assert bill.items["init"] == pytest.approx(on_demand * 0.01 * 1.0 * X86)                       # 7.91
    assert bill.items["requests"] == pytest.approx(100 * 0.20)
    assert bill.items["free_tier"] == 0
    assert any("free tier not applied" in n for n in bill.notes)
    assert bill.total_usd == pytest.approx(21.9001752 + 51.0998832 + 79.0668248 + 7.90668248 + 20.0)


def test_provisioned_concurrency_below_capacity_has_no_on_demand_part() -> None:
    # GIVEN 1 environment and 1 M requests of 100 ms (capacity 26.28 M)
    s = scenario({"requests_per_month": 1e6, "duration_ms": 100, "init_ms": 1000,
                  "cold_start_fraction": 0.01}, {"provisioned_concurrency": 1})
    # WHEN / THEN every request is served warm at the provisioned duration price, without cold starts
    bill = lambda_cost(s, PRICING)
    assert bill.items["duration"] == 0 and bill.items["init"] == 0
    assert bill.items["provisioned_duration"] == pytest.approx(1e6 * 0.1 * 0.0000097222)


# ---------------------------------------------------------------- SageMaker


def test_sagemaker_serverless_per_second_by_memory_plus_data() -> None:
    # GIVEN 1 M x 500 ms at 3,072 MB with 512 KB in and 64 KB out per request
    s = scenario({"requests_per_month": 1e6, "duration_ms": 500, "payload_in_kb": 512,
                  "payload_out_kb": 64}, {"memory_mb": 3072})
    # WHEN / THEN 500,000 s x 3 GB x $0.00002, data at $0.016 per GB each way
    cost = sagemaker_serverless_cost(s, PRICING)
    assert cost.items["compute"] == pytest.approx(500_000 * 3 * 0.00002)                 # 30.00
    assert cost.items["data_in"] == pytest.approx(1e6 * 512 / 1024**2 * 0.016)          # 7.8125
    assert cost.items["data_out"] == pytest.approx(1e6 * 64 / 1024**2 * 0.016)
    assert s.serverless_memory_mb == 3072


def test_sagemaker_serverless_memory_defaults_to_lambda_memory_rounded_up() -> None:
    # GIVEN Lambda at 1,769 MB and no SageMaker memory in the scenario
    s = scenario({"requests_per_month": 1e6, "duration_ms": 500}, {"memory_mb": 1769})
    # WHEN / THEN SageMaker Serverless runs at 2,048 MB
    assert s.serverless_memory_mb == 2048
    assert sagemaker_serverless_cost(s, PRICING).items["compute"] == pytest.approx(500_000 * 2 * 0.00002)


@pytest.mark.parametrize(
    ("work", "lam", "serverless", "reason"),
    [
        ({}, {"memory_mb": 7168}, {}, "at most 6,144 MB"),
        ({}, {}, {"memory_mb": 7168}, "at most 6,144 MB"),
        ({}, {}, {"memory_mb": 1500}, "must be one of 1,024, 2,048"),
        ({"duration_ms": 61_000}, {}, {}, "at most 60 s"),
        ({"payload_in_kb": 5000}, {}, {}, "request payload is 4.9 MB"),
        ({"payload_out_kb": 4097}, {}, {}, "response payload"),
    ],
)
def test_sagemaker_serverless_says_impossible(work: dict[str, Any], lam: dict[str, Any],
                                              serverless: dict[str, Any], reason: str) -> None:
    # GIVEN a workload over one of SageMaker Serverless's limits (6 GB, 60 s, 4 MB)
    s = scenario({"requests_per_month": 1e6, "duration_ms": 500, **work}, lam,
                 sagemaker_serverless=serverless)
    # WHEN it is costed
    cost = sagemaker_serverless_cost(s, PRICING)
    result = estimate(s, PRICING)
    # THEN it is impossible, says why, and has no break-even
    assert not cost.possible and cost.total_usd is None
    assert any(reason in r for r in cost.reasons), cost.reasons
    assert result.break_even["sagemaker_serverless"].requests_per_month == "impossible"


def test_sagemaker_realtime_runs_all_month() -> None:
    # GIVEN any volume with no payload
    s = scenario({"requests_per_month": 1e6, "duration_ms": 500})
    # WHEN / THEN each instance costs its hourly price x 730 h
    assert sagemaker_realtime_cost(s, PRICING, "ml.t2.medium").total_usd == pytest.approx(0.056 * 730)
    assert sagemaker_realtime_cost(s, PRICING, "ml.m5.large").total_usd == pytest.approx(0.115 * 730)
    assert sagemaker_realtime_cost(s, PRICING, "ml.g4dn.xlarge").total_usd == pytest.approx(0.736 * 730)
    # AND it says when one instance could not keep up: 10 M x 0.5 s = 5,000,000 s > 2,628,000 s
    busy = sagemaker_realtime_cost(s.with_requests(10e6), PRICING, "ml.t2.medium")
    assert busy.details["busy_fraction"] == pytest.approx(5_000_000 / MONTH_S)
    assert "needs more instances" in busy.notes[-1]
    assert sagemaker_realtime_cost(s, PRICING, "ml.t2.medium").details["busy_fraction"] < 1


# ---------------------------------------------------------------- the original proposal


def test_proposal_lambda_example_is_reproduced_within_one_percent() -> None:
    # GIVEN the proposal's Lambda inputs: 1 M x 500 ms x 2 GB, 2 GB ephemeral storage
    s = load_scenario(SCENARIOS / "proposal.toml")
    # WHEN the Lambda bill is computed
    bill = lambda_cost(s, PRICING)
    # THEN compute $16.67 + requests $0.20 + storage ~$0.03 ~= $16.90/month
    assert bill.items["duration"] == pytest.approx(16.67, rel=0.01)
    assert bill.items["requests"] == pytest.approx(0.20)
    assert bill.total_usd == pytest.approx(16.90, rel=0.01)


def test_proposal_sagemaker_example_is_reproduced_within_one_percent() -> None:
    # GIVEN the proposal's SageMaker inputs: 5 M x 500 ms at 1 GB, 10 GB in and 10 GB out
    s = load_scenario(SCENARIOS / "proposal_sagemaker.toml")
    # WHEN SageMaker Serverless is costed
    cost = sagemaker_serverless_cost(s, PRICING)
    # THEN $50.00 compute + 20 GB x $0.016 = $0.32
    assert cost.items["compute"] == pytest.approx(50.00, rel=0.01)
    assert cost.items["data_in"] + cost.items["data_out"] == pytest.approx(0.32, rel=0.01)
    assert cost.total_usd == pytest.approx(50.32, rel=0.01)


# ---------------------------------------------------------------- break-even


def test_break_even_with_serverless_matches_the_hand_solved_volume() -> None:
    # GIVEN equal memory (2 GB) and duration (500 ms), no cold starts, a 100 MB model and 1 GB image
    s = scenario_from_dict({
        "workload": {"requests_per_month": 1e6, "duration_ms": 500, "cold_start_fraction": 0,
                     "payload_in_kb": 0, "payload_out_kb": 0},
        "lambda": {"memory_mb": 2048},
    })
    # WHEN break-even with SageMaker Serverless is solved
    be = estimate(s, PRICING).break_even["sagemaker_serverless"]
    # THEN fixed storage / (SageMaker per request - Lambda per request)
    fixed = 100 / 1024 * (0.30 + 0.023) + 1.0 * 0.10
    lambda_per_request = 2 * 0.5 * X86 + REQUEST
    serverless_per_request = 2 * 0.5 * 0.00002
    assert be.requests_per_month == pytest.approx(fixed / (serverless_per_request - lambda_per_request))
    assert be.lambda_cheaper == "above"


def test_break_even_with_a_realtime_endpoint_matches_the_hand_solved_volume() -> None:
    # GIVEN the same workload against ml.t2.medium ($0.056/h x 730 h)
    s = scenario({"requests_per_month": 1e6, "duration_ms": 500}, {"memory_mb": 2048})
    # WHEN break-even is solved
    be = estimate(s, PRICING).break_even["ml.t2.medium"]
    # THEN 40.88 / Lambda's cost per request, and Lambda is the cheaper one below it
    assert be.requests_per_month == pytest.approx(0.056 * 730 / (2 * 0.5 * X86 + REQUEST))
    assert be.lambda_cheaper == "below"


@pytest.mark.parametrize("lam", [
    {"memory_mb": 2048},
    {"memory_mb": 2048, "free_tier": True},
    {"memory_mb": 10240, "architecture": "arm64"},
    {"memory_mb": 2048, "provisioned_concurrency": 3},
])
def test_costs_are_equal_at_every_break_even_point(lam: dict[str, Any]) -> None:
    # GIVEN scenarios with free tier, volume tiers or provisioned concurrency shaping the Lambda curve
    s = scenario_from_dict({
        "workload": {"requests_per_month": 1e6, "duration_ms": 800, "init_ms": 1500,
                     "cold_start_fraction": 0.002},
        "lambda": lam,
        "sagemaker_serverless": {"memory_mb": 2048},
    })
    result = estimate(s, PRICING)
    # WHEN each break-even point is costed on both sides
    checked = 0
    for key, be in result.break_even.items():
        for crossing in be.crossings:
            at = s.with_requests(crossing)
            other = (sagemaker_serverless_cost(at, PRICING) if key == "sagemaker_serverless"
                     else sagemaker_realtime_cost(at, PRICING, key))
            # THEN Lambda + supporting costs the same as the option there
            assert lambda_side_usd(at, PRICING) == pytest.approx(other.total_usd, rel=1e-9)
            checked += 1
    assert checked >= 3


def test_break_even_is_never_when_lambda_is_always_dearer_or_always_cheaper() -> None:
    # GIVEN Lambda at 2 GB against SageMaker Serverless at 1 GB (always dearer per request and fixed),
    # and Lambda with no supporting storage against SageMaker at the same 2 GB (always cheaper)
    dearer = scenario({"requests_per_month": 1e6, "duration_ms": 500}, {"memory_mb": 2048},
                      sagemaker_serverless={"memory_mb": 1024}, supporting={"model_mb": 100, "image_mb": 1024})
    cheaper = scenario({"requests_per_month": 1e6, "duration_ms": 500}, {"memory_mb": 2048})
    # WHEN break-even is solved
    dearer_be = estimate(dearer, PRICING).break_even["sagemaker_serverless"]
    cheaper_be = estimate(cheaper, PRICING).break_even["sagemaker_serverless"]
    # THEN both say "never", each with its direction, and the costs agree at sample volumes
    assert dearer_be.requests_per_month == "never" and dearer_be.lambda_cheaper == "never"
    assert cheaper_be.requests_per_month == "never" and cheaper_be.lambda_cheaper == "always"
    for volume in (1e3, 1e6, 1e9, 1e12):
        dearer_sm = sagemaker_serverless_cost(dearer.with_requests(volume), PRICING).total_usd
        cheaper_sm = sagemaker_serverless_cost(cheaper.with_requests(volume), PRICING).total_usd
        assert dearer_sm is not None and cheaper_sm is not None
        assert lambda_side_usd(dearer.with_requests(volume), PRICING) > dearer_sm
        assert lambda_side_usd(cheaper.with_requests(volume), PRICING) < cheaper_sm


def test_lambda_breakpoints_include_tiers_free_tier_and_provisioned_capacity() -> None:
    # GIVEN 1 GB, 1 s, free tier on; and the same with 1 provisioned environment
    free = scenario({"requests_per_month": 1, "duration_ms": 1000}, {"free_tier": True})
    provisioned = scenario({"requests_per_month": 1, "duration_ms": 1000}, {"provisioned_concurrency": 1})
    # WHEN / THEN the kinks are where hand arithmetic puts them
    assert lambda_breakpoints(free, PRICING) == pytest.approx((400_000, 1e6, 6e9, 15e9))
    assert lambda_breakpoints(provisioned, PRICING) == pytest.approx((MONTH_S, MONTH_S + 6e9, MONTH_S + 15e9))


def test_solver_finds_two_crossings_when_the_curves_cross_twice() -> None:
    # GIVEN an option that costs a fixed $10 plus a per-request rate above Lambda's tier-2 rate and
    # below its tier-1 rate, against 1 GB x 1 s requests with no fixed costs (so Lambda starts cheaper,
    # becomes dearer, and is cheaper again once its volume tier kicks in)
    s = scenario({"requests_per_month": 1, "duration_ms": 1000})
    rate = 0.0000160 + REQUEST

    def option(x: Any) -> float:
        return 10.0 + rate * x.workload.requests_per_month

    # WHEN break-even is solved
    be = solve_break_even(s, PRICING, "test option", option)
    # THEN it reports both crossings, and costs agree at each
    assert be.lambda_cheaper == "mixed" and len(be.crossings) == 2
    first = 10.0 / (X86 - 0.0000160)
    assert be.crossings[0] == pytest.approx(first)
    for crossing in be.crossings:
        assert lambda_side_usd(s.with_requests(crossing), PRICING) == pytest.approx(option(s.with_requests(crossing)))


# ---------------------------------------------------------------- inputs


def _latency() -> LatencyReport:
    def result(memory: int, p50: float, path: str = "emulator") -> LatencyResult:
        return LatencyResult(memory_mb=memory, threads=1, variant="fp32", image="1mp", path=path,
                             p50_ms=p50, p90_ms=p50 + 10, p99_ms=p50 + 20)
    return LatencyReport(results=(result(1769, 400.0), result(1769, 380.0, "classifier"), result(3008, 230.0)),
                         recommended_memory_mb=2048, cold_start=ColdStart(init_ms=1800.0))


def test_omitted_figures_come_from_the_latency_file() -> None:
    # GIVEN a scenario without duration, init or memory, and a latency run recommending 2,048 MB
    data = {"workload": {"requests_per_month": 1e6, "cold_start_fraction": 0.01}}
    # WHEN it is resolved
    s = scenario_from_dict(data, latency=_latency())
    # THEN memory is the recommended size, duration the emulator p50 at the largest measured size
    # not above it (1,769 MB), and init the measured cold start
    assert s.lambda_config.memory_mb == 2048
    assert s.workload.duration_ms == 400.0
    assert s.workload.init_ms == 1800.0
    assert "1769 MB" in s.sources["duration_ms"] and s.sources["init_ms"].startswith("latency.json")


def test_warm_result_prefers_the_emulator_and_falls_back_to_the_classifier() -> None:
    # GIVEN measurements through both paths at 1,769 MB, and through the classifier only
    both = _latency()
    classifier_only = LatencyReport(results=tuple(r for r in both.results if r.path == "classifier"))
    # WHEN the result for a 2,048 MB function is chosen
    # THEN the emulator's end-to-end figure wins when there is one, the classifier's otherwise
    assert select_warm_result(both, 2048).p50_ms == 400.0
    assert select_warm_result(classifier_only, 2048).p50_ms == 380.0
    assert select_warm_result(both, 2048, path="classifier").p50_ms == 380.0
    with pytest.raises(LatencyFileError, match="image '4mp'"):
        select_warm_result(both, 2048, image="4mp")


def test_scenario_values_win_over_the_latency_file() -> None:
    # GIVEN a scenario giving its own duration, init and memory
    data = {"workload": {"requests_per_month": 1e6, "duration_ms": 250, "init_ms": 900},
            "lambda": {"memory_mb": 3008}}
    # WHEN it is resolved with a latency file
    s = scenario_from_dict(data, latency=_latency())
    # THEN the scenario's values are used
    assert (s.workload.duration_ms, s.workload.init_ms, s.lambda_config.memory_mb) == (250, 900, 3008)


def test_latency_file_without_a_fitting_measurement_is_an_error() -> None:
    # GIVEN a 1,024 MB function and measurements only at 1,769 MB and above
    data = {"workload": {"requests_per_month": 1e6, "init_ms": 0}, "lambda": {"memory_mb": 1024}}
    # WHEN / THEN resolution fails naming the measured sizes
    with pytest.raises(ScenarioError, match="1769, 3008"):
        scenario_from_dict(data, latency=_latency())


def test_latency_file_round_trips_and_rejects_bad_shapes() -> None:
    # GIVEN a report written to its JSON form
    report = _latency()
    # WHEN it is read back / a malformed one is read
    again = latency_from_dict(report.to_dict())
    # THEN it is the same; a result without p50 and an unknown schema version are refused
    assert again == report
    broken = report.to_dict()
    del broken["results"][0]["p50_ms"]
    with pytest.raises(LatencyFileError, match="p50_ms"):
        latency_from_dict(broken)
    with pytest.raises(LatencyFileError, match="schema_version"):
        latency_from_dict({**report.to_dict(), "schema_version": 99})


def _served_int8() -> LatencyReport:
    """int8 (ONNX Runtime) served by default, fp32 (torch) measured too, each with its cold start and file."""
    def result(variant: str, p50: float) -> LatencyResult:
        return LatencyResult(memory_mb=3008, threads=2, variant=variant, image="1mp", path="emulator",
                             p50_ms=p50, p90_ms=p50 + 5, p99_ms=p50 + 10)
    return LatencyReport(
        results=(result("fp32", 230.0), result("int8", 45.0)), recommended_memory_mb=3008,
        cold_start=ColdStart(init_ms=600.0, first_response_ms=900.0, variant="int8", engine="onnxruntime"),
        served_variant="int8", engines={"fp32": "torch", "int8": "onnxruntime"},
        variant_cold_starts={"fp32": ColdStart(init_ms=1900.0, variant="fp32", engine="torch")},
        model_files_mb={"fp32": 95.0, "int8": 25.0},
    )


def test_the_served_variant_is_priced_by_default_with_its_cold_start_and_file() -> None:
    # GIVEN a latency run whose function serves int8 by default, and a scenario naming no variant
    data = {"workload": {"requests_per_month": 1e6, "cold_start_fraction": 0.01}}
    # WHEN it is resolved
    s = scenario_from_dict(data, latency=_served_int8())
    # THEN int8 is priced: its p50, its cold start, its file read per cold start; both files stored
    assert (s.variant, s.engine) == ("int8", "onnxruntime")
    assert (s.workload.duration_ms, s.workload.init_ms) == (45.0, 600.0)
    assert (s.supporting.model_mb, s.supporting.read_mb) == (120.0, 25.0)
    assert s.sources["variant"].startswith("latency.json served_variant")
    # AND 10,000 cold starts read 25 MB each from EFS while 120 MB are stored
    support = supporting_cost(s, PRICING)
    assert support.details["efs_elastic_reads"] == pytest.approx(10_000 * 25 / 1024 * 0.03)
    assert support.details["efs_storage"] == pytest.approx(120 / 1024 * 0.30)
    assert support.items["s3"] == pytest.approx(120 / 1024 * 0.023)


def test_a_scenario_names_the_variant_it_prices_and_needs_its_cold_start() -> None:
    # GIVEN the same run, and scenarios asking for fp32 (measured) and fp32-graph (not measured)
    base = {"workload": {"requests_per_month": 1e6, "cold_start_fraction": 0.01}}
    # WHEN / THEN fp32 is priced with its own figures
    s = scenario_from_dict({**base, "latency": {"variant": "fp32"}}, latency=_served_int8())
    assert (s.variant, s.engine, s.workload.duration_ms, s.workload.init_ms, s.supporting.read_mb) == \
        ("fp32", "torch", 230.0, 1900.0, 95.0)
    assert s.sources["init_ms"] == "latency.json variant_cold_starts.fp32.init_ms, variant fp32"
    # AND a variant without measurements is refused, naming what was measured
    with pytest.raises(ScenarioError, match="variant 'fp32-graph'"):
        scenario_from_dict({**base, "latency": {"variant": "fp32-graph"}}, latency=_served_int8())
    # AND a scenario's own model sizes win over latency.json's files
    s = scenario_from_dict({**base, "supporting": {"model_mb": 300, "cold_start_read_mb": 50}},
                           latency=_served_int8())
    assert (s.supporting.model_mb, s.supporting.read_mb) == (300.0, 50.0)


def test_a_latency_file_from_before_variants_prices_fp32_and_reads_the_whole_model() -> None:
    # GIVEN an older latency.json: no served variant, one cold start of unknown variant, no file sizes
    data = {"workload": {"requests_per_month": 1e6, "cold_start_fraction": 0.01}}
    # WHEN a scenario without [latency] variant is resolved against it
    s = scenario_from_dict(data, latency=_latency())
    # THEN fp32 is priced with that cold start, and a cold start reads the whole (default) model
    assert s.variant == "fp32" and s.engine is None and s.workload.init_ms == 1800.0
    assert s.supporting.read_mb == s.supporting.model_mb == 100.0


def test_variant_fields_round_trip_through_json() -> None:
    # GIVEN a report with a served variant, engines, per-variant cold starts and file sizes
    report = _served_int8()
    # WHEN it is written and read back
    again = latency_from_dict(report.to_dict())
    # THEN nothing is lost, and the cold start of each variant is found
    assert again == report
    assert select_cold_start(again).init_ms == 600.0 and select_cold_start(again, "fp32").init_ms == 1900.0
    with pytest.raises(LatencyFileError, match="measured: fp32, int8"):
        select_cold_start(again, "fp32-graph")


@pytest.mark.parametrize(("data", "message"), [
    ({"workload": {"requests_per_month": 1, "duration_ms": 5, "durration": 1}}, "unknown key workload.durration"),
    ({"workload": {"requests_per_month": 1, "duration_ms": 5}, "lamda": {}}, "unknown table"),
    ({"workload": {"requests_per_month": 1}, "lambda": {"memory_mb": 1024}}, "duration_ms"),
    ({"workload": {"requests_per_month": 1, "duration_ms": 5, "cold_start_fraction": 0.1},
      "lambda": {"memory_mb": 1024}}, "init_ms"),
    ({"workload": {"requests_per_month": 1, "duration_ms": 5}, "lambda": {"memory_mb": 64}}, "memory_mb"),
    ({"workload": {"requests_per_month": 1, "duration_ms": 5, "init_ms": 0},
      "lambda": {"memory_mb": 1024, "architecture": "sparc"}}, "lambda.architecture must be one of"),
    ({"workload": {"requests_per_month": 1, "duration_ms": 901_000}, "lambda": {"memory_mb": 1024}},
     "duration_ms"),
])
def test_bad_scenarios_are_refused_with_the_key_named(data: dict[str, Any], message: str) -> None:
    # GIVEN a scenario with a typo, a missing input or a value out of range
    # WHEN / THEN it is refused with a message naming the key
    with pytest.raises(ScenarioError, match=message):
        scenario_from_dict(data)


def test_price_table_has_a_source_and_date_for_every_entry(tmp_path: Path) -> None:
    # GIVEN the shipped price table, and a copy with one source removed
    entries = list(PRICING.entries())
    broken = tmp_path / "pricing.toml"
    text = (Path(__file__).resolve().parents[2] / "benchmarks" / "pricing.toml").read_text()
    broken.write_text(text.replace('source = "https://aws.amazon.com/ecr/pricing/"\n', "", 1))
    # WHEN / THEN every entry has an https source and a date; the broken copy is refused
    assert len(entries) >= 20
    assert all(e.source.startswith("https://") and e.as_of.year >= 2025 for _, e in entries)
    with pytest.raises(PricingError, match=r"\[ecr.storage\] lacks `source`"):
        load_pricing(broken)


def test_json_has_the_structure_the_issue_asks_for() -> None:
    # GIVEN the default scenario
    result = estimate(load_scenario(SCENARIOS / "default.toml"), PRICING)
    # WHEN it is turned into JSON form
    data = to_json_dict(result)
    # THEN the issue's keys are there and the Lambda total is its items' sum
    assert {"lambda", "supporting", "sagemaker_serverless", "sagemaker_realtime", "break_even"} <= set(data)
    assert set(data["supporting"]["items"]) == {"efs", "s3", "ecr"}
    assert data["lambda"]["total_usd"] == pytest.approx(sum(data["lambda"]["items"].values()))
    assert set(data["sagemaker_realtime"]) == {"ml.t2.medium", "ml.m5.large", "ml.g4dn.xlarge"}
    assert set(data["break_even"]) == {"sagemaker_serverless", "ml.t2.medium", "ml.m5.large", "ml.g4dn.xlarge"}
