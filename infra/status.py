"""`python -m infra status`: every resource of the stack with its state, in a few lines.

Reads only. Shows what `deploy` owns (found by tags), the alias routing (and a running canary),
reserved and provisioned concurrency, the Function URL and the alarms' states, and says
"missing" where something is not there, so a half-finished deploy or destroy is visible.
"""

from __future__ import annotations

from infra.aws import AWS
from infra.inventory import Inventory, take_inventory
from infra.resources import ALIAS, EFS_MODEL_TAG, Stack, fingerprint_of

MISSING = "missing (run deploy)"


def status_lines(stack: Stack, aws: AWS) -> list[str]:
    inventory = take_inventory(stack, aws)
    lines = [f"stack {stack.name} in {stack.region} (account {stack.account})"]

    def row(label: str, text: str) -> None:
        lines.append(f"  {label:<16}{text}")

    if inventory.is_empty:
        row("resources", "none found with tag breedserve:stack=" + stack.name)
        return lines
    bucket = inventory.bucket
    row("model bucket", f"{bucket.name}: versioning {bucket.versioning or 'off'}, "
                        f"{'encrypted' if bucket.encryption else 'NOT encrypted'}, store {stack.store_uri}"
        if bucket else MISSING)
    row("image repo", inventory.repository.uri if inventory.repository else MISSING)
    lines += _network_lines(stack, inventory)
    fs = inventory.file_system
    if fs:
        targets = ", ".join(f"{t.id} {t.state}" for t in inventory.mount_targets) or "no mount targets"
        points = ", ".join(f"{p.id} {p.path}" for p in inventory.access_points) or "no access point"
        row("file system", f"{fs.id} {fs.state}, {fs.size_bytes / 1e6:.1f} MB; {targets}; {points}")
    elif stack.config.efs.create:
        row("file system", MISSING)
    row("roles", ", ".join(inventory.roles) or MISSING)
    row("log groups", ", ".join(inventory.log_groups) or MISSING)
    for name in (stack.inference_function, stack.sync_function):
        state = inventory.functions.get(name)
        row("function", f"{name}: {state.state}/{state.last_update_status or '-'}, {state.architecture}, "
                        f"{state.memory_mb} MB, image {state.image_uri}" if state else f"{name}: {MISSING}")
    sync = inventory.functions.get(stack.sync_function)
    if sync is not None:
        confirmed = sync.tags.get(EFS_MODEL_TAG)
        row("model on EFS",
            f"{confirmed} (confirmed by the last deploy that ran {stack.sync_function})" if confirmed
            else f"not confirmed by a deploy; published versions reach EFS through {stack.sync_function}")
    lines += _alias_lines(stack, aws, inventory)
    for name, alarm in sorted(inventory.alarms.items()):
        row("alarm", f"{name}: {alarm.state}")
    return lines


def _network_lines(stack: Stack, inventory: Inventory) -> list[str]:
    if not stack.config.network.create:
        return [f"  {'network':<16}reused: subnets {', '.join(stack.config.network.subnet_ids)}"]
    if not inventory.vpc_id:
        return [f"  {'network':<16}{MISSING}"]
    subnets = ", ".join(f"{s.id} ({s.availability_zone})" for s in inventory.subnets.values())
    groups = ", ".join(f"{g.id} ({g.role.removeprefix('sg-')})" for g in inventory.security_groups.values())
    return [f"  {'network':<16}{inventory.vpc_id}: subnets {subnets}",
            f"  {'':<16}security groups {groups}; S3 endpoint {inventory.s3_endpoint or 'missing'}"]


def _alias_lines(stack: Stack, aws: AWS, inventory: Inventory) -> list[str]:
    function = stack.inference_function
    if function not in inventory.functions:
        return []
    lines = []
    alias = aws.alias(function, ALIAS)
    if alias is None:
        return [f"  {'alias ' + ALIAS:<16}{MISSING}"]
    versions = {v.version: v for v in aws.versions(function)}

    def describe(version: str) -> str:
        item = versions.get(version)
        model = item.environment.get("MODEL_VERSION", "?") if item else "?"
        return f"version {version} (model {model}, spec {fingerprint_of(item.description) if item else '?'})"

    if alias.canary:
        canary, weight = alias.canary
        routing = f"{describe(alias.version)} {1 - weight:.0%}; canary {describe(canary)} {weight:.0%}"
    else:
        routing = f"{describe(alias.version)} 100%"
    lines.append(f"  {'alias ' + ALIAS:<16}{routing}")
    reserved = aws.reserved_concurrency(function)
    provisioned = "off"
    if inventory.scaling:
        scaling = inventory.scaling
        provisioned = (f"{scaling.min}-{scaling.max} at {scaling.target_utilization or 0:.0%} target; "
                       f"{aws.provisioned_concurrency_status(function, ALIAS) or 'not allocated'}")
    lines.append(f"  {'concurrency':<16}reserved {reserved or 'none'}; provisioned {provisioned}")
    url = aws.function_url(function, ALIAS)
    lines.append(f"  {'function URL':<16}{url.url} (auth {url.auth})" if url else f"  {'function URL':<16}{MISSING}")
    return lines
