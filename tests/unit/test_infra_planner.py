"""The deploy planner against an in-memory AWS: what it plans, in what order, and that a second
plan after executing the first is empty."""

from __future__ import annotations

import dataclasses
import io

import pytest
from test_infra_fakes import ACCOUNT, IMAGE, S3_PREFIX_LIST, FakeAWS, make_stack

from infra.exceptions import DeployError, ModelSyncError
from infra.executor import DryRunExecutor, Executor
from infra.plan import Call, Plan, Ref
from infra.planner import plan_deploy
from infra.planner_functions import PUBLIC_URL_PERMISSIONS
from infra.resources import ALIAS, Stack
from infra.state import AliasState, Rule


def deploy(stack: Stack, remote: FakeAWS) -> Plan:
    plan = plan_deploy(stack, remote)
    Executor(remote, io.StringIO()).execute(plan)
    return plan


def methods(plan: Plan) -> list[str]:
    return [call.method for call in plan.calls]


def test_an_empty_account_gets_every_resource_in_dependency_order() -> None:
    # GIVEN an empty account
    remote = FakeAWS()
    # WHEN planning the example-like stack
    plan = plan_deploy(make_stack(), remote)
    # THEN everything is created, each dependency before its user, and nothing is executed yet
    order = methods(plan)
    for before, after in [("create_vpc", "create_subnet"), ("create_subnet", "create_mount_target"),
                          ("create_file_system", "create_access_point"), ("create_role", "create_function"),
                          ("create_log_group", "create_function"), ("create_mount_target", "create_function"),
                          ("publish_version", "create_alias"), ("create_alias", "create_function_url"),
                          ("add_permission", "set_model_notification"), ("create_alias", "put_alarm"),
                          ("create_role", "put_file_system_policy")]:  # IAM refuses unknown principals
        assert order.index(before) < order.index(after), (before, after)
    assert order.count("create_function") == 2 and order.count("put_alarm") == 4
    assert remote.calls == []


def test_a_second_plan_after_deploying_changes_nothing() -> None:
    # GIVEN a deployed stack
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    # WHEN planning again with the same config
    again = plan_deploy(stack, remote)
    # THEN the plan is empty and still lists every resource as unchanged
    assert again.is_empty, [c.message for c in again.calls]
    assert len(again.steps) > 20


def test_refs_are_resolved_before_they_reach_the_facade() -> None:
    # GIVEN a plan whose later steps use ids of resources it creates
    remote = FakeAWS()
    plan = plan_deploy(make_stack(), remote)
    assert any(isinstance(v, Ref) for c in plan.calls for v in c.params.values())
    # WHEN executed
    Executor(remote, io.StringIO()).execute(plan)
    # THEN the mount targets used the created file system, subnets and EFS group
    targets = remote.called("create_mount_target")
    assert {t["subnet_id"] for t in targets} == set(remote.subnets)
    assert all(t["file_system_id"] in remote.file_systems for t in targets)
    # AND the function mounts the created access point, in the created subnets
    spec = remote.called("create_function")[-1]["spec"]
    assert spec.access_point_arn in {p.arn for p in remote.points.values()}
    assert set(spec.subnet_ids) == set(remote.subnets)


def test_security_groups_allow_nfs_to_efs_only_and_https_to_s3_for_sync() -> None:
    # GIVEN a deployed network
    remote = FakeAWS()
    deploy(make_stack(), remote)
    # WHEN reading back the rules by group role
    rules = {item["tags"]["breedserve:resource"]: set(item["rules"]) for item in remote.groups.values()}
    efs = next(g for g, item in remote.groups.items() if item["tags"]["breedserve:resource"] == "sg-efs")
    # THEN the inference group may only reach EFS on 2049, and model-sync also S3 on 443
    assert rules["sg-inference"] == {Rule(True, "tcp", 2049, 2049, efs)}
    assert rules["sg-model-sync"] == {Rule(True, "tcp", 2049, 2049, efs), Rule(True, "tcp", 443, 443, S3_PREFIX_LIST)}
    assert all(not r.egress and r.from_port == 2049 for r in rules["sg-efs"])


