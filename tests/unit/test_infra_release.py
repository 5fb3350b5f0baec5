"""Canary, promote, rollback and the canary watch, planned against the in-memory AWS."""

from __future__ import annotations

import dataclasses
import io

import pytest
from test_infra_fakes import FakeAWS, make_stack

from infra.exceptions import CanaryRolledBackError, ReleaseError
from infra.executor import Executor
from infra.plan import Plan
from infra.planner import plan_deploy
from infra.release import plan_canary, plan_promote, plan_rollback, watch_canary
from infra.resources import ALIAS, Stack
from infra.state import AliasState


def run(remote: FakeAWS, plan: Plan) -> None:
    Executor(remote, io.StringIO()).execute(plan)


def deployed() -> tuple[FakeAWS, Stack]:
    remote, stack = FakeAWS(), make_stack()
    run(remote, plan_deploy(stack, remote))
    return remote, stack


def live(remote: FakeAWS, stack: Stack) -> AliasState:
    return remote.aliases[(stack.inference_function, ALIAS)]


def test_canary_publishes_the_new_model_version_and_routes_a_share_to_it() -> None:
    # GIVEN version 1 serving model demo-1
    remote, stack = deployed()
    # WHEN a canary of model demo-2 at 10%
    run(remote, plan_canary(stack, remote, 0.1, model_version="demo-2"))
    # THEN version 2 pins MODEL_VERSION=demo-2 and gets 10% of live; version 1 keeps the rest
    assert live(remote, stack) == AliasState(ALIAS, "1", {"2": 0.1}, "")
    version_2 = remote.function(stack.inference_function, "2")
    assert version_2 is not None and version_2.environment["MODEL_VERSION"] == "demo-2"
    # AND the canary alarm watches version 2
    dims = remote.alarm_states["demo-canary-error-rate"].definition["Metrics"][0]["MetricStat"]["Metric"]["Dimensions"]
    assert {"Name": "ExecutedVersion", "Value": "2"} in dims


def test_canary_again_with_another_weight_only_reroutes() -> None:
    # GIVEN a running canary at 10%
    remote, stack = deployed()
    run(remote, plan_canary(stack, remote, 0.1, model_version="demo-2"))
    # WHEN asked again for 25%
    plan = plan_canary(stack, remote, 0.25, model_version="demo-2")
    # THEN only the weight changes
    assert [c.method for c in plan.calls] == ["route_alias"]
    run(remote, plan)
    assert live(remote, stack).weights == {"2": 0.25}


def test_a_second_different_canary_is_refused() -> None:
    # GIVEN a running canary of demo-2
    remote, stack = deployed()
    run(remote, plan_canary(stack, remote, 0.1, model_version="demo-2"))
    # WHEN a canary of demo-3 is asked for
    # THEN it is refused until the first is promoted or rolled back
    with pytest.raises(ReleaseError, match="already running"):
        plan_canary(stack, remote, 0.1, model_version="demo-3")


def test_canary_of_what_already_serves_is_refused() -> None:
    # GIVEN the configured spec serving
    remote, stack = deployed()
    # WHEN a canary with no change
    # THEN nothing can be canaried
    with pytest.raises(ReleaseError, match="already serves"):
        plan_canary(stack, remote, 0.1)


@pytest.mark.parametrize("weight", [0.0, 1.0, -0.5, 1.5])
def test_canary_weight_must_be_strictly_between_zero_and_one(weight: float) -> None:
    remote, stack = deployed()
    with pytest.raises(ReleaseError, match="--weight"):
        plan_canary(stack, remote, weight, model_version="demo-2")


def test_promote_sends_all_traffic_to_the_canary_and_records_the_previous_version() -> None:
    # GIVEN a canary of version 2
    remote, stack = deployed()
    run(remote, plan_canary(stack, remote, 0.1, image_uri=stack.config.image.uri.replace("0.1.0", "0.2.0")))
    # WHEN promoted
    run(remote, plan_promote(stack, remote))
    # THEN live is version 2 alone, remembering version 1
    assert live(remote, stack) == AliasState(ALIAS, "2", {}, "previous version 1")
    with pytest.raises(ReleaseError, match="no canary"):
        plan_promote(stack, remote)


def test_rollback_drops_a_running_canary() -> None:
    # GIVEN a canary of version 2
    remote, stack = deployed()
    run(remote, plan_canary(stack, remote, 0.3, model_version="demo-2"))
    # WHEN rolled back
    run(remote, plan_rollback(stack, remote))
    # THEN version 1 takes all traffic again and the alarm watches it
    assert live(remote, stack).version == "1" and live(remote, stack).weights == {}
    dims = remote.alarm_states["demo-canary-error-rate"].definition["Metrics"][0]["MetricStat"]["Metric"]["Dimensions"]
    assert {"Name": "ExecutedVersion", "Value": "1"} in dims


def test_rollback_after_promote_returns_to_the_previous_version_once() -> None:
    # GIVEN version 2 promoted over version 1
    remote, stack = deployed()
    run(remote, plan_canary(stack, remote, 0.1, model_version="demo-2"))
    run(remote, plan_promote(stack, remote))
    # WHEN rolled back
    run(remote, plan_rollback(stack, remote))
    # THEN version 1 serves, and a second rollback has nowhere to go
    assert live(remote, stack) == AliasState(ALIAS, "1", {}, "")
    with pytest.raises(ReleaseError, match="no previous version"):
        plan_rollback(stack, remote)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_watch_rolls_back_when_the_canary_alarm_fires() -> None:
    # GIVEN a canary whose error-rate alarm fires on the third poll
    remote, stack = deployed()
    run(remote, plan_canary(stack, remote, 0.1, model_version="demo-2"))
    clock, polls = FakeClock(), []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        clock.sleep(seconds)
        if len(polls) == 2:
            name = "demo-canary-error-rate"
            remote.alarm_states[name] = dataclasses.replace(remote.alarm_states[name], state="ALARM")

    out = io.StringIO()
    # WHEN watched for 10 minutes
    with pytest.raises(CanaryRolledBackError, match="version 2 rolled back"):
        watch_canary(stack, remote, 10, poll_seconds=30, rollback=lambda plan: run(remote, plan), out=out,
                     sleep=sleep, clock=clock)
    # THEN it rolled back after the alarm fired, a minute in
    assert live(remote, stack).weights == {} and live(remote, stack).version == "1"
    assert clock.now == 60 and "rolling back" in out.getvalue()


def test_watch_ends_quietly_when_the_canary_stays_healthy() -> None:
    # GIVEN a healthy canary
    remote, stack = deployed()
    run(remote, plan_canary(stack, remote, 0.1, model_version="demo-2"))
    clock, out = FakeClock(), io.StringIO()
    # WHEN watched for 2 minutes
    watch_canary(stack, remote, 2, poll_seconds=30, rollback=lambda plan: pytest.fail("rolled back"), out=out,
                 sleep=clock.sleep, clock=clock)
    # THEN it polled until the end, left the canary alone and suggests promote
    assert clock.now == 120
    assert live(remote, stack).weights == {"2": 0.1}
    assert "run `promote`" in out.getvalue()
