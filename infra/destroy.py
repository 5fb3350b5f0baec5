"""Plan the removal of exactly what `deploy` made, found by tags (`infra.inventory`).

Order is the reverse of dependencies: alarms and scaling, functions (their versions, alias, URL
and concurrency go with them), the bucket's trigger, log groups, roles, EFS (access points,
mount targets, then the file system), and the network last, because Lambda releases a deleted
function's network interfaces only after a while and EC2 refuses to delete subnets and groups
before that (the façade retries within a bound). Security-group rules are revoked first since
the groups reference each other. The model bucket and the image repository hold data and are
kept unless `--delete-data`.
"""

from __future__ import annotations

from infra.inventory import Inventory
from infra.plan import Plan, PlanBuilder
from infra.resources import ALIAS, Stack


def plan_destroy(stack: Stack, inventory: Inventory, *, delete_data: bool = False) -> Plan:
    b = PlanBuilder()
    if inventory.alarms:
        b.call("alarms", f"delete alarms {', '.join(sorted(inventory.alarms))}", "delete_alarms",
               names=sorted(inventory.alarms))
    if inventory.scaling is not None:
        b.call("concurrency", "stop scaling provisioned concurrency", "deregister_scaling",
               function=stack.inference_function, qualifier=ALIAS)
    for name in inventory.functions:
        b.call("functions", f"delete function {name} (with its versions, alias, URL, concurrency)", "delete_function",
               name=name)
    if inventory.bucket is not None and not delete_data and any(
            n.get("Id") == stack.notification_id for n in inventory.bucket.notifications):
        b.call("model bucket", f"stop triggering {stack.sync_function} on new manifests", "remove_model_notification",
               bucket=inventory.bucket.name, notification_id=stack.notification_id)
    for log_group in inventory.log_groups:
        b.call("logs", f"delete log group {log_group}", "delete_log_group", name=log_group)
    for role in inventory.roles:
        b.call("roles", f"delete IAM role {role}", "delete_role", name=role)
    if inventory.file_system is not None:
        fs = inventory.file_system
        for point in inventory.access_points:
            b.call("file system", f"delete access point {point.id}", "delete_access_point", access_point_id=point.id)
        for target in inventory.mount_targets:
            b.call("file system", f"delete mount target {target.id}", "delete_mount_target", file_system_id=fs.id,
                   mount_target_id=target.id)
        b.call("file system", f"delete file system {fs.id} ({fs.size_bytes / 1e6:.1f} MB of model copies; "
               "S3 keeps the originals)", "delete_file_system", file_system_id=fs.id)
    if inventory.s3_endpoint:
        b.call("network", f"delete S3 gateway endpoint {inventory.s3_endpoint}", "delete_s3_endpoint",
               endpoint_id=inventory.s3_endpoint)
    for group in inventory.security_groups.values():
        if group.rules:
            b.call("network", f"revoke the rules of {group.id}", "revoke_rules", group_id=group.id,
                   egress_rule_ids=[i for r, i in group.rules.items() if r.egress],
                   ingress_rule_ids=[i for r, i in group.rules.items() if not r.egress])
    for group in inventory.security_groups.values():
        b.call("network", f"delete security group {group.id} ({group.role})", "delete_security_group", group_id=group.id)
    for subnet in inventory.subnets.values():
        b.call("network", f"delete subnet {subnet.id} ({subnet.availability_zone})", "delete_subnet", subnet_id=subnet.id)
    if inventory.vpc_id:
        b.call("network", f"delete VPC {inventory.vpc_id}", "delete_vpc", vpc_id=inventory.vpc_id)
    _plan_data(b, inventory, delete_data)
    return b.build()


def _plan_data(b: PlanBuilder, inventory: Inventory, delete_data: bool) -> None:
    if delete_data:
        if inventory.repository is not None:
            b.call("image repository", f"delete ECR repository {inventory.repository.name} and its images",
                   "delete_repository", name=inventory.repository.name)
        if inventory.bucket is not None:
            b.call("model bucket", f"delete every object version in {inventory.bucket.name}, then the bucket",
                   "empty_and_delete_bucket", name=inventory.bucket.name)
        return
    kept = [f"bucket {inventory.bucket.name}" if inventory.bucket else "",
            f"repository {inventory.repository.uri}" if inventory.repository else ""]
    kept = [k for k in kept if k]
    if kept:
        b.note(f"keeping {' and '.join(kept)} (models and images): pass --delete-data to delete them too")
