"""Least-privilege IAM documents, built by code, and the lint that keeps them that way.

Every policy `deploy` attaches is built here from the stack's names, so each one is scoped to the
resources of that stack: the inference role may mount EFS read-only (`ClientMount`, never
`ClientWrite`), write its own log group, and manage its VPC network interfaces; the model-sync
role adds `ClientWrite` and read access to the configured model's prefix in S3. The EFS file
system policy repeats those grants on the resource side: without a file system policy, EFS lets
any client that reaches a mount target write, so the identity policies alone would not make the
inference mount read-only.

`lint_policy` encodes the rules (no wildcard action in an Allow, no unscoped resource unless AWS
offers no resource-level permission for the action, no NotAction/NotResource). The tests lint
every document built here, and `python -m infra policy` prints the deployer's own policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.config import STACK_TAG
from infra.resources import Stack, Value

VERSION = "2012-10-17"

# Lambda's VPC access needs these on "*": Lambda creates and deletes the function's ENIs
# itself, and (per the Lambda developer guide, "execution role and user permissions" for VPC
# access) DescribeNetworkInterfaces and CreateNetworkInterface only work when allowed on all
# resources. They grant nothing beyond network interfaces.
ENI_ACTIONS = ("ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
               "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses")

# Actions for which AWS offers no resource-level permission: they must name "*" as resource.
STAR_RESOURCE_ACTIONS = frozenset({
    *ENI_ACTIONS,
    "sts:GetCallerIdentity",
    "ecr:GetAuthorizationToken",
    "ec2:DescribeVpcs", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeSecurityGroupRules",
    "ec2:DescribeRouteTables", "ec2:DescribeVpcEndpoints", "ec2:DescribeAvailabilityZones",
    "ec2:DescribePrefixLists",
    "elasticfilesystem:DescribeFileSystems",
    "application-autoscaling:DescribeScalableTargets", "application-autoscaling:DescribeScalingPolicies",
    "cloudwatch:DescribeAlarms",
})

# What the deployer reads on "*": the describe calls above, without the ENI mutations.
DESCRIBE_ACTIONS = sorted((STAR_RESOURCE_ACTIONS - set(ENI_ACTIONS)) | {"ec2:DescribeNetworkInterfaces"})

# The documents `stack_policies` returns (and `python -m infra policy --which` prints).
POLICY_NAMES = ("deployer-infrastructure", "deployer-functions", "inference-role", "model-sync-role", "lambda-trust", "efs-file-system", "model-bucket")

EFS_WRITE_ACTIONS = frozenset({"elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"})


def statement(sid: str, actions: Iterable[str], resources: Value | Iterable[Value],
              condition: Mapping[str, Any] | None = None, effect: str = "Allow") -> dict[str, Any]:
    """One statement with sorted actions, so documents compare equal however they were built."""
    resource_list = [resources] if isinstance(resources, str) or not isinstance(resources, Iterable) else list(resources)
    block: dict[str, Any] = {"Sid": sid, "Effect": effect, "Action": sorted(set(actions)),
                             "Resource": resource_list[0] if len(resource_list) == 1 else resource_list}
    if condition:
        block["Condition"] = dict(condition)
    return block


def document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": list(statements)}


def lambda_trust_policy(stack: Stack) -> dict[str, Any]:
    """Only Lambda, on behalf of this account, may assume the function roles (no confused deputy)."""
    return {"Version": VERSION, "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": stack.account}},
    }]}


def _function_basics(stack: Stack, function: str) -> list[dict[str, Any]]:
    return [
        statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                  f"{stack.log_group_arn(function)}:*"),
        # "*" required: see ENI_ACTIONS above.
        statement("ManageVpcNetworkInterfaces", ENI_ACTIONS, "*"),
    ]


def inference_role_policy(stack: Stack, file_system_arn: Value, access_point_arn: Value) -> dict[str, Any]:
    """Logs, ENIs, and a read-only EFS mount through the stack's access point. Nothing else."""
    return document(
        *_function_basics(stack, stack.inference_function),
        statement("MountModelsReadOnly", ["elasticfilesystem:ClientMount"], file_system_arn,
                  {"StringEquals": {"elasticfilesystem:AccessPointArn": access_point_arn}}),
    )