def test_a_stray_rule_is_revoked_and_nothing_else_changes() -> None:
    # GIVEN a deployed stack where someone opened the inference group to the world
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    group = next(g for g, i in remote.groups.items() if i["tags"]["breedserve:resource"] == "sg-inference")
    remote.groups[group]["rules"][Rule(True, "-1", -1, -1, "0.0.0.0/0")] = "sgr-open"
    # WHEN planning
    plan = plan_deploy(stack, remote)
    # THEN only that rule is revoked
    assert [(c.method, c.params["egress_rule_ids"]) for c in plan.calls] == [("revoke_rules", ["sgr-open"])]


def test_more_memory_updates_configuration_publishes_and_moves_the_alias() -> None:
    # GIVEN a deployed stack
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    # WHEN the memory changes
    bigger = make_stack(function={"memory_mb": 4096})
    plan = plan_deploy(bigger, remote)
    # THEN $LATEST is reconfigured (not its image), a version is published, live moves to it,
    # and the canary alarm follows the new version
    assert methods(plan) == ["update_function_configuration", "publish_version", "route_alias", "put_alarm"]
    assert "memory 3008 -> 4096" in plan.calls[0].message
    Executor(remote, io.StringIO()).execute(plan)
    assert remote.aliases[(stack.inference_function, ALIAS)] == AliasState(ALIAS, "2", {}, "previous version 1")
    assert plan_deploy(bigger, remote).is_empty


def test_a_new_image_goes_through_update_function_code() -> None:
    # GIVEN a deployed stack
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    # WHEN the image changes
    plan = plan_deploy(make_stack(image={"uri": IMAGE.replace("0.1.0", "0.2.0")}), remote)
    # THEN both functions get the new code; only the inference function publishes a version
    assert methods(plan).count("update_function_code") == 2
    assert methods(plan).count("publish_version") == 1


def test_returning_to_a_published_spec_reuses_its_version() -> None:
    # GIVEN version 1 (3008 MB) and version 2 (4096 MB) serving
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    deploy(make_stack(function={"memory_mb": 4096}), remote)
    # WHEN the config goes back to 3008 MB
    plan = plan_deploy(stack, remote)
    # THEN live is routed back to version 1 without publishing anything (the alarm follows)
    assert methods(plan) == ["route_alias", "put_alarm"]
    assert plan.calls[0].params["version"] == "1"


def test_a_running_canary_blocks_a_deploy_that_would_move_live() -> None:
    # GIVEN a canary on live
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    remote.aliases[(stack.inference_function, ALIAS)] = AliasState(ALIAS, "1", {"2": 0.1}, "")
    # WHEN deploying a changed config
    # THEN the planner refuses, naming the way out
    with pytest.raises(DeployError, match="promote.*rollback"):
        plan_deploy(make_stack(function={"timeout_s": 60}), remote)


def test_bucket_drift_is_repaired_setting_by_setting() -> None:
    # GIVEN a deployed bucket whose versioning was suspended and policy removed
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    remote.buckets[stack.bucket] = dataclasses.replace(remote.buckets[stack.bucket], versioning="Suspended", policy=None)
    # WHEN planning
    plan = plan_deploy(stack, remote)
    # THEN exactly those two settings are restored
    assert methods(plan) == ["enable_versioning", "put_bucket_policy"]


def test_a_public_url_needs_allow_public_and_then_gets_both_permissions() -> None:
    # GIVEN a config with auth NONE
    stack, remote = make_stack(url={"auth": "NONE"}), FakeAWS()
    # WHEN planned without --allow-public
    # THEN it is refused
    with pytest.raises(DeployError, match="--allow-public"):
        plan_deploy(stack, remote)
    # WHEN planned with it
    plan = plan_deploy(stack, remote, allow_public=True)
    # THEN both public permissions are added on the alias, with a warning
    added = {c.params["statement_id"]: c.params for c in plan.calls if c.method == "add_permission"
             and c.params.get("qualifier") == ALIAS}
    assert set(added) == set(PUBLIC_URL_PERMISSIONS)
    assert added["FunctionURLAllowPublicAccess"]["FunctionUrlAuthType"] == "NONE"
    assert added["FunctionURLAllowInvokeAction"]["InvokedViaFunctionUrl"] is True
    assert any("public" in note for note in plan.notes)


