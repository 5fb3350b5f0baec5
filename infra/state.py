"""What exists in AWS, as the façade reports it: small frozen records the planners compare.

The façade (`infra.aws`) turns boto3's responses into these records and the in-memory fake used
by the unit tests builds them directly, so planners never see a raw response. A field that the
service did not report is `None`, which planners treat as "unknown", never as "empty".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.plan import Ref


@dataclass(frozen=True)
class BucketState:
    name: str
    public_access_block: Mapping[str, bool] | None
    encryption: str | None
    versioning: str | None
    policy: Mapping[str, Any] | None
    tags: Mapping[str, str]
    notifications: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class RepositoryState:
    name: str
    uri: str
    arn: str
    tag_mutability: str
    scan_on_push: bool
    lifecycle_policy: Mapping[str, Any] | None
    tags: Mapping[str, str]


@dataclass(frozen=True)
class SubnetState:
    id: str
    availability_zone: str
    cidr: str
    role: str


@dataclass(frozen=True)
class Rule:
    """One security-group rule, normalised: `peer` is a group id, a prefix list id or a CIDR.

    While planning, `peer` may be a `Ref` to a group that a step will create.
    """

    egress: bool
    protocol: str
    from_port: int
    to_port: int
    peer: str | Ref

    def describe(self) -> str:
        direction = "egress to" if self.egress else "ingress from"
        ports = "all" if self.protocol == "-1" else f"{self.protocol}/{self.from_port}" + (
            f"-{self.to_port}" if self.to_port != self.from_port else "")
        return f"{direction} {self.peer} on {ports}"


@dataclass(frozen=True)
class SecurityGroupState:
    id: str
    role: str
    rules: Mapping[Rule, str]  # rule -> rule id


@dataclass(frozen=True)
class FileSystemState:
    id: str
    arn: str
    state: str
    encrypted: bool
    throughput_mode: str
    size_bytes: int
    tags: Mapping[str, str]


@dataclass(frozen=True)
class FileSystemIds:
    """What creating a file system or an access point yields: later steps need both forms."""

    id: str
    arn: str


@dataclass(frozen=True)
class MountTargetState:
    id: str
    subnet_id: str
    state: str
    security_groups: tuple[str, ...]


@dataclass(frozen=True)
class AccessPointState:
    id: str
    arn: str
    file_system_id: str
    path: str
    uid: int
    gid: int
    tags: Mapping[str, str]


@dataclass(frozen=True)
class RoleState:
    name: str
    arn: str
    trust_policy: Mapping[str, Any]
    inline_policies: Mapping[str, Mapping[str, Any]]
    tags: Mapping[str, str]


@dataclass(frozen=True)
class LogGroupState:
    name: str
    retention_days: int | None
    tags: Mapping[str, str]


@dataclass(frozen=True)
class FunctionState:
    """A function's configuration ($LATEST, or one published version)."""

    name: str
    arn: str
    version: str
    state: str
    last_update_status: str | None
    description: str
    role: str
    image_uri: str | None
    command: tuple[str, ...] | None
    architecture: str
    memory_mb: int
    timeout_s: int
    ephemeral_storage_mb: int
    environment: Mapping[str, str]
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    file_system_configs: tuple[tuple[str, str], ...] | None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionState:
    version: str
    description: str
    environment: Mapping[str, str] = field(default_factory=dict)
    image_uri: str | None = None


@dataclass(frozen=True)
class AliasState:
    name: str
    version: str
    weights: Mapping[str, float]
    description: str

    @property
    def canary(self) -> tuple[str, float] | None:
        """The (version, weight) receiving a share of traffic, if a canary is running."""
        for version, weight in self.weights.items():
            return version, weight
        return None


@dataclass(frozen=True)
class UrlState:
    url: str
    auth: str
    cors: Mapping[str, Any]
    invoke_mode: str


@dataclass(frozen=True)
class ScalingState:
    min: int
    max: int
    target_utilization: float | None


@dataclass(frozen=True)
class AlarmState:
    name: str
    arn: str
    state: str
    definition: Mapping[str, Any]
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSyncResult:
    """What the model-sync function reported after a synchronous invocation."""

    name: str
    version: str
    directory: str
    downloaded: bool
    bytes_downloaded: int


class RemoteState(Protocol):
    """The read-only half of the façade: everything a planner may ask. No call here changes AWS."""

    def account_id(self) -> str: ...
    def availability_zones(self) -> list[str]: ...
    def bucket(self, name: str) -> BucketState | None: ...
    def object_exists(self, bucket: str, key: str) -> bool: ...
    def repository(self, name: str) -> RepositoryState | None: ...
    def find_vpc(self, stack: str) -> str | None: ...
    def find_subnets(self, vpc_id: str, stack: str) -> dict[str, SubnetState]: ...
    def find_security_groups(self, vpc_id: str, stack: str) -> dict[str, SecurityGroupState]: ...
    def security_groups(self, group_ids: list[str]) -> dict[str, SecurityGroupState]: ...
    def main_route_table(self, vpc_id: str) -> str: ...
    def find_s3_endpoint(self, vpc_id: str, stack: str) -> str | None: ...
    def s3_prefix_list(self) -> str: ...
    def file_system_by_token(self, token: str) -> FileSystemState | None: ...
    def file_system(self, file_system_id: str) -> FileSystemState | None: ...
    def mount_targets(self, file_system_id: str) -> list[MountTargetState]: ...
    def access_points(self, file_system_id: str) -> list[AccessPointState]: ...
    def file_system_policy(self, file_system_id: str) -> dict[str, Any] | None: ...
    def role(self, name: str) -> RoleState | None: ...
    def log_group(self, name: str) -> LogGroupState | None: ...
    def function(self, name: str, qualifier: str | None = None) -> FunctionState | None: ...
    def versions(self, name: str) -> list[VersionState]: ...
    def alias(self, function: str, name: str) -> AliasState | None: ...
    def function_url(self, function: str, qualifier: str) -> UrlState | None: ...
    def permission_ids(self, function: str, qualifier: str | None = None) -> set[str]: ...
    def reserved_concurrency(self, function: str) -> int | None: ...
    def provisioned_concurrency(self, function: str, qualifier: str) -> int | None: ...
    def scaling(self, function: str, qualifier: str) -> ScalingState | None: ...
    def alarms(self, names: list[str]) -> dict[str, AlarmState]: ...
