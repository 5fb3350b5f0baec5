"""Façade methods for the function roles (IAM), log groups, Lambda and its concurrency scaling.

Every mutation of a function waits until Lambda reports it finished (`function_active_v2`,
`function_updated_v2`, `published_version_active`), because Lambda refuses the next change
while one is in progress. Creating or reconfiguring a function right after its role was made
is retried while IAM has not propagated ("The role defined for the function cannot be assumed
by Lambda"), within a bounded time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from infra.aws_base import CLIENT_CONFIG, AWSBase, error_code, iam_not_propagated, resource_conflict
from infra.exceptions import ModelSyncError
from infra.resources import EFS_MODEL_TAG, FunctionSpec, efs_model_marker
from infra.state import (
    AliasState,
    FunctionState,
    LogGroupState,
    ModelSyncResult,
    RoleState,
    ScalingState,
    UrlState,
    VersionState,
)

IAM_PROPAGATION_TIMEOUT = 120.0
LAMBDA_WAIT = {"Delay": 2, "MaxAttempts": 450}  # VPC functions can take minutes to become Active
SCALABLE_DIMENSION = "lambda:function:ProvisionedConcurrency"
# A synchronous invocation answers only when the function returns: the read timeout must outlast
# Lambda's longest timeout (900 s), and a timed-out read must not be retried (it would start a
# second sync behind the first one's lock).
INVOKE_CLIENT_CONFIG = CLIENT_CONFIG.merge(BotoConfig(read_timeout=960, retries={"total_max_attempts": 1}))
# What Lambda answers, before the handler runs, while a new VPC function's network interfaces or
# EFS mount targets are still settling; retried within EFS_READY_TIMEOUT.
NOT_READY_CODES = ("EFSMountConnectivityException", "EFSMountTimeoutException", "ResourceNotReadyException",
                   "ResourceConflictException", "TooManyRequestsException")
EFS_READY_TIMEOUT = 180.0


def _not_found(exc: ClientError) -> bool:
    return error_code(exc) in ("ResourceNotFoundException", "NoSuchEntity", "ProvisionedConcurrencyConfigNotFoundException")


def function_state(config: Mapping[str, Any], code: Mapping[str, Any] | None = None,
                   tags: Mapping[str, str] | None = None) -> FunctionState:
    """A GetFunction(Configuration) answer -> `FunctionState`; unreported fields stay `None`."""
    vpc = config.get("VpcConfig") or {}
    image = (config.get("ImageConfigResponse") or {}).get("ImageConfig") or {}
    file_systems = config.get("FileSystemConfigs")
    return FunctionState(
        name=config["FunctionName"], arn=config["FunctionArn"], version=str(config.get("Version", "$LATEST")),
        state=str(config.get("State", "")), last_update_status=config.get("LastUpdateStatus"),
        description=config.get("Description", ""), role=config["Role"],
        image_uri=(code or {}).get("ImageUri"),
        command=tuple(image["Command"]) if "Command" in image else None,
        architecture=(config.get("Architectures") or ["x86_64"])[0], memory_mb=int(config["MemorySize"]),
        timeout_s=int(config["Timeout"]), ephemeral_storage_mb=int((config.get("EphemeralStorage") or {}).get("Size", 512)),
        environment=dict((config.get("Environment") or {}).get("Variables") or {}),
        subnet_ids=tuple(sorted(vpc.get("SubnetIds") or ())), security_group_ids=tuple(sorted(vpc.get("SecurityGroupIds") or ())),
        file_system_configs=None if file_systems is None else tuple(
            (f["Arn"], f["LocalMountPath"]) for f in file_systems),
        tags=dict(tags or {}),
    )


class FunctionsMixin(AWSBase):
    # -- IAM ------------------------------------------------------------------------------------
    def role(self, name: str) -> RoleState | None:
        iam = self.client("iam")
        try:
            role = iam.get_role(RoleName=name)["Role"]
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise
        policies = {}
        for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            policies[policy_name] = _as_document(iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"])
        tags = iam.list_role_tags(RoleName=name).get("Tags", [])
        return RoleState(name=name, arn=role["Arn"], trust_policy=_as_document(role["AssumeRolePolicyDocument"]),
                         inline_policies=policies, tags={t["Key"]: t["Value"] for t in tags})

    def create_role(self, name: str, path: str, trust_policy: Mapping[str, Any], description: str,
                    tags: Mapping[str, str]) -> str:
        role = self.client("iam").create_role(
            RoleName=name, Path=path, AssumeRolePolicyDocument=json.dumps(trust_policy), Description=description,
            MaxSessionDuration=3600, Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())])["Role"]
        self.client("iam").get_waiter("role_exists").wait(RoleName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        return str(role["Arn"])

    def update_trust_policy(self, name: str, trust_policy: Mapping[str, Any]) -> None:
        self.client("iam").update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust_policy))

    def put_role_policy(self, role: str, policy_name: str, policy: Mapping[str, Any]) -> None:
        self.client("iam").put_role_policy(RoleName=role, PolicyName=policy_name, PolicyDocument=json.dumps(policy))

    def delete_role_policy(self, role: str, policy_name: str) -> None:
        self.client("iam").delete_role_policy(RoleName=role, PolicyName=policy_name)

    def tag_role(self, name: str, tags: Mapping[str, str]) -> None:
        self.client("iam").tag_role(RoleName=name, Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())])

    def delete_role(self, name: str) -> None:
        """Inline policies first: IAM refuses to delete a role that still has any."""
        iam = self.client("iam")
        for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
        iam.delete_role(RoleName=name)

    # -- CloudWatch Logs ------------------------------------------------------------------------
    def log_group(self, name: str) -> LogGroupState | None:
        logs = self.client("logs")
        groups = [g for g in logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"] if g["logGroupName"] == name]
        if not groups:
            return None
        arn = groups[0].get("logGroupArn") or groups[0]["arn"].removesuffix(":*")
        tags = logs.list_tags_for_resource(resourceArn=arn).get("tags", {})
        return LogGroupState(name=name, retention_days=groups[0].get("retentionInDays"), tags=tags)

    def create_log_group(self, name: str, retention_days: int, tags: Mapping[str, str]) -> None:
        """Made before the function, so Lambda never creates it without retention."""
        logs = self.client("logs")
        logs.create_log_group(logGroupName=name, tags=dict(tags))
        logs.put_retention_policy(logGroupName=name, retentionInDays=retention_days)

    def set_log_retention(self, name: str, retention_days: int) -> None:
        self.client("logs").put_retention_policy(logGroupName=name, retentionInDays=retention_days)

    def delete_log_group(self, name: str) -> None:
        self.client("logs").delete_log_group(logGroupName=name)

    # -- Lambda: reads --------------------------------------------------------------------------
    def function(self, name: str, qualifier: str | None = None) -> FunctionState | None:
        params = {"FunctionName": name, **({"Qualifier": qualifier} if qualifier else {})}
        try:
            found = self.client("lambda").get_function(**params)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise
        return function_state(found["Configuration"], found.get("Code"), found.get("Tags"))

    def versions(self, name: str) -> list[VersionState]:
        result = []
        for page in self.client("lambda").get_paginator("list_versions_by_function").paginate(FunctionName=name):
            for item in page["Versions"]:
                if item["Version"] != "$LATEST":
                    result.append(VersionState(item["Version"], item.get("Description", ""),
                                               dict((item.get("Environment") or {}).get("Variables") or {})))
        return sorted(result, key=lambda v: int(v.version))

    def alias(self, function: str, name: str) -> AliasState | None:
        try:
            found = self.client("lambda").get_alias(FunctionName=function, Name=name)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise
        weights = (found.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        return AliasState(name=name, version=str(found["FunctionVersion"]),
                          weights={str(k): float(v) for k, v in weights.items()}, description=found.get("Description", ""))

    def function_url(self, function: str, qualifier: str) -> UrlState | None:
        try:
            found = self.client("lambda").get_function_url_config(FunctionName=function, Qualifier=qualifier)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise
        return UrlState(url=found["FunctionUrl"], auth=found["AuthType"], cors=found.get("Cors") or {},
                        invoke_mode=str(found.get("InvokeMode", "BUFFERED")).upper())

    def permission_ids(self, function: str, qualifier: str | None = None) -> set[str]:
        params = {"FunctionName": function, **({"Qualifier": qualifier} if qualifier else {})}
        try:
            policy = json.loads(self.client("lambda").get_policy(**params)["Policy"])
        except ClientError as exc:
            if _not_found(exc):
                return set()
            raise
        return {str(s.get("Sid")) for s in policy.get("Statement", [])}

    def reserved_concurrency(self, function: str) -> int | None:
        found = self.client("lambda").get_function_concurrency(FunctionName=function)
        value = found.get("ReservedConcurrentExecutions")
        return None if value is None else int(value)

    def _provisioned_config(self, function: str, qualifier: str) -> dict[str, Any] | None:
        try:
            return dict(self.client("lambda").get_provisioned_concurrency_config(FunctionName=function,
                                                                                  Qualifier=qualifier))
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise

    def provisioned_concurrency(self, function: str, qualifier: str) -> int | None:
        found = self._provisioned_config(function, qualifier)
        return None if found is None else int(found["RequestedProvisionedConcurrentExecutions"])

    def provisioned_concurrency_status(self, function: str, qualifier: str) -> str | None:
        """E.g. "IN_PROGRESS: 1/2 allocated" (allocation takes minutes after a change)."""
        found = self._provisioned_config(function, qualifier)
        if found is None:
            return None
        return (f"{found.get('Status')}: {found.get('AllocatedProvisionedConcurrentExecutions', 0)}/"
                f"{found['RequestedProvisionedConcurrentExecutions']} allocated")

    def scaling(self, function: str, qualifier: str) -> ScalingState | None:
        scaling = self.client("application-autoscaling")
        resource_id = f"function:{function}:{qualifier}"
        targets = scaling.describe_scalable_targets(ServiceNamespace="lambda", ResourceIds=[resource_id],
                                                    ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]
        if not targets:
            return None
        policies = scaling.describe_scaling_policies(ServiceNamespace="lambda", ResourceId=resource_id,
                                                     ScalableDimension=SCALABLE_DIMENSION)["ScalingPolicies"]
        target_value = next((float(p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"]) for p in policies
                             if p.get("PolicyType") == "TargetTrackingScaling"), None)
        return ScalingState(min=int(targets[0]["MinCapacity"]), max=int(targets[0]["MaxCapacity"]),
                            target_utilization=target_value)

    # -- Lambda: changes ------------------------------------------------------------------------
    def _wait_active(self, name: str) -> None:
        self.client("lambda").get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=LAMBDA_WAIT)

    def _wait_updated(self, name: str) -> None:
        self.client("lambda").get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig=LAMBDA_WAIT)

    def create_function(self, spec: FunctionSpec) -> str:
        """Create from the image, retrying while the new role has not propagated; wait until Active."""
        params = {**_configuration(spec), "PackageType": "Image", "Code": {"ImageUri": spec.image_uri},
                  "Architectures": [spec.architecture], "Tags": dict(spec.tags)}
        created = self.retry_while(f"creating function {spec.name}",
                                   lambda: self.client("lambda").create_function(**params),
                                   iam_not_propagated, IAM_PROPAGATION_TIMEOUT)
        self._wait_active(spec.name)
        return str(created["FunctionArn"])

    def update_function_code(self, spec: FunctionSpec) -> None:
        self.retry_while(f"updating the image of {spec.name}", lambda: self.client("lambda").update_function_code(
            FunctionName=spec.name, ImageUri=spec.image_uri, Architectures=[spec.architecture]),
            resource_conflict, 300)
        self._wait_updated(spec.name)

    def update_function_configuration(self, spec: FunctionSpec) -> None:
        self.retry_while(f"updating the configuration of {spec.name}",
                         lambda: self.client("lambda").update_function_configuration(**_configuration(spec)),
                         lambda exc: iam_not_propagated(exc) or resource_conflict(exc), IAM_PROPAGATION_TIMEOUT)
        self._wait_updated(spec.name)

    def tag_function(self, arn: str, tags: Mapping[str, str]) -> None:
        self.client("lambda").tag_resource(Resource=arn, Tags=dict(tags))

    def publish_version(self, spec: FunctionSpec) -> str:
        """Freeze $LATEST as a numbered version, recording the spec fingerprint in its description."""
        lam = self.client("lambda")
        version = str(lam.publish_version(FunctionName=spec.name, Description=spec.description())["Version"])
        lam.get_waiter("published_version_active").wait(FunctionName=spec.name, Qualifier=version,
                                                        WaiterConfig=LAMBDA_WAIT)
        return version

    def create_alias(self, function: str, name: str, version: str, description: str = "") -> None:
        self.client("lambda").create_alias(FunctionName=function, Name=name, FunctionVersion=version,
                                           Description=description)

    def route_alias(self, function: str, name: str, version: str, weights: Mapping[str, float],
                    description: str) -> None:
        """Point the alias at `version`, sending `weights` shares to other versions (a canary)."""
        self.client("lambda").update_alias(
            FunctionName=function, Name=name, FunctionVersion=version, Description=description,
            RoutingConfig={"AdditionalVersionWeights": {k: float(v) for k, v in weights.items()}})

    def create_function_url(self, function: str, qualifier: str, auth: str, cors: Mapping[str, Any],
                            invoke_mode: str) -> str:
        params: dict[str, Any] = {"FunctionName": function, "Qualifier": qualifier, "AuthType": auth,
                                  "InvokeMode": invoke_mode}
        if cors:
            params["Cors"] = dict(cors)
        return str(self.client("lambda").create_function_url_config(**params)["FunctionUrl"])

    def update_function_url(self, function: str, qualifier: str, auth: str, cors: Mapping[str, Any],
                            invoke_mode: str) -> None:
        self.client("lambda").update_function_url_config(FunctionName=function, Qualifier=qualifier, AuthType=auth,
                                                         Cors=dict(cors), InvokeMode=invoke_mode)

    def add_permission(self, function: str, statement_id: str, action: str, principal: str,
                       qualifier: str | None = None, **conditions: Any) -> None:
        params = {"FunctionName": function, "StatementId": statement_id, "Action": action, "Principal": principal,
                  **({"Qualifier": qualifier} if qualifier else {}), **conditions}
        self.client("lambda").add_permission(**params)

    def remove_permission(self, function: str, statement_id: str, qualifier: str | None = None) -> None:
        params = {"FunctionName": function, "StatementId": statement_id, **({"Qualifier": qualifier} if qualifier else {})}
        self.client("lambda").remove_permission(**params)

    def set_reserved_concurrency(self, function: str, count: int) -> None:
        self.client("lambda").put_function_concurrency(FunctionName=function, ReservedConcurrentExecutions=count)

    def clear_reserved_concurrency(self, function: str) -> None:
        self.client("lambda").delete_function_concurrency(FunctionName=function)

    def set_provisioned_concurrency(self, function: str, qualifier: str, count: int) -> None:
        """Starts allocation; `status` shows progress (READY can take minutes, and bills meanwhile)."""
        self.client("lambda").put_provisioned_concurrency_config(FunctionName=function, Qualifier=qualifier,
                                                                 ProvisionedConcurrentExecutions=count)

    def delete_provisioned_concurrency(self, function: str, qualifier: str) -> None:
        self.client("lambda").delete_provisioned_concurrency_config(FunctionName=function, Qualifier=qualifier)

    def register_scaling(self, function: str, qualifier: str, minimum: int, maximum: int,
                         tags: Mapping[str, str]) -> None:
        self.client("application-autoscaling").register_scalable_target(
            ServiceNamespace="lambda", ResourceId=f"function:{function}:{qualifier}",
            ScalableDimension=SCALABLE_DIMENSION, MinCapacity=minimum, MaxCapacity=maximum, Tags=dict(tags))

    def put_scaling_policy(self, function: str, qualifier: str, policy_name: str, target: float) -> None:
        """Target tracking on `LambdaProvisionedConcurrencyUtilization`: keep usage near `target`."""
        self.client("application-autoscaling").put_scaling_policy(
            PolicyName=policy_name, ServiceNamespace="lambda", ResourceId=f"function:{function}:{qualifier}",
            ScalableDimension=SCALABLE_DIMENSION, PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": target,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "LambdaProvisionedConcurrencyUtilization"}})

    def deregister_scaling(self, function: str, qualifier: str) -> None:
        """Removes the target and its policies (Application Auto Scaling deletes them together)."""
        self.client("application-autoscaling").deregister_scalable_target(
            ServiceNamespace="lambda", ResourceId=f"function:{function}:{qualifier}",
            ScalableDimension=SCALABLE_DIMENSION)

    def sync_model(self, spec: FunctionSpec, arn: str, model: str, version: str) -> ModelSyncResult:
        """Run the model-sync function for `model/version` and wait for it (RequestResponse).

        Syncing is idempotent (a complete version costs no download), so this is safe to repeat.
        On success the function is tagged with `EFS_MODEL_TAG`, which is how the next plan knows
        the version is on EFS; on failure it is not, so the next deploy tries again.
        """
        payload = json.dumps({"version": version}).encode()
        client = self._invoke_client()
        answer = self.retry_while(
            f"running {spec.name}",
            lambda: client.invoke(FunctionName=spec.name, InvocationType="RequestResponse", Payload=payload),
            lambda exc: error_code(exc) in NOT_READY_CODES, EFS_READY_TIMEOUT, first_delay=5.0)
        body = answer["Payload"].read().decode("utf-8", errors="replace")
        try:
            result = json.loads(body or "null")
        except ValueError:
            result = None
        if answer.get("FunctionError"):
            detail = result if isinstance(result, dict) else {}
            kind = detail.get("errorType", answer["FunctionError"])
            reason = f"{kind}: {detail.get('errorMessage', body[:300])}"
            raise ModelSyncError(f"model {model} version {version} could not be synced to EFS: {spec.name} "
                                 f"failed with {reason} (its log group: /aws/lambda/{spec.name}); "
                                 "fix that and deploy again")
        synced = result.get("synced") if isinstance(result, dict) else None
        item = next((i for i in synced or [] if isinstance(i, dict) and i.get("version") == version), None)
        if item is None:
            raise ModelSyncError(f"model {model} version {version}: {spec.name} answered without syncing it "
                                 f"({body[:200]}); its image predates direct sync requests: push a new one")
        report = ModelSyncResult(name=str(item.get("name", model)), version=version,
                                 directory=str(item.get("directory", "")),
                                 downloaded=bool(item.get("downloaded")),
                                 bytes_downloaded=int(item.get("bytes_downloaded", 0)))
        self.progress(f"{model}/{version} is on EFS at {report.directory} ("
                      + (f"downloaded {report.bytes_downloaded / 1e6:.1f} MB)" if report.downloaded
                         else "already complete, nothing downloaded)"))
        self.tag_function(arn, {EFS_MODEL_TAG: efs_model_marker(spec, model, version)})
        return report

    def _invoke_client(self) -> Any:
        return self.client("lambda", slot="lambda-invoke", config=INVOKE_CLIENT_CONFIG)

    def delete_function(self, name: str) -> None:
        """Deletes its versions, aliases, URL and concurrency settings with it."""
        self.client("lambda").delete_function(FunctionName=name)


def _configuration(spec: FunctionSpec) -> dict[str, Any]:
    """The parameters CreateFunction and UpdateFunctionConfiguration share."""
    return {
        "FunctionName": spec.name, "Role": spec.role, "Description": spec.description(),
        "MemorySize": spec.memory_mb, "Timeout": spec.timeout_s,
        "EphemeralStorage": {"Size": spec.ephemeral_storage_mb},
        "Environment": {"Variables": dict(spec.environment)},
        "ImageConfig": {"Command": list(spec.command)},
        "VpcConfig": {"SubnetIds": list(spec.subnet_ids), "SecurityGroupIds": list(spec.security_group_ids)},
        "FileSystemConfigs": [{"Arn": spec.access_point_arn, "LocalMountPath": spec.mount_path}],
    }


def _as_document(value: Any) -> dict[str, Any]:
    """IAM returns documents URL-decoded and parsed by boto3, or as a string from some endpoints."""
    if isinstance(value, str):
        return dict(json.loads(unquote(value)))
    return dict(value)
