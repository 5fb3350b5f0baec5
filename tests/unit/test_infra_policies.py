"""Least privilege, checked: every policy the stack uses passes the lint, and the lint catches
the mistakes it exists for. Issue 6's security checks reuse `lint_policy` and `lint_stack`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_infra_fakes import make_stack

from infra.policies import (
    EFS_WRITE_ACTIONS,
    POLICY_NAMES,
    file_system_policy,
    inference_role_policy,
    lint_policy,
    lint_stack,
    stack_policies,
    sync_role_policy,
)

FS = "arn:aws:elasticfilesystem:us-east-1:123456789012:file-system/fs-0abc"
AP = "arn:aws:elasticfilesystem:us-east-1:123456789012:access-point/fsap-0abc"


def actions(policy: dict[str, Any], effect: str = "Allow") -> set[str]:
    found: set[str] = set()
    for statement in policy["Statement"]:
        if statement["Effect"] == effect:
            value = statement["Action"]
            found |= {value} if isinstance(value, str) else set(value)
    return found


def allow(action: Any, resource: Any, **extra: Any) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Sid": "S", "Effect": "Allow", "Action": action,
                                                   "Resource": resource, **extra}]}


def test_every_stack_policy_passes_the_lint() -> None:
    # GIVEN the example-like stack
    stack = make_stack()
    # WHEN every document is linted (the serving role with the read-only rules)
    findings = lint_stack(stack)
    # THEN there is nothing to report, and every named document was covered
    assert findings == []
    assert set(stack_policies(stack)) == set(POLICY_NAMES)


def test_no_policy_has_a_wildcard_action_in_an_allow() -> None:
    # GIVEN every stack policy
    for name, policy in stack_policies(make_stack()).items():
        # THEN no allowed action contains '*'
        assert not [a for a in actions(policy) if "*" in a], name


def test_the_inference_role_mounts_efs_read_only_and_never_touches_s3() -> None:
    # GIVEN the inference role's policy
    policy = inference_role_policy(make_stack(), FS, AP)
    granted = actions(policy)
    # THEN it can mount, but not write to, EFS and has no S3 action at all
    assert "elasticfilesystem:ClientMount" in granted
    assert not granted & EFS_WRITE_ACTIONS
    assert not [a for a in granted if a.startswith("s3:")]
    # AND the mount is only through the stack's access point
    mount = next(s for s in policy["Statement"] if s["Sid"] == "MountModelsReadOnly")
    assert mount["Resource"] == FS and mount["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"] == AP


def test_the_sync_role_writes_efs_and_reads_only_the_model_prefix() -> None:
    # GIVEN the model-sync role's policy
    stack = make_stack()
    policy = sync_role_policy(stack, FS, AP)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    # THEN it may write EFS and read S3 objects only under <prefix>/<model>/
    assert "elasticfilesystem:ClientWrite" in actions(policy)
    assert by_sid["ReadModelObjects"]["Resource"] == f"arn:aws:s3:::{stack.bucket}/models/dogbreeds/*"
    assert by_sid["ListModelPrefix"]["Condition"]["StringLike"]["s3:prefix"] == ["models/dogbreeds/",
                                                                                "models/dogbreeds/*"]
    assert {a for a in actions(policy) if a.startswith("s3:")} == {"s3:GetObject", "s3:ListBucket"}


def test_the_file_system_policy_grants_write_to_model_sync_only() -> None:
    # GIVEN the EFS resource policy
    stack = make_stack()
    policy = file_system_policy(stack, FS, AP)
    writers = [s["Principal"]["AWS"] for s in policy["Statement"]
               if s["Effect"] == "Allow" and "elasticfilesystem:ClientWrite" in s["Action"]]
    # THEN only the sync role may write, and plain-text NFS is denied to everyone
    assert writers == [stack.role_arn(stack.sync_function)]
    assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
               for s in policy["Statement"])


def test_each_deployer_document_fits_an_iam_managed_policy() -> None:
    # GIVEN the deployer's documents as `python -m infra policy` prints them
    policies = stack_policies(make_stack())
    documents = [policies["deployer-infrastructure"], policies["deployer-functions"]]
    # THEN each is within IAM's 6,144-character limit for managed policies (whitespace excluded)
    assert all(len(json.dumps(d, separators=(",", ":"))) <= 6144 for d in documents)
    # AND the deployer may pass the function roles to Lambda only
    passing = next(s for s in documents[1]["Statement"] if s["Sid"] == "PassFunctionRolesToLambdaOnly")
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}


@pytest.mark.parametrize("policy, problem", [
    (allow("*", "arn:aws:s3:::bucket"), "wildcard action"),
    (allow("s3:*", "arn:aws:s3:::bucket"), "wildcard action"),
    (allow("ec2:Describe*", "*"), "wildcard action"),
    (allow("s3:GetObject", "*"), "support resource-level"),
    (allow("s3:GetObject", "arn:aws:s3:::*"), "names no resource"),
    (allow("lambda:InvokeFunction", "arn:aws:lambda:us-east-1:123456789012:function:*"), "names no resource"),
    ({"Version": "2012-10-17", "Statement": [{"Sid": "N", "Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]},
     "NotAction"),
    (allow("s3:GetObject", "arn:aws:s3:::b/*", Principal="*"), "every principal"),
    ({"Version": "2008-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                              "Resource": "arn:aws:s3:::b/*"}]}, "Version"),
])
def test_the_lint_catches_broad_grants(policy: dict[str, Any], problem: str) -> None:
    # WHEN a too-broad policy is linted
    findings = lint_policy("p", policy)
    # THEN the finding says what is wrong
    assert any(problem in f.problem for f in findings), findings


def test_the_lint_allows_wildcards_in_deny_statements_and_tag_scoped_ids() -> None:
    # GIVEN a Deny with s3:* and an Allow on type/* narrowed by a tag condition
    deny = {"Version": "2012-10-17", "Statement": [{"Sid": "D", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                                                    "Resource": "arn:aws:s3:::b/*"}]}
    tagged = allow("ec2:DeleteSubnet", "arn:aws:ec2:us-east-1:123456789012:subnet/*",
                   Condition={"StringEquals": {"aws:ResourceTag/breedserve:stack": "demo"}})
    # THEN neither is reported
    assert lint_policy("deny", deny) == [] and lint_policy("tagged", tagged) == []


@pytest.mark.parametrize("action", ["elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess",
                                    "s3:GetObject", "s3:PutObject"])
def test_a_serving_role_with_write_or_s3_access_fails_the_read_only_lint(action: str) -> None:
    # GIVEN the inference policy plus one extra grant
    policy = inference_role_policy(make_stack(), FS, AP)
    policy["Statement"].append({"Sid": "Extra", "Effect": "Allow", "Action": [action], "Resource": FS})
    # WHEN linted as the serving role
    findings = lint_policy("inference-role", policy, read_only_role=True)
    # THEN the extra grant is reported
    assert [f.statement for f in findings] == ["Extra"]
