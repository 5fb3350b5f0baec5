"""Find what a stack owns, by its tags: the input of `destroy` and `status`.

Names come from the config (so lookups are direct), but nothing counts as the stack's unless it
also carries `breedserve:stack=<name>`: a function or bucket someone else made under a colliding
name is never touched. EC2 resources are searched by the tag alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infra.aws import AWS
from infra.config import STACK_TAG
from infra.resources import ALIAS, RESOURCE_TAG, Stack
from infra.state import (
    AccessPointState,
    AlarmState,
    BucketState,
    FileSystemState,
    FunctionState,
    MountTargetState,
    RepositoryState,
    ScalingState,
    SecurityGroupState,
    SubnetState,
)


@dataclass(frozen=True)
class Inventory:
    """Everything found for one stack; empty fields mean "not there"."""

    bucket: BucketState | None = None
    repository: RepositoryState | None = None
    vpc_id: str | None = None
    subnets: dict[str, SubnetState] = field(default_factory=dict)
    security_groups: dict[str, SecurityGroupState] = field(default_factory=dict)
    s3_endpoint: str | None = None
    file_system: FileSystemState | None = None
    mount_targets: tuple[MountTargetState, ...] = ()
    access_points: tuple[AccessPointState, ...] = ()
    roles: tuple[str, ...] = ()
    log_groups: tuple[str, ...] = ()
    functions: dict[str, FunctionState] = field(default_factory=dict)
    scaling: ScalingState | None = None
    alarms: dict[str, AlarmState] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not any((self.bucket, self.repository, self.vpc_id, self.file_system, self.roles, self.log_groups,
                        self.functions, self.alarms))


def take_inventory(stack: Stack, aws: AWS) -> Inventory:
    name = stack.name

    def ours(tags: dict[str, str] | object) -> bool:
        return isinstance(tags, dict) and tags.get(STACK_TAG) == name

    bucket = aws.bucket(stack.bucket)
    repository = aws.repository(stack.repository)
    vpc_id = aws.find_vpc(name)
    file_system = aws.file_system_by_token(stack.file_system_token)
    if file_system is not None and not ours(dict(file_system.tags)):
        file_system = None
    functions = {}
    for function in (stack.inference_function, stack.sync_function):
        state = aws.function(function)
        if state is not None and ours(dict(state.tags)):
            functions[function] = state
    roles = tuple(r for r in (stack.inference_function, stack.sync_function)
                  if (role := aws.role(r)) is not None and ours(dict(role.tags)))
    log_groups = tuple(stack.log_group(f) for f in (stack.inference_function, stack.sync_function)
                       if (group := aws.log_group(stack.log_group(f))) is not None and ours(dict(group.tags)))
    return Inventory(
        bucket=bucket if bucket is not None and ours(dict(bucket.tags)) else None,
        repository=repository if repository is not None and ours(dict(repository.tags)) else None,
        vpc_id=vpc_id,
        subnets=aws.find_subnets(vpc_id, name) if vpc_id else {},
        security_groups=aws.find_security_groups(vpc_id, name) if vpc_id else {},
        s3_endpoint=aws.find_s3_endpoint(vpc_id, name) if vpc_id else None,
        file_system=file_system,
        mount_targets=tuple(aws.mount_targets(file_system.id)) if file_system else (),
        access_points=tuple(p for p in aws.access_points(file_system.id) if ours(dict(p.tags))
                            and p.tags.get(RESOURCE_TAG) == "access-point") if file_system else (),
        roles=roles,
        log_groups=log_groups,
        functions=functions,
        scaling=aws.scaling(stack.inference_function, ALIAS) if stack.inference_function in functions else None,
        alarms={n: a for n, a in aws.alarms_with_prefix(f"{name}-").items() if ours(dict(a.tags))},
    )