def test_going_back_to_iam_auth_removes_the_public_permissions() -> None:
    # GIVEN a deployed public URL
    remote = FakeAWS()
    Executor(remote, io.StringIO()).execute(plan_deploy(make_stack(url={"auth": "NONE"}), remote, allow_public=True))
    # WHEN the config returns to AWS_IAM
    plan = plan_deploy(make_stack(), remote)
    # THEN the URL is updated and both public statements are removed
    assert sorted(methods(plan)) == ["remove_permission", "remove_permission", "update_function_url"]


def test_cors_is_passed_to_the_url_and_compared_order_insensitively() -> None:
    # GIVEN CORS for one origin
    remote = FakeAWS()
    stack = make_stack(url={"cors": {"allow_origins": ["https://dogs.example"], "allow_headers": ["x-b", "Content-Type"]}})
    deploy(stack, remote)
    cors = remote.called("create_function_url")[0]["cors"]
    # THEN the URL got it
    assert cors["AllowOrigins"] == ["https://dogs.example"] and cors["MaxAge"] == 300
    # WHEN AWS reports the lists in another order and case
    url = remote.urls[(stack.inference_function, ALIAS)]
    remote.urls[(stack.inference_function, ALIAS)] = dataclasses.replace(
        url, cors={**cors, "AllowHeaders": ["content-type", "x-b"]})
    # THEN nothing needs changing
    assert plan_deploy(stack, remote).is_empty


def test_provisioned_concurrency_on_then_off() -> None:
    # GIVEN a deployed stack
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    # WHEN provisioned concurrency is enabled
    on = make_stack(provisioned_concurrency={"enabled": True, "min": 2, "max": 8, "target_utilization": 0.6})
    plan = deploy(on, remote)
    # THEN it is provisioned at min, then scaled between min and max at the target
    assert methods(plan) == ["set_provisioned_concurrency", "register_scaling", "put_scaling_policy"]
    assert remote.scalings[(stack.inference_function, ALIAS)].target_utilization == 0.6
    assert plan_deploy(on, remote).is_empty
    # WHEN disabled again
    off = plan_deploy(stack, remote)
    # THEN scaling is removed and the provisioned environments deleted
    assert methods(off) == ["deregister_scaling", "delete_provisioned_concurrency"]


def test_reserved_concurrency_zero_means_no_reservation() -> None:
    # GIVEN a deployed stack with 10 reserved
    remote, stack = FakeAWS(), make_stack(function={"reserved_concurrency": 10})
    deploy(stack, remote)
    assert remote.reserved[stack.inference_function] == 10
    # WHEN the config says 0
    plan = plan_deploy(make_stack(function={"reserved_concurrency": 0}), remote)
    # THEN the reservation is cleared
    assert methods(plan) == ["clear_reserved_concurrency"]


def test_reused_network_and_file_system_are_used_not_managed() -> None:
    # GIVEN an existing file system with an access point, in subnets someone else owns
    remote = FakeAWS()
    ids = remote.create_file_system("other", {})
    point = remote.create_access_point(ids.id, "/models", 1000, 1000, "t", {})
    remote.subnets.update({"subnet-a1": ("vpc-x", None, {}), "subnet-b2": ("vpc-x", None, {})})  # type: ignore[dict-item]
    stack = make_stack(network={"create": False, "subnet_ids": ["subnet-a1", "subnet-b2"],
                                "security_group_ids": ["sg-0a"]},
                       efs={"create": False, "file_system_id": ids.id, "access_point_id": point.id})
    remote.calls.clear()
    # WHEN planning
    plan = plan_deploy(stack, remote)
    # THEN no network or EFS resource is created or changed, and the functions use the given ids
    assert not {"create_vpc", "create_subnet", "create_file_system", "create_mount_target", "put_file_system_policy",
                "create_access_point"} & set(methods(plan))
    spec = next(c.params["spec"] for c in plan.calls if c.method == "create_function")
    assert spec.subnet_ids == ("subnet-a1", "subnet-b2") and spec.access_point_arn == point.arn
    assert any("file system policy" in note for note in plan.notes)


