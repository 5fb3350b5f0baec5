"""An in-memory AWS for the planner tests, and the tests that keep it honest.

`FakeAWS` implements the read-only `RemoteState` methods and the mutation methods plans call,
with the same names and signatures as `infra.aws.AWS`, over plain dicts. So a unit test can
plan, execute with the real `Executor`, and plan again, with no network. The tests at the end
check that its signatures match the real façade, so the fake cannot drift from it.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from infra.aws import AWS
from infra.aws_storage import PUBLIC_ACCESS_BLOCK, model_notification
from infra.config import STACK_TAG, parse_config
from infra.exceptions import ModelSyncError
from infra.resources import EFS_MODEL_TAG, RESOURCE_TAG, AlarmSpec, FunctionSpec, Stack, efs_model_marker
from infra.state import (
    AccessPointState,
    AlarmState,
    AliasState,
    BucketState,
    FileSystemIds,
    FileSystemState,
    FunctionState,
    LogGroupState,
    ModelSyncResult,
    MountTargetState,
    RemoteState,
    RepositoryState,
    RoleState,
    Rule,
    ScalingState,
    SecurityGroupState,
    SubnetState,
    UrlState,
    VersionState,
)

ACCOUNT = "123456789012"
S3_PREFIX_LIST = "pl-63a5400a"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/breedserve:0.1.0"


def make_stack(**overrides: Any) -> Stack:
    """A stack from a minimal config; `overrides` are TOML tables/keys, e.g. function={...}."""
    data: dict[str, Any] = {"name": "demo", "region": "us-east-1", "image": {"uri": IMAGE}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Stack(parse_config(data), ACCOUNT)


class FakeAWS:
    """Plain-dict AWS: enough behaviour for plans to be executed and observed again."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._ids = itertools.count(1)
        self.buckets: dict[str, BucketState] = {}
        self.repos: dict[str, RepositoryState] = {}
        self.vpcs: dict[str, dict[str, str]] = {}
        self.subnets: dict[str, tuple[str, SubnetState, dict[str, str]]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, tuple[str, dict[str, str]]] = {}
        self.file_systems: dict[str, tuple[str, FileSystemState]] = {}
        self.targets: dict[str, MountTargetState] = {}
        self.target_fs: dict[str, str] = {}
        self.points: dict[str, AccessPointState] = {}
        self.fs_policies: dict[str, dict[str, Any]] = {}
        self.roles: dict[str, RoleState] = {}
        self.logs: dict[str, LogGroupState] = {}
        self.functions: dict[str, FunctionState] = {}
        self.published: dict[str, list[FunctionState]] = {}
        self.aliases: dict[tuple[str, str], AliasState] = {}
        self.urls: dict[tuple[str, str], UrlState] = {}
        self.permissions: dict[tuple[str, str | None], set[str]] = {}
        self.reserved: dict[str, int] = {}
        self.provisioned: dict[tuple[str, str], int] = {}
        self.scalings: dict[tuple[str, str], ScalingState] = {}
        self.alarm_states: dict[str, AlarmState] = {}
        self.objects: set[tuple[str, str]] = set()  # (bucket, key) of published model files
        self.efs: set[tuple[str, str]] = set()  # (model, version) the sync function has copied to EFS
        self.sync_errors: dict[str, str] = {}  # version -> the error the sync function fails with

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):08x}"

    def _record(self, _method: str, **params: Any) -> None:
        self.calls.append((_method, params))

    def called(self, name: str) -> list[dict[str, Any]]:
        return [params for method, params in self.calls if method == name]

    # -- reads (RemoteState) --------------------------------------------------------------------
    def account_id(self) -> str:
        return ACCOUNT

    def availability_zones(self) -> list[str]:
        return ["us-east-1a", "us-east-1b", "us-east-1c"]

    def bucket(self, name: str) -> BucketState | None:
        return self.buckets.get(name)

    def object_exists(self, bucket: str, key: str) -> bool:
        return bucket in self.buckets and (bucket, key) in self.objects

    def repository(self, name: str) -> RepositoryState | None:
        return self.repos.get(name)

    def find_vpc(self, stack: str) -> str | None:
        return next((v for v, tags in self.vpcs.items() if tags.get(STACK_TAG) == stack), None)

    def find_subnets(self, vpc_id: str, stack: str) -> dict[str, SubnetState]:
        return {s.role: s for vpc, s, tags in self.subnets.values() if vpc == vpc_id and tags.get(STACK_TAG) == stack}

    def find_security_groups(self, vpc_id: str, stack: str) -> dict[str, SecurityGroupState]:
        ids = [g for g, item in self.groups.items() if item["vpc"] == vpc_id and item["tags"].get(STACK_TAG) == stack]
        return {state.role: state for state in self.security_groups(ids).values()}

    def security_groups(self, group_ids: list[str]) -> dict[str, SecurityGroupState]:
        return {g: SecurityGroupState(g, self.groups[g]["tags"].get(RESOURCE_TAG, ""), dict(self.groups[g]["rules"]))
                for g in group_ids}

    def main_route_table(self, vpc_id: str) -> str:
        return "rtb-main"

    def find_s3_endpoint(self, vpc_id: str, stack: str) -> str | None:
        return next((e for e, (vpc, tags) in self.endpoints.items() if vpc == vpc_id and tags.get(STACK_TAG) == stack),
                    None)

    def s3_prefix_list(self) -> str:
        return S3_PREFIX_LIST

    def file_system_by_token(self, token: str) -> FileSystemState | None:
        return next((fs for t, fs in self.file_systems.values() if t == token), None)

    def file_system(self, file_system_id: str) -> FileSystemState | None:
        found = self.file_systems.get(file_system_id)
        return found[1] if found else None

    def mount_targets(self, file_system_id: str) -> list[MountTargetState]:
        return [t for t in self.targets.values() if self.target_fs[t.id] == file_system_id]

    def access_points(self, file_system_id: str) -> list[AccessPointState]:
        return [p for p in self.points.values() if p.file_system_id == file_system_id]

    def file_system_policy(self, file_system_id: str) -> dict[str, Any] | None:
        return self.fs_policies.get(file_system_id)

    def role(self, name: str) -> RoleState | None:
        return self.roles.get(name)

    def log_group(self, name: str) -> LogGroupState | None:
        return self.logs.get(name)

    def function(self, name: str, qualifier: str | None = None) -> FunctionState | None:
        if qualifier in (None, "$LATEST"):
            return self.functions.get(name)
        return next((v for v in self.published.get(name, []) if v.version == qualifier), None)

    def versions(self, name: str) -> list[VersionState]:
        return [VersionState(v.version, v.description, dict(v.environment), v.image_uri)
                for v in self.published.get(name, [])]

    def alias(self, function: str, name: str) -> AliasState | None:
        return self.aliases.get((function, name))

    def function_url(self, function: str, qualifier: str) -> UrlState | None:
        return self.urls.get((function, qualifier))

    def permission_ids(self, function: str, qualifier: str | None = None) -> set[str]:
        return set(self.permissions.get((function, qualifier), set()))

    def reserved_concurrency(self, function: str) -> int | None:
        return self.reserved.get(function)

    def provisioned_concurrency(self, function: str, qualifier: str) -> int | None:
        return self.provisioned.get((function, qualifier))

    def scaling(self, function: str, qualifier: str) -> ScalingState | None:
        return self.scalings.get((function, qualifier))

    def alarms(self, names: list[str]) -> dict[str, AlarmState]:
        return {n: self.alarm_states[n] for n in names if n in self.alarm_states}

    # -- S3 and ECR -----------------------------------------------------------------------------
    def create_bucket(self, name: str, tags: Mapping[str, str]) -> None:
        self._record("create_bucket", name=name)
        self.buckets[name] = BucketState(name, None, None, None, None, dict(tags))

    def _bucket_change(self, name: str, **changes: Any) -> None:
        self.buckets[name] = dataclasses.replace(self.buckets[name], **changes)

    def block_public_access(self, name: str) -> None:
        self._record("block_public_access", name=name)
        self._bucket_change(name, public_access_block=dict(PUBLIC_ACCESS_BLOCK))

    def encrypt_bucket(self, name: str) -> None:
        self._record("encrypt_bucket", name=name)
        self._bucket_change(name, encryption="AES256")

    def enable_versioning(self, name: str) -> None:
        self._record("enable_versioning", name=name)
        self._bucket_change(name, versioning="Enabled")

    def put_bucket_policy(self, name: str, policy: Mapping[str, Any]) -> None:
        self._record("put_bucket_policy", name=name, policy=policy)
        self._bucket_change(name, policy=dict(policy))

    def tag_bucket(self, name: str, tags: Mapping[str, str]) -> None:
        self._record("tag_bucket", name=name, tags=tags)
        self._bucket_change(name, tags=dict(tags))

    def set_model_notification(self, bucket: str, notification_id: str, function_arn: str, prefix: str,
                               suffix: str) -> None:
        self._record("set_model_notification", bucket=bucket, function_arn=function_arn, prefix=prefix)
        others = [n for n in self.buckets[bucket].notifications if n.get("Id") != notification_id]
        self._bucket_change(bucket, notifications=(*others, model_notification(notification_id, function_arn,
                                                                               prefix, suffix)))

    def remove_model_notification(self, bucket: str, notification_id: str) -> None:
        self._record("remove_model_notification", bucket=bucket)
        self._bucket_change(bucket, notifications=tuple(
            n for n in self.buckets[bucket].notifications if n.get("Id") != notification_id))

    def empty_and_delete_bucket(self, name: str) -> None:
        self._record("empty_and_delete_bucket", name=name)
        del self.buckets[name]

    def create_repository(self, name: str, tags: Mapping[str, str]) -> str:
        self._record("create_repository", name=name)
        uri = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{name}"
        self.repos[name] = RepositoryState(name, uri, f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/{name}",
                                           "IMMUTABLE", True, None, dict(tags))
        return uri

    def put_lifecycle_policy(self, name: str, policy: Mapping[str, Any]) -> None:
        self._record("put_lifecycle_policy", name=name)
        self.repos[name] = dataclasses.replace(self.repos[name], lifecycle_policy=dict(policy))

    def make_tags_immutable(self, name: str) -> None:
        self._record("make_tags_immutable", name=name)
        self.repos[name] = dataclasses.replace(self.repos[name], tag_mutability="IMMUTABLE")

    def enable_scan_on_push(self, name: str) -> None:
        self._record("enable_scan_on_push", name=name)
        self.repos[name] = dataclasses.replace(self.repos[name], scan_on_push=True)

    def tag_repository(self, arn: str, tags: Mapping[str, str]) -> None:
        self._record("tag_repository", arn=arn)

    def delete_repository(self, name: str) -> None:
        self._record("delete_repository", name=name)
        del self.repos[name]

    # -- network and EFS ------------------------------------------------------------------------
    def create_vpc(self, cidr: str, tags: Mapping[str, str]) -> str:
        vpc = self._id("vpc")
        self._record("create_vpc", cidr=cidr)
        self.vpcs[vpc] = dict(tags)
        return vpc

    def create_subnet(self, vpc_id: str, cidr: str, availability_zone: str, tags: Mapping[str, str]) -> str:
        subnet = self._id("subnet")
        self._record("create_subnet", vpc_id=vpc_id, cidr=cidr, availability_zone=availability_zone)
        self.subnets[subnet] = (vpc_id, SubnetState(subnet, availability_zone, cidr, tags[RESOURCE_TAG]), dict(tags))
        return subnet

    def create_security_group(self, vpc_id: str, name: str, description: str, tags: Mapping[str, str]) -> str:
        group = self._id("sg")
        self._record("create_security_group", vpc_id=vpc_id, name=name)
        self.groups[group] = {"vpc": vpc_id, "tags": dict(tags), "rules": {}}
        return group

    def authorize_rules(self, group_id: str, rules: Sequence[Rule], description: str = "") -> None:
        self._record("authorize_rules", group_id=group_id, rules=list(rules))
        for rule in rules:
            assert isinstance(rule.peer, str), "a Ref reached the façade unresolved"
            self.groups[group_id]["rules"][rule] = self._id("sgr")

    def revoke_rules(self, group_id: str, egress_rule_ids: Sequence[str], ingress_rule_ids: Sequence[str]) -> None:
        self._record("revoke_rules", group_id=group_id, ids=[*egress_rule_ids, *ingress_rule_ids])
        doomed = {*egress_rule_ids, *ingress_rule_ids}
        rules = self.groups[group_id]["rules"]
        self.groups[group_id]["rules"] = {r: i for r, i in rules.items() if i not in doomed}

    def create_s3_endpoint(self, vpc_id: str, tags: Mapping[str, str]) -> str:
        endpoint = self._id("vpce")
        self._record("create_s3_endpoint", vpc_id=vpc_id)
        self.endpoints[endpoint] = (vpc_id, dict(tags))
        return endpoint

    def create_file_system(self, token: str, tags: Mapping[str, str]) -> FileSystemIds:
        fs = self._id("fs")
        self._record("create_file_system", token=token)
        arn = f"arn:aws:elasticfilesystem:us-east-1:{ACCOUNT}:file-system/{fs}"
        self.file_systems[fs] = (token, FileSystemState(fs, arn, "available", True, "elastic", 6144, dict(tags)))
        return FileSystemIds(fs, arn)

    def create_mount_target(self, file_system_id: str, subnet_id: str, security_group_ids: Sequence[str]) -> str:
        target = self._id("fsmt")
        self._record("create_mount_target", file_system_id=file_system_id, subnet_id=subnet_id,
                     security_group_ids=list(security_group_ids))
        assert file_system_id in self.file_systems and subnet_id in self.subnets
        self.targets[target] = MountTargetState(target, subnet_id, "available", tuple(sorted(security_group_ids)))
        self.target_fs[target] = file_system_id
        return target

    def set_mount_target_security_groups(self, mount_target_id: str, security_group_ids: Sequence[str]) -> None:
        self._record("set_mount_target_security_groups", mount_target_id=mount_target_id)
        self.targets[mount_target_id] = dataclasses.replace(self.targets[mount_target_id],
                                                            security_groups=tuple(sorted(security_group_ids)))

    def create_access_point(self, file_system_id: str, path: str, uid: int, gid: int, client_token: str,
                            tags: Mapping[str, str]) -> FileSystemIds:
        point = self._id("fsap")
        self._record("create_access_point", file_system_id=file_system_id, path=path, uid=uid, gid=gid)
        arn = f"arn:aws:elasticfilesystem:us-east-1:{ACCOUNT}:access-point/{point}"
        self.points[point] = AccessPointState(point, arn, file_system_id, path, uid, gid, dict(tags))
        return FileSystemIds(point, arn)

    def put_file_system_policy(self, file_system_id: str, policy: Mapping[str, Any]) -> None:
        self._record("put_file_system_policy", file_system_id=file_system_id, policy=policy)
        self.fs_policies[file_system_id] = dict(policy)

    def delete_access_point(self, access_point_id: str) -> None:
        self._record("delete_access_point", access_point_id=access_point_id)
        del self.points[access_point_id]

    # -- IAM, logs ------------------------------------------------------------------------------
    def create_role(self, name: str, path: str, trust_policy: Mapping[str, Any], description: str,
                    tags: Mapping[str, str]) -> str:
        self._record("create_role", name=name, path=path)
        arn = f"arn:aws:iam::{ACCOUNT}:role{path}{name}"
        self.roles[name] = RoleState(name, arn, dict(trust_policy), {}, dict(tags))
        return arn

    def update_trust_policy(self, name: str, trust_policy: Mapping[str, Any]) -> None:
        self._record("update_trust_policy", name=name)
        self.roles[name] = dataclasses.replace(self.roles[name], trust_policy=dict(trust_policy))

    def put_role_policy(self, role: str, policy_name: str, policy: Mapping[str, Any]) -> None:
        self._record("put_role_policy", role=role, policy_name=policy_name, policy=policy)
        policies = {**self.roles[role].inline_policies, policy_name: dict(policy)}
        self.roles[role] = dataclasses.replace(self.roles[role], inline_policies=policies)

    def delete_role_policy(self, role: str, policy_name: str) -> None:
        self._record("delete_role_policy", role=role, policy_name=policy_name)
        policies = {k: v for k, v in self.roles[role].inline_policies.items() if k != policy_name}
        self.roles[role] = dataclasses.replace(self.roles[role], inline_policies=policies)

    def tag_role(self, name: str, tags: Mapping[str, str]) -> None:
        self._record("tag_role", name=name)

    def create_log_group(self, name: str, retention_days: int, tags: Mapping[str, str]) -> None:
        self._record("create_log_group", name=name, retention_days=retention_days)
        self.logs[name] = LogGroupState(name, retention_days, dict(tags))

    def set_log_retention(self, name: str, retention_days: int) -> None:
        self._record("set_log_retention", name=name, retention_days=retention_days)
        self.logs[name] = dataclasses.replace(self.logs[name], retention_days=retention_days)

    # -- Lambda ---------------------------------------------------------------------------------
    def _state(self, spec: FunctionSpec, version: str = "$LATEST") -> FunctionState:
        assert spec.role in {r.arn for r in self.roles.values()}, "function created before its role"
        return FunctionState(
            name=spec.name, arn=f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{spec.name}", version=version,
            state="Active", last_update_status="Successful", description=spec.description(), role=spec.role,
            image_uri=spec.image_uri, command=tuple(spec.command), architecture=spec.architecture,
            memory_mb=spec.memory_mb, timeout_s=spec.timeout_s, ephemeral_storage_mb=spec.ephemeral_storage_mb,
            environment=dict(spec.environment), subnet_ids=tuple(sorted(map(str, spec.subnet_ids))),
            security_group_ids=tuple(sorted(map(str, spec.security_group_ids))),
            file_system_configs=((str(spec.access_point_arn), spec.mount_path),), tags=dict(spec.tags))

    def create_function(self, spec: FunctionSpec) -> str:
        self._record("create_function", spec=spec)
        self.functions[spec.name] = self._state(spec)
        return self.functions[spec.name].arn

    def update_function_code(self, spec: FunctionSpec) -> None:
        self._record("update_function_code", spec=spec)
        self.functions[spec.name] = dataclasses.replace(self.functions[spec.name], image_uri=spec.image_uri,
                                                        architecture=spec.architecture)

    def update_function_configuration(self, spec: FunctionSpec) -> None:
        self._record("update_function_configuration", spec=spec)
        image = self.functions[spec.name].image_uri
        self.functions[spec.name] = dataclasses.replace(self._state(spec), image_uri=image)

    def tag_function(self, arn: str, tags: Mapping[str, str]) -> None:
        self._record("tag_function", arn=arn)

    def publish_version(self, spec: FunctionSpec) -> str:
        self._record("publish_version", spec=spec)
        versions = self.published.setdefault(spec.name, [])
        version = str(len(versions) + 1)
        versions.append(dataclasses.replace(self.functions[spec.name], version=version, description=spec.description()))
        return version

    def create_alias(self, function: str, name: str, version: str, description: str = "") -> None:
        self._record("create_alias", function=function, name=name, version=version)
        self.aliases[(function, name)] = AliasState(name, version, {}, description)

    def route_alias(self, function: str, name: str, version: str, weights: Mapping[str, float],
                    description: str) -> None:
        self._record("route_alias", function=function, version=version, weights=dict(weights), description=description)
        assert all(isinstance(k, str) for k in weights), "a Ref reached the façade unresolved"
        self.aliases[(function, name)] = AliasState(name, version, dict(weights), description)

    def create_function_url(self, function: str, qualifier: str, auth: str, cors: Mapping[str, Any],
                            invoke_mode: str) -> str:
        self._record("create_function_url", function=function, auth=auth, cors=dict(cors))
        url = f"https://{function}.lambda-url.us-east-1.on.aws/"
        self.urls[(function, qualifier)] = UrlState(url, auth, dict(cors), invoke_mode)
        return url

    def update_function_url(self, function: str, qualifier: str, auth: str, cors: Mapping[str, Any],
                            invoke_mode: str) -> None:
        self._record("update_function_url", function=function, auth=auth, cors=dict(cors))
        self.urls[(function, qualifier)] = UrlState(self.urls[(function, qualifier)].url, auth, dict(cors), invoke_mode)

    def add_permission(self, function: str, statement_id: str, action: str, principal: str,
                       qualifier: str | None = None, **conditions: Any) -> None:
        self._record("add_permission", function=function, statement_id=statement_id, action=action,
                     principal=principal, qualifier=qualifier, **conditions)
        self.permissions.setdefault((function, qualifier), set()).add(statement_id)

    def remove_permission(self, function: str, statement_id: str, qualifier: str | None = None) -> None:
        self._record("remove_permission", function=function, statement_id=statement_id)
        self.permissions[(function, qualifier)].discard(statement_id)

    def set_reserved_concurrency(self, function: str, count: int) -> None:
        self._record("set_reserved_concurrency", function=function, count=count)
        self.reserved[function] = count

    def clear_reserved_concurrency(self, function: str) -> None:
        self._record("clear_reserved_concurrency", function=function)
        self.reserved.pop(function, None)

    def set_provisioned_concurrency(self, function: str, qualifier: str, count: int) -> None:
        self._record("set_provisioned_concurrency", function=function, count=count)
        self.provisioned[(function, qualifier)] = count

    def delete_provisioned_concurrency(self, function: str, qualifier: str) -> None:
        self._record("delete_provisioned_concurrency", function=function)
        self.provisioned.pop((function, qualifier), None)

    def register_scaling(self, function: str, qualifier: str, minimum: int, maximum: int,
                         tags: Mapping[str, str]) -> None:
        self._record("register_scaling", function=function, minimum=minimum, maximum=maximum)
        old = self.scalings.get((function, qualifier))
        self.scalings[(function, qualifier)] = ScalingState(minimum, maximum, old.target_utilization if old else None)

    def put_scaling_policy(self, function: str, qualifier: str, policy_name: str, target: float) -> None:
        self._record("put_scaling_policy", function=function, target=target)
        self.scalings[(function, qualifier)] = dataclasses.replace(self.scalings[(function, qualifier)],
                                                                   target_utilization=target)

    def deregister_scaling(self, function: str, qualifier: str) -> None:
        self._record("deregister_scaling", function=function)
        del self.scalings[(function, qualifier)]

    def sync_model(self, spec: FunctionSpec, arn: str, model: str, version: str) -> ModelSyncResult:
        """Like the real façade: fails with the function's error, or marks the version on EFS and tags."""
        self._record("sync_model", function=spec.name, arn=arn, model=model, version=version)
        assert self.functions[spec.name].arn == arn, "model-sync invoked before it exists"
        if version in self.sync_errors:
            raise ModelSyncError(f"model {model} version {version} could not be synced to EFS: {spec.name} failed "
                                 f"with {self.sync_errors[version]}")
        downloaded = (model, version) not in self.efs
        self.efs.add((model, version))
        state = self.functions[spec.name]
        self.functions[spec.name] = dataclasses.replace(
            state, tags={**state.tags, EFS_MODEL_TAG: efs_model_marker(spec, model, version)})
        return ModelSyncResult(model, version, f"/mnt/models/{model}/versions/{version}", downloaded,
                               1000 if downloaded else 0)

    def put_alarm(self, spec: AlarmSpec) -> None:
        self._record("put_alarm", name=spec.name, spec=spec)
        assert "Ref(" not in repr(spec.definition), "a Ref reached the façade unresolved"
        self.alarm_states[spec.name] = AlarmState(spec.name, f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:{spec.name}",
                                                  "OK", dict(spec.definition), dict(spec.tags))


# -- the fake must keep the real façade's shape ---------------------------------------------------

def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_fake_methods_have_the_real_facade_signatures() -> None:
    # GIVEN the real façade's public methods and the fake's
    real, fake = _public_methods(AWS), _public_methods(FakeAWS)
    # WHEN compared by name (the fake's own helpers excepted)
    shared = set(fake) - {"called"}
    # THEN every fake method exists on the real façade with the same parameters
    missing = sorted(shared - set(real))
    assert not missing, f"the fake has methods the façade lacks: {missing}"
    for name in shared:
        assert list(fake[name].parameters) == list(real[name].parameters), name


def test_fake_and_real_facade_implement_every_remote_state_read() -> None:
    # GIVEN the RemoteState protocol (what planners may call)
    reads = {n for n in dir(RemoteState) if not n.startswith("_")}
    # WHEN looking them up on both façades
    # THEN both provide every read
    assert reads <= set(dir(AWS)) and reads <= set(dir(FakeAWS))
