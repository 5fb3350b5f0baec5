"""The destroy plan: reverse dependency order, and data kept unless asked."""

from __future__ import annotations

from test_infra_fakes import make_stack

from infra.destroy import plan_destroy
from infra.inventory import Inventory
from infra.resources import Stack
from infra.state import (
    AccessPointState,
    BucketState,
    FileSystemState,
    FunctionState,
    MountTargetState,
    RepositoryState,
    Rule,
    SecurityGroupState,
    SubnetState,
)


def full_inventory(stack: Stack) -> Inventory:
    function = FunctionState(stack.inference_function, "arn", "$LATEST", "Active", "Successful", "", "role", None, None,
                             "x86_64", 128, 3, 512, {}, (), (), None)
    return Inventory(
        bucket=BucketState(stack.bucket, None, "AES256", "Enabled", None, {},
                           ({"Id": stack.notification_id},)),
        repository=RepositoryState(stack.repository, "uri", "arn", "IMMUTABLE", True, None, {}),
        vpc_id="vpc-1",
        subnets={"subnet-a": SubnetState("subnet-1", "us-east-1a", "10.42.0.0/20", "subnet-a")},
        security_groups={"sg-efs": SecurityGroupState("sg-1", "sg-efs", {Rule(False, "tcp", 2049, 2049, "sg-2"): "sgr-1"}),
                         "sg-inference": SecurityGroupState("sg-2", "sg-inference",
                                                            {Rule(True, "tcp", 2049, 2049, "sg-1"): "sgr-2"})},
        s3_endpoint="vpce-1",
        file_system=FileSystemState("fs-1", "arn:fs", "available", True, "elastic", 0, {}),
        mount_targets=(MountTargetState("fsmt-1", "subnet-1", "available", ("sg-1",)),),
        access_points=(AccessPointState("fsap-1", "arn:ap", "fs-1", "/breedserve", 1000, 1000, {}),),
        roles=(stack.inference_function,), log_groups=(stack.log_group(stack.inference_function),),
        functions={stack.inference_function: function},
        alarms={},
    )


def test_destroy_goes_in_reverse_dependency_order_and_keeps_data() -> None:
    # GIVEN a fully deployed stack
    stack = make_stack()
    # WHEN planning destroy without --delete-data
    plan = plan_destroy(stack, full_inventory(stack))
    order = [c.method for c in plan.calls]
    # THEN functions go before their roles, EFS parts before the file system, rules before groups,
    # groups and subnets before the VPC; the bucket loses only its trigger
    for before, after in [("delete_function", "delete_role"), ("delete_function", "delete_security_group"),
                          ("delete_access_point", "delete_file_system"), ("delete_mount_target", "delete_file_system"),
                          ("revoke_rules", "delete_security_group"), ("delete_security_group", "delete_vpc"),
                          ("delete_subnet", "delete_vpc"), ("delete_file_system", "delete_subnet")]:
        assert order.index(before) < order.index(after), (before, after)
    assert "remove_model_notification" in order
    assert not {"empty_and_delete_bucket", "delete_repository"} & set(order)
    assert any("--delete-data" in note for note in plan.notes)


def test_delete_data_removes_the_bucket_and_repository_last() -> None:
    # GIVEN a fully deployed stack
    stack = make_stack()
    # WHEN planning destroy with --delete-data
    order = [c.method for c in plan_destroy(stack, full_inventory(stack), delete_data=True).calls]
    # THEN the repository and the emptied bucket go at the end, and the trigger is not touched first
    assert order[-2:] == ["delete_repository", "empty_and_delete_bucket"]
    assert "remove_model_notification" not in order


def test_destroying_nothing_plans_nothing() -> None:
    # GIVEN no resource of the stack
    # WHEN planning destroy
    plan = plan_destroy(make_stack(), Inventory())
    # THEN the plan is empty
    assert plan.is_empty and plan.notes == ()
