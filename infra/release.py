"""Releases on the `live` alias: canary, promote, rollback, and watching a canary.

A Lambda version here is code + model: `canary` builds the inference spec from the config (with
`--image`/`--model-version` overriding it), publishes it as a new version (or reuses a published
version with the same fingerprint) and sends `weight` of the alias's traffic to it. `promote`
makes the canary the alias's version; `rollback` drops the canary, or, when none is running,
returns to the version recorded in the alias description by the last move. Each is a plan, run
by the same executors as `deploy`. The canary error-rate alarm follows the newest version that
takes traffic, so `watch_canary` only has to read its state.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TextIO

from infra.exceptions import CanaryRolledBackError, ReleaseError
from infra.plan import Plan, has_refs
from infra.planner import DeployPlanner, FileSystemIds, NetworkIds
from infra.resources import ALIAS, Stack, Value, fingerprint_of, inference_spec
from infra.state import AliasState, FunctionState, RemoteState

_PREVIOUS_RE = re.compile(r"previous version (\d+)")


def _live(stack: Stack, remote: RemoteState) -> tuple[FunctionState, AliasState]:
    state = remote.function(stack.inference_function)
    alias = remote.alias(stack.inference_function, ALIAS) if state else None
    if state is None or alias is None:
        raise ReleaseError(f"{stack.inference_function}:{ALIAS} does not exist: run `deploy` first")
    return state, alias


def observed_ids(stack: Stack, remote: RemoteState) -> tuple[NetworkIds, FileSystemIds]:
    """The network and file system ids as deployed; refuses if they differ from the config."""
    probe = DeployPlanner(stack, remote)
    network = probe.plan_network()
    file_system = probe.plan_file_system(network)
    if probe.b.build().calls or has_refs((network, file_system)):
        raise ReleaseError("the network or file system differ from the config: run `deploy` (or `plan`) first")
    return network, file_system


def plan_canary(stack: Stack, remote: RemoteState, weight: float, *, image_uri: str | None = None,
                model_version: str | None = None) -> Plan:
    if not 0.0 < weight < 1.0:
        raise ReleaseError(f"--weight must be between 0 and 1 (exclusive), not {weight}")
    state, alias = _live(stack, remote)
    network, file_system = observed_ids(stack, remote)
    spec = inference_spec(stack, network.subnet_ids, network.inference_groups, file_system.access_point_arn,
                          image_uri=image_uri, model_version=model_version)
    fingerprint = spec.fingerprint()
    planner = DeployPlanner(stack, remote)
    fingerprints = {v.version: fingerprint_of(v.description) for v in remote.versions(spec.name)}
    if alias.canary:
        version, current = alias.canary
        if fingerprints.get(version) != fingerprint:
            raise ReleaseError(f"a canary (version {version} at {current:.0%}) is already running: "
                               "run `promote` or `rollback` first")
        if abs(current - weight) < 1e-9:
            planner.b.unchanged("inference function", f"canary version {version} already gets {weight:.0%}")
        else:
            planner.b.call("inference function", f"canary version {version}: {current:.0%} -> {weight:.0%}",
                           "route_alias", function=spec.name, name=ALIAS, version=alias.version,
                           weights={version: weight}, description=alias.description)
        canary: Value = version
    else:
        if fingerprints.get(alias.version) == fingerprint:
            raise ReleaseError(f"version {alias.version} already serves this image and model to all traffic: "
                               "give --image or --model-version (or change them in the config)")
        canary = planner.plan_new_version(spec, state, alias, weights=weight)
    planner.plan_alarms(canary)
    planner.b.note(f"canary: {spec.image_uri}, model {spec.environment['MODEL_VERSION']}")
    return planner.b.build()


def plan_promote(stack: Stack, remote: RemoteState) -> Plan:
    _, alias = _live(stack, remote)
    if not alias.canary:
        raise ReleaseError(f"no canary is running on {ALIAS} (version {alias.version} serves all traffic)")
    version, weight = alias.canary
    planner = DeployPlanner(stack, remote)
    planner.b.call("inference function", f"promote: all traffic to version {version} (was {weight:.0%}), "
                   f"previous {alias.version}", "route_alias", function=stack.inference_function, name=ALIAS,
                   version=version, weights={}, description=f"previous version {alias.version}")
    planner.plan_alarms(version)
    planner.b.note("the config still names the old image/model version unless you changed it: update [image] uri and "
                   "[model] version, or the next `deploy` returns live to them")
    return planner.b.build()


def plan_rollback(stack: Stack, remote: RemoteState) -> Plan:
    _, alias = _live(stack, remote)
    planner = DeployPlanner(stack, remote)
    if alias.canary:
        version, weight = alias.canary
        planner.b.call("inference function", f"rollback: drop canary version {version} ({weight:.0%}); all traffic "
                       f"to version {alias.version}", "route_alias", function=stack.inference_function, name=ALIAS,
                       version=alias.version, weights={}, description=alias.description)
        planner.plan_alarms(alias.version)
        return planner.b.build()
    match = _PREVIOUS_RE.search(alias.description)
    if not match:
        raise ReleaseError(f"no canary is running and {ALIAS} records no previous version to return to")
    previous = match.group(1)
    planner.b.call("inference function", f"rollback: all traffic from version {alias.version} back to {previous}",
                   "route_alias", function=stack.inference_function, name=ALIAS, version=previous, weights={},
                   description="")
    planner.plan_alarms(previous)
    return planner.b.build()


def watch_canary(stack: Stack, remote: RemoteState, minutes: float, *, poll_seconds: float,
                 rollback: Callable[[Plan], object], out: TextIO,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Poll the canary alarm for `minutes`; on ALARM run the rollback plan and raise."""
    alarm = stack.alarm("canary-error-rate")
    deadline = clock() + minutes * 60
    while True:
        _, alias = _live(stack, remote)
        if not alias.canary:
            print(f"no canary is running any more ({ALIAS} -> version {alias.version}): stopped watching", file=out)
            return
        state = remote.alarms([alarm]).get(alarm)
        if state is None:
            raise ReleaseError(f"alarm {alarm} does not exist: run `deploy` first")
        left = deadline - clock()
        if state.state == "ALARM":
            version = alias.canary[0]
            print(f"alarm {alarm} fired for version {version}: rolling back", file=out, flush=True)
            rollback(plan_rollback(stack, remote))
            raise CanaryRolledBackError(f"canary version {version} rolled back: {alarm} fired "
                                        f"(error rate above {stack.config.alarms.canary_error_rate_percent}%)")
        if left <= 0:
            print(f"canary version {alias.canary[0]} stayed healthy for {minutes:g} min: run `promote` to send it "
                  "all traffic", file=out)
            return
        print(f"canary version {alias.canary[0]} at {alias.canary[1]:.0%}: {alarm} {state.state}, "
              f"{left / 60:.1f} min left", file=out, flush=True)
        sleep(min(poll_seconds, max(left, 0.0)))