def test_the_dry_run_prints_the_plan_grouped_by_resource() -> None:
    # GIVEN a plan for an empty account
    plan = plan_deploy(make_stack(), FakeAWS())
    out = io.StringIO()
    # WHEN printed by the dry-run executor
    DryRunExecutor(out).execute(plan, "Plan:")
    # THEN each resource heads its steps, and the totals close it
    text = out.getvalue()
    assert "  model bucket\n    + create S3 bucket demo-models-" + ACCOUNT in text
    assert text.rstrip().endswith(f"{len(plan.calls)} changes, {len(plan.steps) - len(plan.calls)} unchanged.")


def test_progress_lines_name_the_ids_created_by_earlier_steps() -> None:
    # GIVEN a first deploy, whose plan can only say <subnet-a> or <sg-efs> for ids not made yet
    remote, out = FakeAWS(), io.StringIO()
    plan = plan_deploy(make_stack(), remote)
    assert any("<subnet-a>" in c.message for c in plan.calls)
    # WHEN executed
    Executor(remote, out).execute(plan)
    # THEN the progress lines show the real ids instead
    lines = [line for line in out.getvalue().splitlines() if line.lstrip().startswith("[")]
    assert not [line for line in lines if "<" in line]
    targets = [line.split("create mount target in ")[1].split()[0] for line in lines if "create mount target in" in line]
    assert sorted(targets) == sorted(remote.subnets)


def test_the_executor_refuses_unknown_methods_before_running_anything() -> None:
    # GIVEN a plan with a typo in its second step
    remote = FakeAWS()
    plan = Plan((Call("b", "make", "create_bucket", {"name": "x", "tags": {}}), Call("b", "oops", "crate_bucket")))
    # WHEN executed
    # THEN nothing runs
    with pytest.raises(TypeError, match="crate_bucket"):
        Executor(remote, io.StringIO()).execute(plan)
    assert remote.calls == []


# -- the configured model version reaches EFS -------------------------------------------------------

def publish(remote: FakeAWS, stack: Stack, version: str | None = None) -> None:
    """What `model_store publish` leaves in the bucket that the planner looks for: the manifest."""
    remote.objects.add((stack.bucket, stack.manifest_key(version or stack.config.model.version)))


def test_a_model_published_before_the_first_deploy_is_synced_to_efs_by_the_deploy() -> None:
    # GIVEN a deployed bucket (first deploy, no model yet), then the model published while the
    # sync function did not exist (its S3 event reached nobody), then the functions deleted
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    publish(remote, stack)
    remote.functions.clear(), remote.published.clear(), remote.aliases.clear()
    # WHEN deploying
    plan = deploy(stack, remote)
    # THEN model-sync is run for the configured version once it exists, before a version goes live
    order = methods(plan)
    assert order.count("sync_model") == 1
    assert order.index("create_function") < order.index("sync_model") < order.index("publish_version")
    call = next(c for c in plan.calls if c.method == "sync_model")
    assert (call.params["model"], call.params["version"]) == ("dogbreeds", "demo-1")
    assert call.params["arn"] == stack.function_arn(stack.sync_function)
    assert ("dogbreeds", "demo-1") in remote.efs
    # AND a second deploy with nothing changed plans nothing
    assert plan_deploy(stack, remote).is_empty


def test_first_deploy_into_an_account_where_the_bucket_already_holds_the_model() -> None:
    # GIVEN an existing bucket (say, made by an earlier stack's destroy without --delete-data) with the model
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    publish(remote, stack)
    fresh = FakeAWS()
    fresh.buckets, fresh.objects = remote.buckets, remote.objects
    # WHEN everything else is created
    plan = deploy(stack, fresh)
    # THEN the model is copied to EFS as part of it, and the next plan is empty
    assert methods(plan).count("sync_model") == 1 and ("dogbreeds", "demo-1") in fresh.efs
    assert plan_deploy(stack, fresh).is_empty