def sync_role_policy(stack: Stack, file_system_arn: Value, access_point_arn: Value) -> dict[str, Any]:
    """The inference grants plus EFS writes and S3 reads of the configured model's prefix only."""
    prefix = stack.model_key_prefix
    return document(
        *_function_basics(stack, stack.sync_function),
        statement("MountModelsReadWrite", ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
                  file_system_arn, {"StringEquals": {"elasticfilesystem:AccessPointArn": access_point_arn}}),
        statement("ReadModelObjects", ["s3:GetObject"], f"{stack.bucket_arn}/{prefix}*"),
        statement("ListModelPrefix", ["s3:ListBucket"], stack.bucket_arn,
                  {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}}),
    )


def file_system_policy(stack: Stack, file_system_arn: Value, access_point_arn: Value) -> dict[str, Any]:
    """The resource side of the EFS grants: mount for both roles, write for model-sync only, TLS only."""
    through_access_point = {"StringEquals": {"elasticfilesystem:AccessPointArn": access_point_arn}}
    inference, sync = stack.role_arn(stack.inference_function), stack.role_arn(stack.sync_function)
    return {"Version": VERSION, "Statement": [
        {"Sid": "MountForBothFunctions", "Effect": "Allow", "Principal": {"AWS": [inference, sync]},
         "Action": ["elasticfilesystem:ClientMount"], "Resource": file_system_arn, "Condition": through_access_point},
        {"Sid": "WriteForModelSyncOnly", "Effect": "Allow", "Principal": {"AWS": sync},
         "Action": ["elasticfilesystem:ClientWrite"], "Resource": file_system_arn, "Condition": through_access_point},
        {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": {"AWS": "*"},
         "Action": sorted(EFS_WRITE_ACTIONS | {"elasticfilesystem:ClientMount"}), "Resource": file_system_arn,
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]}


def bucket_policy(stack: Stack) -> dict[str, Any]:
    """Refuse every request to the model bucket that does not use TLS.

    A Deny with `s3:*` is the form AWS documents for this; a wildcard in a Deny only ever
    removes access, which is why the lint allows wildcards in Deny statements.
    """
    return {"Version": VERSION, "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [stack.bucket_arn, f"{stack.bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]}


def deployer_policies(stack: Stack) -> dict[str, dict[str, Any]]:
    """What the person or CI role running `python -m infra` needs, scoped to this stack's names/tags.

    Two documents, because together they exceed IAM's 6,144-character limit for one managed
    policy: "deployer-infrastructure" (S3, ECR, VPC, EFS) and "deployer-functions" (IAM roles,
    Lambda, logs, alarms, scaling). Attach both.
    """
    region, account, name = stack.region, stack.account, stack.name
    ec2 = f"arn:aws:ec2:{region}:{account}"
    efs = f"arn:aws:elasticfilesystem:{region}:{account}"
    functions = [f"arn:aws:lambda:{region}:{account}:function:{name}-*"]
    functions.append(f"{functions[0]}:*")
    requested_tag = {"StringEquals": {f"aws:RequestTag/{STACK_TAG}": name}}
    owned_tag = {"StringEquals": {f"aws:ResourceTag/{STACK_TAG}": name}}
    roles = [stack.role_arn(stack.inference_function), stack.role_arn(stack.sync_function)]
    repository = f"arn:aws:ecr:{region}:{account}:repository/{stack.repository}"
    statements = [
        # "*" required: no resource-level permissions exist for these reads (STAR_RESOURCE_ACTIONS).
        statement("ReadWithoutResourceLevelPermissions", DESCRIBE_ACTIONS, "*"),
        # "*" required: EFS creates each mount target's network interface with the caller's
        # permissions, and the new interface cannot carry the stack tag yet.
        statement("MountTargetInterfaces", ["ec2:CreateNetworkInterface"], "*"),
        statement("ModelBucket", [
            "s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket", "s3:ListBucketVersions",
            "s3:GetBucketPublicAccessBlock", "s3:PutBucketPublicAccessBlock", "s3:GetEncryptionConfiguration",
            "s3:PutEncryptionConfiguration", "s3:GetBucketVersioning", "s3:PutBucketVersioning",
            "s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:GetBucketTagging", "s3:PutBucketTagging",
            "s3:GetBucketNotification", "s3:PutBucketNotification", "s3:GetBucketLocation",
        ], stack.bucket_arn),
        statement("ModelObjectsForDeleteData", ["s3:DeleteObject", "s3:DeleteObjectVersion"], f"{stack.bucket_arn}/*"),
        statement("ImageRepository", [
            "ecr:CreateRepository", "ecr:DeleteRepository", "ecr:DescribeRepositories", "ecr:DescribeImages",
            "ecr:PutLifecyclePolicy", "ecr:GetLifecyclePolicy", "ecr:PutImageTagMutability",
            "ecr:PutImageScanningConfiguration", "ecr:TagResource", "ecr:ListTagsForResource",
            "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
            "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
            "ecr:SetRepositoryPolicy", "ecr:GetRepositoryPolicy",
        ], repository),
        statement("CreateTaggedNetwork", ["ec2:CreateVpc", "ec2:CreateSubnet", "ec2:CreateSecurityGroup",
                                          "ec2:CreateVpcEndpoint"],
                  [f"{ec2}:vpc/*", f"{ec2}:subnet/*", f"{ec2}:security-group/*", f"{ec2}:vpc-endpoint/*",
                   f"{ec2}:route-table/*"], requested_tag),
        statement("TagOnCreate", ["ec2:CreateTags"], [f"{ec2}:vpc/*", f"{ec2}:subnet/*", f"{ec2}:security-group/*",
                                                      f"{ec2}:vpc-endpoint/*"],
                  {"StringEquals": {"ec2:CreateAction": ["CreateVpc", "CreateSubnet", "CreateSecurityGroup",
                                                         "CreateVpcEndpoint"]}}),
        statement("ChangeOwnedNetwork", [
            "ec2:DeleteVpc", "ec2:DeleteSubnet", "ec2:DeleteSecurityGroup", "ec2:DeleteVpcEndpoints",
            "ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress",
            "ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress", "ec2:ModifyVpcEndpoint",
        ], [f"{ec2}:vpc/*", f"{ec2}:subnet/*", f"{ec2}:security-group/*", f"{ec2}:vpc-endpoint/*",
            f"{ec2}:route-table/*", f"{ec2}:security-group-rule/*"], owned_tag),
        statement("CreateTaggedFileSystem", ["elasticfilesystem:CreateFileSystem", "elasticfilesystem:TagResource"],
                  f"{efs}:file-system/*", requested_tag),
        statement("ChangeOwnedFileSystem", [
            "elasticfilesystem:CreateMountTarget", "elasticfilesystem:DeleteMountTarget",
            "elasticfilesystem:DescribeMountTargets", "elasticfilesystem:DescribeMountTargetSecurityGroups",
            "elasticfilesystem:ModifyMountTargetSecurityGroups", "elasticfilesystem:CreateAccessPoint",
            "elasticfilesystem:DescribeAccessPoints", "elasticfilesystem:DeleteFileSystem",
            "elasticfilesystem:PutFileSystemPolicy", "elasticfilesystem:DescribeFileSystemPolicy",
            "elasticfilesystem:ListTagsForResource",
        ], f"{efs}:file-system/*", owned_tag),
        statement("ChangeOwnedAccessPoints", ["elasticfilesystem:DeleteAccessPoint", "elasticfilesystem:TagResource"],
                  f"{efs}:access-point/*", owned_tag),
        statement("ServiceLinkedRoles", ["iam:CreateServiceLinkedRole"], [
            f"arn:aws:iam::{account}:role/aws-service-role/elasticfilesystem.amazonaws.com/*",
            f"arn:aws:iam::{account}:role/aws-service-role/lambda.application-autoscaling.amazonaws.com/*"],
            {"StringEquals": {"iam:AWSServiceName": ["elasticfilesystem.amazonaws.com",
                                                     "lambda.application-autoscaling.amazonaws.com"]}}),
        statement("FunctionRoles", [
            "iam:CreateRole", "iam:DeleteRole", "iam:GetRole", "iam:TagRole", "iam:ListRoleTags",
            "iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy",
            "iam:ListRolePolicies",
        ], roles),
        statement("PassFunctionRolesToLambdaOnly", ["iam:PassRole"], roles,
                  {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}),
        statement("Functions", [
            "lambda:CreateFunction", "lambda:DeleteFunction", "lambda:GetFunction", "lambda:GetFunctionConfiguration",
            "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration", "lambda:PublishVersion",
            "lambda:ListVersionsByFunction", "lambda:CreateAlias", "lambda:UpdateAlias", "lambda:GetAlias",
            "lambda:CreateFunctionUrlConfig", "lambda:UpdateFunctionUrlConfig", "lambda:GetFunctionUrlConfig",
            "lambda:DeleteFunctionUrlConfig", "lambda:AddPermission", "lambda:RemovePermission", "lambda:GetPolicy",
            "lambda:PutFunctionConcurrency", "lambda:DeleteFunctionConcurrency", "lambda:GetFunctionConcurrency",
            "lambda:PutProvisionedConcurrencyConfig", "lambda:GetProvisionedConcurrencyConfig",
            "lambda:DeleteProvisionedConcurrencyConfig", "lambda:ListTags", "lambda:TagResource",
            "lambda:InvokeFunctionUrl", "lambda:InvokeFunction",
        ], functions),
        statement("FunctionLogGroups", ["logs:CreateLogGroup", "logs:DeleteLogGroup", "logs:PutRetentionPolicy",
                                        "logs:DescribeLogGroups", "logs:TagResource", "logs:ListTagsForResource"],
                  f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{name}-*"),
        statement("Alarms", ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms", "cloudwatch:TagResource",
                             "cloudwatch:ListTagsForResource"],
                  f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}-*"),
        statement("RegisterTaggedScalableTarget", ["application-autoscaling:RegisterScalableTarget",
                                                   "application-autoscaling:TagResource"],
                  f"arn:aws:application-autoscaling:{region}:{account}:scalable-target/*", requested_tag),
        statement("ChangeOwnedScalableTarget", [
            "application-autoscaling:DeregisterScalableTarget", "application-autoscaling:PutScalingPolicy",
            "application-autoscaling:DeleteScalingPolicy",
        ], f"arn:aws:application-autoscaling:{region}:{account}:scalable-target/*", owned_tag),
    ]
    split = next(i for i, block in enumerate(statements) if block["Sid"] == "FunctionRoles")
    return {"deployer-infrastructure": document(*statements[:split]),
            "deployer-functions": document(*statements[split:])}


def stack_policies(stack: Stack, file_system_arn: Value | None = None,
                   access_point_arn: Value | None = None) -> dict[str, dict[str, Any]]:
    """Every document the stack uses, by name (the lint test walks all of them)."""
    fs = file_system_arn or f"arn:aws:elasticfilesystem:{stack.region}:{stack.account}:file-system/fs-0123456789abcdef0"
    ap = access_point_arn or f"arn:aws:elasticfilesystem:{stack.region}:{stack.account}:access-point/fsap-0123456789abcdef0"
    return {
        "inference-role": inference_role_policy(stack, fs, ap),
        "model-sync-role": sync_role_policy(stack, fs, ap),
        "lambda-trust": lambda_trust_policy(stack),
        "efs-file-system": file_system_policy(stack, fs, ap),
        "model-bucket": bucket_policy(stack),
        **deployer_policies(stack),
    }


@dataclass(frozen=True)
class LintFinding:
    policy: str
    statement: str
    problem: str

    def __str__(self) -> str:
        return f"{self.policy} [{self.statement}]: {self.problem}"


def lint_policy(name: str, policy: Mapping[str, Any], *, read_only_role: bool = False) -> list[LintFinding]:
    """Least-privilege rules for one document; `read_only_role` adds "no EFS or S3 write, no S3 at all"."""
    findings: list[LintFinding] = []
    if policy.get("Version") != VERSION:
        findings.append(LintFinding(name, "-", f"Version must be {VERSION!r}"))
    statements = policy.get("Statement")
    if not isinstance(statements, list) or not statements:
        return findings + [LintFinding(name, "-", "Statement must be a non-empty list")]
    for index, block in enumerate(statements):
        sid = str(block.get("Sid") or f"#{index}")

        def problem(text: str, sid: str = sid) -> None:
            findings.append(LintFinding(name, sid, text))

        for key in ("NotAction", "NotResource", "NotPrincipal"):
            if key in block:
                problem(f"{key} grants everything except a list; name what is allowed instead")
        effect = block.get("Effect")
        if effect not in ("Allow", "Deny"):
            problem(f"Effect must be Allow or Deny, not {effect!r}")
            continue
        actions = _as_list(block.get("Action"))
        resources = _as_list(block.get("Resource"))
        if not actions:
            problem("no Action")
        if effect == "Deny":
            continue  # a Deny can only take access away: wildcards there are safe.
        for action in actions:
            if "*" in action:
                problem(f"wildcard action {action!r}: list the actions needed")
            if read_only_role and action in EFS_WRITE_ACTIONS:
                problem(f"{action} lets the serving role write to EFS")
            if read_only_role and action.startswith("s3:"):
                problem(f"{action}: the serving role reads models from EFS, never from S3")
        if "Principal" in block:
            principals = block["Principal"]
            if principals == "*" or (isinstance(principals, Mapping) and "*" in _as_list(principals.get("AWS"))):
                problem("an Allow for every principal ('*')")
        if not resources and "Principal" not in block:
            problem("no Resource")
        for resource in resources:
            if resource == "*":
                broad = sorted(a for a in actions if a not in STAR_RESOURCE_ACTIONS)
                if broad:
                    problem(f"Resource '*' for {broad}: these actions support resource-level permissions")
            elif _unscoped_arn(resource) and not block.get("Condition"):
                problem(f"resource {resource!r} names no resource: scope it by name or by a tag condition")
    return findings


def lint_stack(stack: Stack) -> list[LintFinding]:
    """Lint every policy of the stack; the serving role also must not write anything."""
    findings: list[LintFinding] = []
    for name, policy in stack_policies(stack).items():
        findings += lint_policy(name, policy, read_only_role=(name == "inference-role"))
    return findings


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _unscoped_arn(resource: str) -> bool:
    """True for `*`, a non-ARN, or an ARN whose resource id is only a wildcard (`...:function:*`)."""
    parts = resource.split(":", 5)
    if len(parts) < 6 or parts[0] != "arn":
        return True
    service, resource_part = parts[2], parts[5]
    # S3 ARNs carry no resource type: `arn:aws:s3:::bucket/key`; others start with `type/` or `type:`.
    match = None if service == "s3" else re.match(r"^[a-z][a-z-]*[/:](.*)$", resource_part)
    identifier = match.group(1) if match else resource_part
    return identifier in ("*", "")


__all__ = ["POLICY_NAMES", "LintFinding", "bucket_policy", "deployer_policies", "file_system_policy",
           "inference_role_policy", "lambda_trust_policy", "lint_policy", "lint_stack", "stack_policies",
           "sync_role_policy"]
