"""Plan a deployment: compare the desired stack with what AWS reports, and list the calls to make.

The pipeline is `config -> Stack (infra.resources) -> DeployPlanner.plan() -> Plan -> executor`.
Planning asks only the read-only `RemoteState` methods of the façade, so `python -m infra plan`
changes nothing; `deploy` runs the very same plan. Resources are visited in dependency order
(storage, network, file system, roles, log groups, functions, alias, URL, concurrency, alarms);
anything a later resource needs from an earlier one that does not exist yet is a `Ref` to the
step that will create it.

This module covers storage, network and EFS; `infra.planner_functions` covers the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.aws_storage import PUBLIC_ACCESS_BLOCK
from infra.config import STACK_TAG
from infra.exceptions import DeployError
from infra.plan import Plan, PlanBuilder, Ref, has_refs
from infra.planner_functions import FunctionsPlanning
from infra.policies import bucket_policy, file_system_policy
from infra.resources import RESOURCE_TAG, Stack, Value, lifecycle_policy
from infra.state import FileSystemState, RemoteState, Rule, SecurityGroupState, SubnetState

NFS = 2049
HTTPS = 443
SUBNET_ROLES = ("subnet-a", "subnet-b")
GROUP_ROLES = ("sg-inference", "sg-model-sync", "sg-efs")


@dataclass(frozen=True)
class NetworkIds:
    """Subnets and security groups the functions and mount targets use (ids or `Ref`s)."""

    subnet_ids: tuple[Value, ...]
    inference_groups: tuple[Value, ...]
    sync_groups: tuple[Value, ...]
    efs_groups: tuple[Value, ...]


@dataclass(frozen=True)
class FileSystemIds:
    file_system_id: Value
    file_system_arn: Value
    access_point_arn: Value


def plan_deploy(stack: Stack, remote: RemoteState, *, allow_public: bool = False) -> Plan:
    """The full deployment plan; empty (all `Unchanged`) when AWS already matches the config."""
    return DeployPlanner(stack, remote, allow_public=allow_public).plan()


def plan_repository(stack: Stack, remote: RemoteState) -> Plan:
    """Only the ECR repository: what `push` needs before the first deploy."""
    planner = DeployPlanner(stack, remote)
    planner.plan_repository()
    return planner.b.build()


class DeployPlanner(FunctionsPlanning):
    def __init__(self, stack: Stack, remote: RemoteState, *, allow_public: bool = False) -> None:
        self.stack = stack
        self.remote = remote
        self.allow_public = allow_public
        self.b = PlanBuilder()
        self.bucket_exists = False  # set by plan_bucket: a bucket being created holds no model yet
        self.cleanup = PlanBuilder()  # steps that must run last (replaced resources)

    def plan(self) -> Plan:
        bucket = self.plan_bucket()
        self.plan_repository()
        network = self.plan_network()
        file_system = self.plan_file_system(network)
        self.plan_roles(file_system)
        self.plan_file_system_policy(file_system)
        self.plan_functions(network, file_system, bucket_notifications=bucket)
        return self.b.build() + self.cleanup.build()

    # -- S3 -------------------------------------------------------------------------------------
    def plan_bucket(self) -> tuple[dict[str, Any], ...]:
        """Returns the bucket's current Lambda notifications (none for a new bucket)."""
        name, label = self.stack.bucket, "model bucket"
        state = self.remote.bucket(name)
        policy = bucket_policy(self.stack)
        if state is None:
            self.b.call(label, f"create S3 bucket {name}", "create_bucket", name=name, tags=self.stack.tags("model-bucket"))
            self.b.call(label, "block all public access", "block_public_access", name=name)
            self.b.call(label, "encrypt by default (SSE-S3)", "encrypt_bucket", name=name)
            self.b.call(label, "enable versioning", "enable_versioning", name=name)
            self.b.call(label, "deny requests without TLS", "put_bucket_policy", name=name, policy=policy)
            return ()
        self.bucket_exists = True
        before = len(self.b.steps)
        if dict(state.public_access_block or {}) != PUBLIC_ACCESS_BLOCK:
            self.b.call(label, f"block all public access on {name}", "block_public_access", name=name)
        if state.encryption is None:
            self.b.call(label, f"encrypt {name} by default", "encrypt_bucket", name=name)
        if state.versioning != "Enabled":
            self.b.call(label, f"enable versioning on {name}", "enable_versioning", name=name)
        if state.policy != policy:
            self.b.call(label, f"set the TLS-only policy on {name}", "put_bucket_policy", name=name, policy=policy)
        if not self._has_tags(state.tags, "model-bucket"):
            self.b.call(label, f"tag {name}", "tag_bucket", name=name,
                        tags={**state.tags, **self.stack.tags("model-bucket")})
        if len(self.b.steps) == before:
            self.b.unchanged(label, f"{name}: private, encrypted, versioned, TLS only")
        return tuple(dict(n) for n in state.notifications)

    # -- ECR ------------------------------------------------------------------------------------
    def plan_repository(self) -> None:
        name, label = self.stack.repository, "image repository"
        state = self.remote.repository(name)
        lifecycle = lifecycle_policy(self.stack.config.image.keep_images)
        if state is None:
            self.b.call(label, f"create ECR repository {name} (immutable tags, scan on push)", "create_repository",
                        name=name, tags=self.stack.tags("image-repository"))
            self.b.call(label, f"keep the newest {self.stack.config.image.keep_images} images", "put_lifecycle_policy",
                        name=name, policy=lifecycle)
            return
        before = len(self.b.steps)
        if state.tag_mutability != "IMMUTABLE":
            self.b.call(label, f"make tags of {name} immutable", "make_tags_immutable", name=name)
        if not state.scan_on_push:
            self.b.call(label, f"scan images pushed to {name}", "enable_scan_on_push", name=name)
        if state.lifecycle_policy != lifecycle:
            self.b.call(label, f"set the lifecycle policy of {name}", "put_lifecycle_policy", name=name, policy=lifecycle)
        if not self._has_tags(state.tags, "image-repository"):
            self.b.call(label, f"tag {name}", "tag_repository", arn=state.arn, tags=self.stack.tags("image-repository"))
        if len(self.b.steps) == before:
            self.b.unchanged(label, f"{state.uri}: immutable tags, scan on push, lifecycle policy")

    # -- VPC ------------------------------------------------------------------------------------
    def plan_network(self) -> NetworkIds:
        config = self.stack.config.network
        if not config.create:
            self.b.unchanged("network", f"reusing subnets {', '.join(config.subnet_ids)} and security groups "
                                        f"{', '.join(config.security_group_ids)} (not managed by deploy)")
            return NetworkIds(config.subnet_ids, config.security_group_ids, config.security_group_ids,
                              config.efs_security_group_ids)
        stack, label = self.stack, "network"
        found = self.remote.find_vpc(stack.name)
        subnets: dict[str, SubnetState] = {}
        groups: dict[str, SecurityGroupState] = {}
        endpoint: str | None = None
        vpc_id: Value
        if found is None:
            vpc_id = self.b.produce(label, f"create VPC {config.cidr} (private subnets only, no NAT)", "create_vpc",
                                    output="vpc", cidr=config.cidr, tags=stack.tags("vpc"))
        else:
            vpc_id = found
            subnets = self.remote.find_subnets(found, stack.name)
            groups = self.remote.find_security_groups(found, stack.name)
            endpoint = self.remote.find_s3_endpoint(found, stack.name)
            self.b.unchanged(label, f"VPC {found}")
        subnet_ids = self._plan_subnets(vpc_id, subnets)
        group_ids: dict[str, Value] = {}
        for role in GROUP_ROLES:
            if role in groups:
                group_ids[role] = groups[role].id
            else:
                group_ids[role] = self.b.produce(
                    label, f"create security group {stack.name}-{role.removeprefix('sg-')}", "create_security_group",
                    output=role, vpc_id=vpc_id, name=f"{stack.name}-{role.removeprefix('sg-')}",
                    description=f"breedserve {stack.name}: {role.removeprefix('sg-')}", tags=stack.tags(role))
        self._plan_rules(group_ids, groups)
        if endpoint is None:
            self.b.call(label, "create S3 gateway endpoint (free; model-sync reaches S3 without NAT)",
                        "create_s3_endpoint", vpc_id=vpc_id, tags=stack.tags("s3-endpoint"))
        else:
            self.b.unchanged(label, f"S3 gateway endpoint {endpoint}")
        return NetworkIds(subnet_ids, (group_ids["sg-inference"],), (group_ids["sg-model-sync"],), (group_ids["sg-efs"],))

    def _plan_subnets(self, vpc_id: Value, subnets: dict[str, SubnetState]) -> tuple[Value, ...]:
        ids: list[Value] = []
        missing = [role for role in SUBNET_ROLES if role not in subnets]
        zones = list(self.stack.config.network.availability_zones)
        if missing and not zones:
            zones = self.remote.availability_zones()[:2]
            if len(zones) < 2:
                raise DeployError(f"region {self.stack.region} reports fewer than two availability zones")
        cidrs = self.stack.subnet_cidrs()
        for index, role in enumerate(SUBNET_ROLES):
            if role in subnets:
                found = subnets[role]
                self.b.unchanged("network", f"subnet {found.id} ({found.availability_zone}, {found.cidr})")
                ids.append(found.id)
            else:
                ids.append(self.b.produce("network", f"create private subnet {cidrs[index]} in {zones[index]}",
                                       "create_subnet", output=role, vpc_id=vpc_id, cidr=cidrs[index],
                                       availability_zone=zones[index], tags=self.stack.tags(role)))
        return tuple(ids)

    def _desired_rules(self, group_ids: dict[str, Value]) -> dict[str, set[Rule]]:
        """Functions reach EFS on 2049 only; model-sync also reaches S3 (443) via the endpoint."""
        efs, inference, sync = group_ids["sg-efs"], group_ids["sg-inference"], group_ids["sg-model-sync"]
        return {
            "sg-inference": {Rule(True, "tcp", NFS, NFS, efs)},
            "sg-model-sync": {Rule(True, "tcp", NFS, NFS, efs),
                              Rule(True, "tcp", HTTPS, HTTPS, self.remote.s3_prefix_list())},
            "sg-efs": {Rule(False, "tcp", NFS, NFS, inference), Rule(False, "tcp", NFS, NFS, sync)},
        }

    def _plan_rules(self, group_ids: dict[str, Value], groups: dict[str, SecurityGroupState]) -> None:
        for role, wanted in self._desired_rules(group_ids).items():
            group_id = group_ids[role]
            existing = groups[role].rules if role in groups else {}
            missing = sorted((r for r in wanted if r not in existing), key=lambda r: (r.egress, str(r.peer), r.from_port))
            extra = {rule: rule_id for rule, rule_id in existing.items() if rule not in wanted}
            if missing:
                self.b.call("network", f"{group_id if isinstance(group_id, str) else role}: allow "
                            + "; ".join(r.describe() for r in missing), "authorize_rules", group_id=group_id,
                            rules=tuple(missing), description=f"breedserve {self.stack.name}")
            if extra:
                self.b.call("network", f"{group_id}: remove " + "; ".join(r.describe() for r in extra), "revoke_rules",
                            group_id=group_id, egress_rule_ids=[i for r, i in extra.items() if r.egress],
                            ingress_rule_ids=[i for r, i in extra.items() if not r.egress])
            if not missing and not extra:
                self.b.unchanged("network", f"security group {group_id}: " + "; ".join(
                    sorted(r.describe() for r in wanted)))

    # -- EFS ------------------------------------------------------------------------------------
    def plan_file_system(self, network: NetworkIds) -> FileSystemIds:
        config, stack, label = self.stack.config.efs, self.stack, "file system"
        if not config.create:
            return self._reused_file_system()
        state = self.remote.file_system_by_token(stack.file_system_token)
        if state is None:
            created = self.b.produce(label, "create EFS file system (encrypted, elastic throughput)",
                                     "create_file_system", output="file-system", token=stack.file_system_token,
                                     tags=stack.tags("file-system"))
            fs_id: Value = Ref(created.name, "id")
            fs_arn: Value = Ref(created.name, "arn")
        else:
            fs_id, fs_arn = state.id, state.arn
            self._check_file_system(state)
        self._plan_mount_targets(fs_id, state, network)
        access_point_arn = self._plan_access_point(fs_id, state)
        return FileSystemIds(fs_id, fs_arn, access_point_arn)

    def plan_file_system_policy(self, file_system: FileSystemIds) -> None:
        """After the roles: IAM refuses a resource policy naming principals that do not exist yet."""
        if not self.stack.config.efs.create:
            return
        fs_id = file_system.file_system_id
        desired = file_system_policy(self.stack, file_system.file_system_arn, file_system.access_point_arn)
        if has_refs(desired) or not isinstance(fs_id, str) or self.remote.file_system_policy(fs_id) != desired:
            self.b.call("file system", "set the file system policy (mount: both roles; write: model-sync only; "
                        "TLS only)", "put_file_system_policy", file_system_id=fs_id, policy=desired)
        else:
            self.b.unchanged("file system", f"{fs_id} file system policy: inference read-only, model-sync read-write")

    def _check_file_system(self, state: FileSystemState) -> None:
        if not state.encrypted:
            self.b.note(f"file system {state.id} is not encrypted at rest; EFS cannot change that after creation")
        if state.throughput_mode != "elastic":
            self.b.note(f"file system {state.id} uses {state.throughput_mode} throughput (elastic is configured)")
        self.b.unchanged("file system", f"{state.id} ({state.state}, {state.size_bytes / 1e6:.1f} MB)")

    def _plan_mount_targets(self, fs_id: Value, state: FileSystemState | None, network: NetworkIds) -> None:
        existing = {t.subnet_id: t for t in self.remote.mount_targets(state.id)} if state else {}
        groups = tuple(network.efs_groups)
        if not groups:
            raise DeployError("network.efs_security_group_ids is required to create EFS mount targets in reused subnets")
        for subnet in network.subnet_ids:
            target = existing.get(subnet) if isinstance(subnet, str) else None
            if target is None:
                self.b.call("file system", f"create mount target in {subnet}", "create_mount_target",
                            file_system_id=fs_id, subnet_id=subnet, security_group_ids=groups)
            elif has_refs(groups) or sorted(map(str, groups)) != sorted(target.security_groups):
                self.b.call("file system", f"mount target {target.id}: security groups -> {', '.join(map(str, groups))}",
                            "set_mount_target_security_groups", mount_target_id=target.id, security_group_ids=groups)
            else:
                self.b.unchanged("file system", f"mount target {target.id} in {subnet}")

    def _plan_access_point(self, fs_id: Value, state: FileSystemState | None) -> Value:
        config, stack = self.stack.config.efs, self.stack
        ours = [p for p in (self.remote.access_points(state.id) if state else [])
                if p.tags.get(STACK_TAG) == stack.name and p.tags.get(RESOURCE_TAG) == "access-point"]
        matching = [p for p in ours if (p.path, p.uid, p.gid) == (config.root_directory, config.uid, config.gid)]
        for stale in (p for p in ours if p not in matching[:1]):
            self.cleanup.call("file system", f"delete access point {stale.id} ({stale.path}, uid {stale.uid})",
                              "delete_access_point", access_point_id=stale.id)
        if matching:
            self.b.unchanged("file system", f"access point {matching[0].id} ({config.root_directory}, "
                                            f"uid/gid {config.uid}/{config.gid})")
            return matching[0].arn
        created = self.b.produce("file system", f"create access point {config.root_directory} "
                                 f"(uid/gid {config.uid}/{config.gid})", "create_access_point",
                                 output="access-point", file_system_id=fs_id,
                              path=config.root_directory, uid=config.uid, gid=config.gid,
                                 client_token=f"{stack.name}-{config.root_directory}-{config.uid}-{config.gid}"[:64],
                                 tags=stack.tags("access-point"))
        return Ref(created.name, "arn")

    def _reused_file_system(self) -> FileSystemIds:
        config = self.stack.config.efs
        state = self.remote.file_system(config.file_system_id)
        if state is None:
            raise DeployError(f"efs.file_system_id {config.file_system_id} does not exist in {self.stack.region}")
        points = {p.id: p for p in self.remote.access_points(state.id)}
        if config.access_point_id not in points:
            raise DeployError(f"efs.access_point_id {config.access_point_id} is not an access point of {state.id}")
        self.b.unchanged("file system", f"reusing {state.id} through {config.access_point_id} (not managed by deploy)")
        self.b.note(f"the reused file system {state.id} keeps its own file system policy: for a read-only inference "
                    "mount it must not grant elasticfilesystem:ClientWrite to the inference role")
        return FileSystemIds(state.id, state.arn, points[config.access_point_id].arn)

    def _has_tags(self, tags: Any, resource: str) -> bool:
        wanted = self.stack.tags(resource)
        return all(tags.get(k) == v for k, v in wanted.items())