def test_an_unpublished_model_is_a_note_not_a_step() -> None:
    # GIVEN an empty account (the bucket is created by this very plan)
    remote, stack = FakeAWS(), make_stack()
    # WHEN planning and deploying
    plan = deploy(stack, remote)
    # THEN nothing tries to sync, and the notes say the function answers 503 until the version is published
    assert "sync_model" not in methods(plan)
    assert any("demo-1" in n and "503" in n and "publish" in n for n in plan.notes)
    # AND once deployed without the model, planning again still changes nothing
    again = plan_deploy(stack, remote)
    assert again.is_empty and any("not published yet" in s.message for s in again.steps)


def test_a_new_configured_version_is_synced_before_live_moves_to_it() -> None:
    # GIVEN a deployed stack whose model demo-1 is on EFS, and demo-2 published since
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    publish(remote, stack)
    deploy(stack, remote)
    publish(remote, stack, "demo-2")
    # WHEN the config moves to demo-2
    newer = make_stack(model={"version": "demo-2"})
    plan = plan_deploy(newer, remote)
    # THEN demo-2 is synced first, then the inference function is updated and live routed to it
    assert methods(plan) == ["sync_model", "update_function_configuration", "publish_version", "route_alias",
                             "put_alarm"]
    assert plan.calls[0].params["version"] == "demo-2" and "last confirmed: dogbreeds/demo-1" in plan.calls[0].message
    Executor(remote, io.StringIO()).execute(plan)
    assert plan_deploy(newer, remote).is_empty


def test_a_changed_sync_function_syncs_again_but_inference_only_changes_do_not() -> None:
    # GIVEN a deployed stack with its model on EFS (the second deploy confirmed it)
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    publish(remote, stack)
    assert methods(deploy(stack, remote)) == ["sync_model"]
    # WHEN only the inference function's memory changes
    # THEN nothing is synced (the model it reads is where it was)
    assert "sync_model" not in methods(plan_deploy(make_stack(function={"memory_mb": 4096}), remote))
    # WHEN the sync function changes (its spec fingerprint is part of the confirmation)
    plan = plan_deploy(make_stack(sync={"memory_mb": 2048}), remote)
    # THEN it is updated and then run again (idempotent: a complete version is not downloaded again)
    assert methods(plan) == ["update_function_configuration", "sync_model"]


def test_a_failed_sync_stops_the_deploy_with_the_functions_error_and_the_rerun_retries_it() -> None:
    # GIVEN the model published before the first deploy, and a sync function that fails for it
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    publish(remote, stack)
    remote.functions.clear(), remote.published.clear(), remote.aliases.clear()
    remote.sync_errors["demo-1"] = "ChecksumError: model.safetensors does not match its manifest"
    # WHEN deploying
    # THEN the deploy stops with an error naming the version and the function's message
    with pytest.raises(ModelSyncError, match="version demo-1 .*ChecksumError: model.safetensors does not match"):
        deploy(stack, remote)
    # WHEN the cause is fixed and deploy runs again
    del remote.sync_errors["demo-1"]
    plan = deploy(stack, remote)
    # THEN the sync is planned again (nothing confirmed it), then the rest that did not run
    assert methods(plan)[0] == "sync_model" and ("dogbreeds", "demo-1") in remote.efs
    assert plan_deploy(stack, remote).is_empty


def test_the_dry_run_prints_the_sync_step() -> None:
    # GIVEN a plan that syncs the model (published before the functions exist)
    remote, stack = FakeAWS(), make_stack()
    deploy(stack, remote)
    publish(remote, stack)
    remote.functions.clear(), remote.published.clear(), remote.aliases.clear()
    out = io.StringIO()
    # WHEN printed by the dry-run executor
    DryRunExecutor(out).execute(plan_deploy(stack, remote), "Plan:")
    # THEN the step is shown under its own heading, naming the version and the function
    text = out.getvalue()
    assert ("  model on EFS\n    + copy dogbreeds/demo-1 from S3 to EFS: run demo-model-sync and wait for it "
            "(last confirmed: nothing)") in text
    assert remote.called("sync_model") == []
