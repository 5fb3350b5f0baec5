"""Façade methods for the network (VPC, subnets, security groups, S3 endpoint) and EFS.

Everything is found by the `breedserve:stack` tag plus a `breedserve:resource` role tag, so a
second run finds what the first made even though EC2 ids are random. EFS has no botocore
waiters, hence the explicit `wait_until` polls after each change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from infra.aws_base import AWSBase, dependency_violation, error_code
from infra.config import STACK_TAG
from infra.resources import RESOURCE_TAG
from infra.state import (
    AccessPointState,
    FileSystemIds,
    FileSystemState,
    MountTargetState,
    Rule,
    SecurityGroupState,
    SubnetState,
)

EFS_TIMEOUT = 600.0
# Lambda releases a deleted function's network interfaces lazily (AWS documents up to ~20 min,
# longer is seen); subnets and groups cannot be deleted before that.
ENI_RELEASE_TIMEOUT = 2700.0


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _tags_of(item: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def _stack_filters(stack: str, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{STACK_TAG}", "Values": [stack]}, *extra]


def rule_from_api(item: Mapping[str, Any]) -> Rule:
    """A `describe_security_group_rules` entry -> our normalised `Rule`."""
    peer = (item.get("ReferencedGroupInfo", {}).get("GroupId") or item.get("PrefixListId")
            or item.get("CidrIpv4") or item.get("CidrIpv6") or "?")
    return Rule(egress=bool(item["IsEgress"]), protocol=str(item["IpProtocol"]), from_port=int(item.get("FromPort", -1)),
                to_port=int(item.get("ToPort", -1)), peer=str(peer))


def permission_of(rule: Rule, description: str = "") -> dict[str, Any]:
    """A `Rule` -> the `IpPermissions` entry authorize_* takes."""
    permission: dict[str, Any] = {"IpProtocol": rule.protocol}
    if rule.protocol != "-1":
        permission.update(FromPort=rule.from_port, ToPort=rule.to_port)
    entry = {"Description": description} if description else {}
    peer = str(rule.peer)  # resolved by the executor before the façade sees it
    if peer.startswith("sg-"):
        permission["UserIdGroupPairs"] = [{"GroupId": peer, **entry}]
    elif peer.startswith("pl-"):
        permission["PrefixListIds"] = [{"PrefixListId": peer, **entry}]
    else:
        permission["IpRanges"] = [{"CidrIp": peer, **entry}]
    return permission


class NetworkMixin(AWSBase):
    # -- EC2: reads -----------------------------------------------------------------------------
    def availability_zones(self) -> list[str]:
        zones = self.client("ec2").describe_availability_zones(
            Filters=[{"Name": "state", "Values": ["available"]}, {"Name": "zone-type", "Values": ["availability-zone"]}])
        return sorted(z["ZoneName"] for z in zones["AvailabilityZones"])

    def find_vpc(self, stack: str) -> str | None:
        vpcs = self.client("ec2").describe_vpcs(Filters=_stack_filters(stack))["Vpcs"]
        return str(vpcs[0]["VpcId"]) if vpcs else None

    def find_subnets(self, vpc_id: str, stack: str) -> dict[str, SubnetState]:
        subnets = self.client("ec2").describe_subnets(
            Filters=_stack_filters(stack, {"Name": "vpc-id", "Values": [vpc_id]}))["Subnets"]
        found = {}
        for subnet in subnets:
            role = _tags_of(subnet).get(RESOURCE_TAG, "")
            found[role] = SubnetState(subnet["SubnetId"], subnet["AvailabilityZone"], subnet["CidrBlock"], role)
        return found

    def find_security_groups(self, vpc_id: str, stack: str) -> dict[str, SecurityGroupState]:
        groups = self.client("ec2").describe_security_groups(
            Filters=_stack_filters(stack, {"Name": "vpc-id", "Values": [vpc_id]}))["SecurityGroups"]
        by_id = self.security_groups([g["GroupId"] for g in groups])
        return {state.role: state for state in by_id.values()}

    def security_groups(self, group_ids: list[str]) -> dict[str, SecurityGroupState]:
        """Groups by id with their rules (role = their `breedserve:resource` tag, if any)."""
        if not group_ids:
            return {}
        ec2 = self.client("ec2")
        groups = ec2.describe_security_groups(GroupIds=group_ids)["SecurityGroups"]
        rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": group_ids}])[
            "SecurityGroupRules"]
        result = {}
        for group in groups:
            mine = {rule_from_api(r): r["SecurityGroupRuleId"] for r in rules if r["GroupId"] == group["GroupId"]}
            result[group["GroupId"]] = SecurityGroupState(group["GroupId"], _tags_of(group).get(RESOURCE_TAG, ""), mine)
        return result

    def main_route_table(self, vpc_id: str) -> str:
        tables = self.client("ec2").describe_route_tables(Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
        return str(tables[0]["RouteTableId"])

    def find_s3_endpoint(self, vpc_id: str, stack: str) -> str | None:
        endpoints = self.client("ec2").describe_vpc_endpoints(Filters=_stack_filters(
            stack, {"Name": "vpc-id", "Values": [vpc_id]}))["VpcEndpoints"]
        live = [e for e in endpoints if e.get("State", "available").lower() not in ("deleted", "deleting")]
        return str(live[0]["VpcEndpointId"]) if live else None

    def s3_prefix_list(self) -> str:
        """The managed prefix list of S3 in this region: the sync function's only egress besides EFS."""
        lists = self.client("ec2").describe_prefix_lists(
            Filters=[{"Name": "prefix-list-name", "Values": [f"com.amazonaws.{self.region}.s3"]}])["PrefixLists"]
        return str(lists[0]["PrefixListId"])

    # -- EC2: changes ---------------------------------------------------------------------------
    def create_vpc(self, cidr: str, tags: Mapping[str, str]) -> str:
        ec2 = self.client("ec2")
        vpc_id = ec2.create_vpc(CidrBlock=cidr, TagSpecifications=[
            {"ResourceType": "vpc", "Tags": _tag_list(tags)}])["Vpc"]["VpcId"]
        ec2.get_waiter("vpc_available").wait(VpcIds=[vpc_id], WaiterConfig={"Delay": 2, "MaxAttempts": 60})
        return str(vpc_id)

    def create_subnet(self, vpc_id: str, cidr: str, availability_zone: str, tags: Mapping[str, str]) -> str:
        ec2 = self.client("ec2")
        subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=availability_zone,
                                      TagSpecifications=[{"ResourceType": "subnet", "Tags": _tag_list(tags)}]
                                      )["Subnet"]["SubnetId"]
        ec2.get_waiter("subnet_available").wait(SubnetIds=[subnet_id], WaiterConfig={"Delay": 2, "MaxAttempts": 60})
        return str(subnet_id)

    def create_security_group(self, vpc_id: str, name: str, description: str, tags: Mapping[str, str]) -> str:
        """A group that starts closed: EC2's default allow-all egress rule is removed at once."""
        ec2 = self.client("ec2")
        group_id = ec2.create_security_group(VpcId=vpc_id, GroupName=name, Description=description,
                                             TagSpecifications=[{"ResourceType": "security-group",
                                                                 "Tags": _tag_list(tags)}])["GroupId"]
        ec2.get_waiter("security_group_exists").wait(GroupIds=[group_id], WaiterConfig={"Delay": 2, "MaxAttempts": 30})
        default_egress = [rule_id for rule, rule_id in self.security_groups([group_id])[group_id].rules.items()
                          if rule.egress]
        if default_egress:
            ec2.revoke_security_group_egress(GroupId=group_id, SecurityGroupRuleIds=default_egress)
        return str(group_id)

    def authorize_rules(self, group_id: str, rules: Sequence[Rule], description: str = "") -> None:
        ec2 = self.client("ec2")
        egress = [permission_of(r, description) for r in rules if r.egress]
        ingress = [permission_of(r, description) for r in rules if not r.egress]
        if egress:
            ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=egress)
        if ingress:
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ingress)

    def revoke_rules(self, group_id: str, egress_rule_ids: Sequence[str], ingress_rule_ids: Sequence[str]) -> None:
        ec2 = self.client("ec2")
        if egress_rule_ids:
            ec2.revoke_security_group_egress(GroupId=group_id, SecurityGroupRuleIds=list(egress_rule_ids))
        if ingress_rule_ids:
            ec2.revoke_security_group_ingress(GroupId=group_id, SecurityGroupRuleIds=list(ingress_rule_ids))

    def create_s3_endpoint(self, vpc_id: str, tags: Mapping[str, str]) -> str:
        """A gateway endpoint on the main route table (which the private subnets use): S3 with no
        NAT gateway, and no hourly cost."""
        endpoint = self.client("ec2").create_vpc_endpoint(
            VpcId=vpc_id, ServiceName=f"com.amazonaws.{self.region}.s3", VpcEndpointType="Gateway",
            RouteTableIds=[self.main_route_table(vpc_id)], TagSpecifications=[{"ResourceType": "vpc-endpoint", "Tags": _tag_list(tags)}])
        return str(endpoint["VpcEndpoint"]["VpcEndpointId"])

    def delete_s3_endpoint(self, endpoint_id: str) -> None:
        self.client("ec2").delete_vpc_endpoints(VpcEndpointIds=[endpoint_id])

    def delete_security_group(self, group_id: str) -> None:
        self.retry_while(f"deleting security group {group_id}",
                         lambda: self.client("ec2").delete_security_group(GroupId=group_id),
                         dependency_violation, ENI_RELEASE_TIMEOUT, first_delay=10, max_delay=60)

    def delete_subnet(self, subnet_id: str) -> None:
        self.retry_while(f"deleting subnet {subnet_id}", lambda: self.client("ec2").delete_subnet(SubnetId=subnet_id),
                         dependency_violation, ENI_RELEASE_TIMEOUT, first_delay=10, max_delay=60)

    def delete_vpc(self, vpc_id: str) -> None:
        self.retry_while(f"deleting VPC {vpc_id}", lambda: self.client("ec2").delete_vpc(VpcId=vpc_id),
                         dependency_violation, ENI_RELEASE_TIMEOUT, first_delay=10, max_delay=60)

    # -- EFS: reads -----------------------------------------------------------------------------
    def _file_system_state(self, item: Mapping[str, Any]) -> FileSystemState:
        return FileSystemState(id=item["FileSystemId"], arn=item["FileSystemArn"], state=item["LifeCycleState"],
                               encrypted=bool(item.get("Encrypted")), throughput_mode=item.get("ThroughputMode", ""),
                               size_bytes=int(item.get("SizeInBytes", {}).get("Value", 0)), tags=_tags_of(item))

    def file_system_by_token(self, token: str) -> FileSystemState | None:
        found = self.client("efs").describe_file_systems(CreationToken=token)["FileSystems"]
        live = [f for f in found if f["LifeCycleState"] not in ("deleted", "deleting")]
        return self._file_system_state(live[0]) if live else None

    def file_system(self, file_system_id: str) -> FileSystemState | None:
        try:
            found = self.client("efs").describe_file_systems(FileSystemId=file_system_id)["FileSystems"]
        except ClientError as exc:
            if error_code(exc) == "FileSystemNotFound":
                return None
            raise
        return self._file_system_state(found[0]) if found else None

    def mount_targets(self, file_system_id: str) -> list[MountTargetState]:
        efs = self.client("efs")
        targets = efs.describe_mount_targets(FileSystemId=file_system_id)["MountTargets"]
        return [MountTargetState(t["MountTargetId"], t["SubnetId"], t["LifeCycleState"], tuple(sorted(
            efs.describe_mount_target_security_groups(MountTargetId=t["MountTargetId"])["SecurityGroups"])))
            for t in targets if t["LifeCycleState"] not in ("deleted", "deleting")]

    def access_points(self, file_system_id: str) -> list[AccessPointState]:
        points = self.client("efs").describe_access_points(FileSystemId=file_system_id)["AccessPoints"]
        return [AccessPointState(
            id=p["AccessPointId"], arn=p["AccessPointArn"], file_system_id=p["FileSystemId"],
            path=p.get("RootDirectory", {}).get("Path", "/"), uid=int(p.get("PosixUser", {}).get("Uid", -1)),
            gid=int(p.get("PosixUser", {}).get("Gid", -1)), tags=_tags_of(p))
            for p in points if p.get("LifeCycleState") not in ("deleted", "deleting")]

    def file_system_policy(self, file_system_id: str) -> dict[str, Any] | None:
        try:
            policy = self.client("efs").describe_file_system_policy(FileSystemId=file_system_id).get("Policy")
        except ClientError as exc:
            if error_code(exc) == "PolicyNotFound":
                return None
            raise
        return json.loads(policy) if policy else None

    # -- EFS: changes ---------------------------------------------------------------------------
    def create_file_system(self, token: str, tags: Mapping[str, str]) -> FileSystemIds:
        """Encrypted, elastic throughput (pay per GB read, nothing while idle), created idempotently."""
        efs = self.client("efs")
        created = efs.create_file_system(CreationToken=token, Encrypted=True, PerformanceMode="generalPurpose",
                                         ThroughputMode="elastic", Tags=_tag_list(tags))
        file_system_id = created["FileSystemId"]
        self.wait_until(f"file system {file_system_id} to be available",
                        lambda: (self.file_system(file_system_id) or _GONE).state == "available", EFS_TIMEOUT)
        return FileSystemIds(id=file_system_id, arn=created["FileSystemArn"])

    def create_mount_target(self, file_system_id: str, subnet_id: str, security_group_ids: Sequence[str]) -> str:
        target = self.client("efs").create_mount_target(FileSystemId=file_system_id, SubnetId=subnet_id,
                                                        SecurityGroups=list(security_group_ids))
        target_id = target["MountTargetId"]
        self.wait_until(f"mount target {target_id} to be available", lambda: any(
            t.id == target_id and t.state == "available" for t in self.mount_targets(file_system_id)), EFS_TIMEOUT)
        return str(target_id)

    def set_mount_target_security_groups(self, mount_target_id: str, security_group_ids: Sequence[str]) -> None:
        self.client("efs").modify_mount_target_security_groups(MountTargetId=mount_target_id,
                                                               SecurityGroups=list(security_group_ids))

    def create_access_point(self, file_system_id: str, path: str, uid: int, gid: int, client_token: str,
                            tags: Mapping[str, str]) -> FileSystemIds:
        """The functions see only `path`, as POSIX uid/gid (the image's non-root user)."""
        point = self.client("efs").create_access_point(
            FileSystemId=file_system_id, ClientToken=client_token, PosixUser={"Uid": uid, "Gid": gid},
            RootDirectory={"Path": path, "CreationInfo": {"OwnerUid": uid, "OwnerGid": gid, "Permissions": "0755"}},
            Tags=_tag_list(tags))
        point_id = point["AccessPointId"]
        self.wait_until(f"access point {point_id} to be available", lambda: any(
            p.id == point_id for p in self.access_points(file_system_id)), EFS_TIMEOUT)
        return FileSystemIds(id=point_id, arn=point["AccessPointArn"])

    def put_file_system_policy(self, file_system_id: str, policy: Mapping[str, Any]) -> None:
        self.client("efs").put_file_system_policy(FileSystemId=file_system_id, Policy=json.dumps(policy))

    def delete_access_point(self, access_point_id: str) -> None:
        self.client("efs").delete_access_point(AccessPointId=access_point_id)

    def delete_mount_target(self, file_system_id: str, mount_target_id: str) -> None:
        self.client("efs").delete_mount_target(MountTargetId=mount_target_id)
        self.wait_until(f"mount target {mount_target_id} to be deleted", lambda: all(
            t.id != mount_target_id for t in self.mount_targets(file_system_id)), EFS_TIMEOUT)

    def delete_file_system(self, file_system_id: str) -> None:
        self.client("efs").delete_file_system(FileSystemId=file_system_id)
        self.wait_until(f"file system {file_system_id} to be deleted",
                        lambda: self.file_system(file_system_id) is None, EFS_TIMEOUT)


class _Gone:
    state = "gone"


_GONE = _Gone()
