"""The desired state: every resource `deploy` owns, derived from the config and the account.

Names, ARNs and tags are decided here and nowhere else, so the planner, `destroy`, `status`,
the IAM policies and the tests agree on them. Values that AWS only knows once a resource exists
(subnet ids, the access point ARN) may be `Ref`s while planning; `FunctionSpec.fingerprint()`
needs them resolved, which is why the façade computes the description at execution time.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from infra.config import STACK_TAG, Config
from infra.exceptions import ConfigError
from infra.plan import Ref, has_refs
from infra.state import FunctionState

RESOURCE_TAG = "breedserve:resource"
ALIAS = "live"
ROLE_PATH = "/breedserve/"
INLINE_POLICY = "breedserve-least-privilege"
INFERENCE_COMMAND = ("handler.app.lambda_handler",)
SYNC_COMMAND = ("handler.sync_app.lambda_handler",)
MANIFEST_SUFFIX = "/manifest.json"
# The model-sync function's tag recording what the last deploy confirmed on EFS: "<model>/<version>
# spec <sync spec fingerprint>". The planner compares it, so a deploy invokes model-sync only when
# the configured version, or where and how model-sync writes, changed since that confirmation.
EFS_MODEL_TAG = "breedserve:efs-model"
# How a published version records the spec it was made from (versions are immutable, so this
# record cannot drift): "... spec 0123456789ab".
_FINGERPRINT_RE = re.compile(r"\bspec ([0-9a-f]{12})\b")

Value = str | Ref


@dataclass(frozen=True)
class Stack:
    """One deployment: the validated config plus the account it goes to."""

    config: Config
    account: str

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def region(self) -> str:
        return self.config.region

    def tags(self, resource: str) -> dict[str, str]:
        """User tags + the stack tag `destroy` searches for + which resource this is."""
        return {**self.config.tags, STACK_TAG: self.name, RESOURCE_TAG: resource}

    # -- names ---------------------------------------------------------------------------------
    @property
    def bucket(self) -> str:
        name = self.config.model.bucket or f"{self.name}-models-{self.account}-{self.region}"
        if len(name) > 63:
            raise ConfigError(f"the default bucket name {name!r} is longer than 63 characters: set model.bucket")
        return name

    @property
    def store_uri(self) -> str:
        return f"s3://{self.bucket}/{self.config.model.prefix}"

    @property
    def model_key_prefix(self) -> str:
        """Where the configured model's versions live in the bucket: `<prefix>/<name>/`."""
        return f"{self.config.model.prefix}/{self.config.model.name}/"

    def manifest_key(self, version: str) -> str:
        """The S3 key `publish` writes last for a version: its presence means the version is complete."""
        return f"{self.model_key_prefix}{version}{MANIFEST_SUFFIX}"

    @property
    def repository(self) -> str:
        return self.config.repository_name

    @property
    def inference_function(self) -> str:
        return f"{self.name}-inference"

    @property
    def sync_function(self) -> str:
        return f"{self.name}-model-sync"

    @property
    def file_system_token(self) -> str:
        """The EFS creation token: makes `create_file_system` idempotent across retries."""
        return f"{self.name}-models"

    def log_group(self, function: str) -> str:
        return f"/aws/lambda/{function}"

    def alarm(self, kind: str) -> str:
        return f"{self.name}-{kind}"

    @property
    def scaling_policy(self) -> str:
        return f"{self.name}-provisioned-utilization"

    @property
    def notification_id(self) -> str:
        return f"{self.name}-model-sync"

    # -- ARNs ----------------------------------------------------------------------------------
    def role_arn(self, function: str) -> str:
        return f"arn:aws:iam::{self.account}:role{ROLE_PATH}{function}"

    def function_arn(self, function: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{function}"

    def log_group_arn(self, function: str) -> str:
        return f"arn:aws:logs:{self.region}:{self.account}:log-group:{self.log_group(function)}"

    @property
    def bucket_arn(self) -> str:
        return f"arn:aws:s3:::{self.bucket}"

    def subnet_cidrs(self) -> tuple[str, str]:
        """Two /20 (or smaller) blocks at the start of the VPC range, one per availability zone."""
        network = ipaddress.ip_network(self.config.network.cidr)
        prefix = min(network.prefixlen + 4, 28)
        first, second = list(network.subnets(new_prefix=prefix))[:2]
        return str(first), str(second)


@dataclass(frozen=True)
class FunctionSpec:
    """Everything that defines a function's configuration; a published version freezes it."""

    name: str
    kind: str
    role: str
    image_uri: str
    command: tuple[str, ...]
    architecture: str
    memory_mb: int
    timeout_s: int
    ephemeral_storage_mb: int
    environment: Mapping[str, str]
    subnet_ids: tuple[Value, ...]
    security_group_ids: tuple[Value, ...]
    access_point_arn: Value
    mount_path: str
    tags: Mapping[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """12 hex digits over every setting (not the name or tags); needs no `Ref` left."""
        data = asdict(self)
        for key in ("name", "tags"):
            data.pop(key)
        if has_refs(self):
            raise ValueError("fingerprint() needs a resolved spec")
        canonical = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def description(self) -> str:
        return f"breedserve {self.kind} function, spec {self.fingerprint()}"

    def differences(self, state: FunctionState) -> list[str]:
        """What differs from the reported configuration, in words; unreported fields are skipped."""
        changes: list[str] = []

        def compare(label: str, want: Any, have: Any) -> None:
            if have is not None and want != have:
                changes.append(f"{label} {_short(have)} -> {_short(want)}")

        compare("image", self.image_uri, state.image_uri)
        compare("command", self.command, state.command)
        compare("architecture", self.architecture, state.architecture)
        compare("memory", self.memory_mb, state.memory_mb)
        compare("timeout", self.timeout_s, state.timeout_s)
        compare("ephemeral storage", self.ephemeral_storage_mb, state.ephemeral_storage_mb)
        compare("role", self.role, state.role)
        for key in sorted(set(self.environment) | set(state.environment)):
            compare(key, self.environment.get(key, "(unset)"), state.environment.get(key, "(unset)"))
        compare("subnets", sorted(map(str, self.subnet_ids)), sorted(state.subnet_ids))
        compare("security groups", sorted(map(str, self.security_group_ids)), sorted(state.security_group_ids))
        compare("file system", ((str(self.access_point_arn), self.mount_path),), state.file_system_configs)
        if fingerprint_of(state.description) != self.fingerprint():
            changes.append(f"spec {fingerprint_of(state.description) or 'unknown'} -> {self.fingerprint()}")
        return changes

    def code_changed(self, state: FunctionState) -> bool:
        """Image and architecture change through UpdateFunctionCode, the rest through configuration."""
        return self.image_uri != state.image_uri or self.architecture != state.architecture


def efs_model_marker(sync: FunctionSpec, model: str, version: str) -> str:
    """The `EFS_MODEL_TAG` value for `model/version` synced by the model-sync function `sync`.

    Tag values hold 256 characters; two maximal names do not fit, and are hashed instead.
    """
    marker = f"{model}/{version} spec {sync.fingerprint()}"
    return marker if len(marker) <= 256 else f"sha256 {hashlib.sha256(marker.encode()).hexdigest()}"


def fingerprint_of(description: str) -> str | None:
    match = _FINGERPRINT_RE.search(description or "")
    return match.group(1) if match else None


def inference_spec(stack: Stack, subnet_ids: tuple[Value, ...], security_group_ids: tuple[Value, ...],
                   access_point_arn: Value, *, image_uri: str | None = None,
                   model_version: str | None = None) -> FunctionSpec:
    """The serving function; `image_uri`/`model_version` override the config for a canary."""
    config = stack.config
    environment = {
        **config.function.environment,
        "MODEL_ROOT": config.efs.mount_path,
        "MODEL_NAME": config.model.name,
        "MODEL_VERSION": model_version or config.model.version,
    }
    return FunctionSpec(
        name=stack.inference_function, kind="inference", role=stack.role_arn(stack.inference_function),
        image_uri=image_uri or config.image.uri, command=INFERENCE_COMMAND,
        architecture=config.image.architecture, memory_mb=config.function.memory_mb,
        timeout_s=config.function.timeout_s, ephemeral_storage_mb=config.function.ephemeral_storage_mb,
        environment=environment, subnet_ids=subnet_ids, security_group_ids=security_group_ids,
        access_point_arn=access_point_arn, mount_path=config.efs.mount_path,
        tags=stack.tags("inference-function"),
    )


def sync_spec(stack: Stack, subnet_ids: tuple[Value, ...], security_group_ids: tuple[Value, ...],
              access_point_arn: Value) -> FunctionSpec:
    """The model-sync function: same image, another CMD, writes to EFS what lands in S3."""
    config = stack.config
    return FunctionSpec(
        name=stack.sync_function, kind="model-sync", role=stack.role_arn(stack.sync_function),
        image_uri=config.image.uri, command=SYNC_COMMAND, architecture=config.image.architecture,
        memory_mb=config.sync.memory_mb, timeout_s=config.sync.timeout_s, ephemeral_storage_mb=512,
        environment={"MODEL_STORE_URI": stack.store_uri, "MODEL_ROOT": config.efs.mount_path,
                     "MODEL_NAME": config.model.name},
        subnet_ids=subnet_ids, security_group_ids=security_group_ids,
        access_point_arn=access_point_arn, mount_path=config.efs.mount_path,
        tags=stack.tags("model-sync-function"),
    )


@dataclass(frozen=True)
class AlarmSpec:
    """One CloudWatch alarm as `put_metric_alarm` parameters (without name and tags)."""

    name: str
    definition: Mapping[str, Any]
    tags: Mapping[str, str]


ALARM_KEYS = ("AlarmDescription", "AlarmActions", "Namespace", "MetricName", "Dimensions", "Statistic",
              "ExtendedStatistic", "Period", "EvaluationPeriods", "DatapointsToAlarm", "Threshold",
              "ComparisonOperator", "TreatMissingData", "Metrics")


def alarm_definition(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable part of an alarm, from `put_metric_alarm` params or `describe_alarms` output."""
    out: dict[str, Any] = {}
    for key in ALARM_KEYS:
        value = raw.get(key)
        if value in (None, [], ""):
            continue
        if key == "Threshold":
            out[key] = float(value)
        elif key == "Dimensions":
            out[key] = sorted(({"Name": d["Name"], "Value": d["Value"]} for d in value), key=lambda d: d["Name"])
        else:
            out[key] = value
    return out


def alarm_specs(stack: Stack, canary_version: Value) -> tuple[AlarmSpec, ...]:
    """Errors, throttles and p99 duration on the alias, and the error rate of its newest version."""
    config = stack.config.alarms
    function = stack.inference_function
    alias_dims = [{"Name": "FunctionName", "Value": function}, {"Name": "Resource", "Value": f"{function}:{ALIAS}"}]
    actions = [config.topic_arn] if config.topic_arn else []
    # DatapointsToAlarm is set although it equals EvaluationPeriods: describe_alarms then reports
    # exactly what was put, and a second deploy finds nothing to change.
    common = {"Namespace": "AWS/Lambda", "Dimensions": alias_dims, "Period": 60,
              "EvaluationPeriods": config.evaluation_periods, "DatapointsToAlarm": config.evaluation_periods,
              "TreatMissingData": "notBreaching",
              "AlarmActions": actions}
    version_dims = [*alias_dims, {"Name": "ExecutedVersion", "Value": canary_version}]

    def metric(metric_id: str, name: str) -> dict[str, Any]:
        return {"Id": metric_id, "ReturnData": False, "MetricStat": {
            "Metric": {"Namespace": "AWS/Lambda", "MetricName": name, "Dimensions": version_dims},
            "Period": 60, "Stat": "Sum"}}

    specs = [
        (stack.alarm("errors"), {**common, "MetricName": "Errors", "Statistic": "Sum",
                                 "Threshold": float(config.errors),
                                 "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                                 "AlarmDescription": f"{function}:{ALIAS} errors per minute"}),
        (stack.alarm("throttles"), {**common, "MetricName": "Throttles", "Statistic": "Sum",
                                    "Threshold": float(config.throttles),
                                    "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                                    "AlarmDescription": f"{function}:{ALIAS} throttled requests per minute"}),
        (stack.alarm("p99-duration"), {**common, "MetricName": "Duration", "ExtendedStatistic": "p99",
                                       "Threshold": float(config.p99_duration_ms),
                                       "ComparisonOperator": "GreaterThanThreshold",
                                       "AlarmDescription": f"{function}:{ALIAS} p99 duration in ms"}),
        (stack.alarm("canary-error-rate"), {
            "AlarmDescription": f"{function}: error rate (%) of the newest version behind {ALIAS}; "
                                "`canary --watch` rolls back when it fires",
            "AlarmActions": actions, "EvaluationPeriods": config.evaluation_periods,
            "DatapointsToAlarm": config.evaluation_periods, "Threshold": float(config.canary_error_rate_percent),
            "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching",
            "Metrics": [metric("errors", "Errors"), metric("invocations", "Invocations"),
                        {"Id": "rate", "Expression": "100 * errors / MAX([invocations, 1])",
                         "Label": "error rate (%)", "ReturnData": True}]}),
    ]
    return tuple(AlarmSpec(name, alarm_definition(definition), stack.tags("alarm")) for name, definition in specs)


def cors_parameters(stack: Stack) -> dict[str, Any]:
    """The Function URL `Cors` block as the API takes it; empty when CORS is off."""
    cors = stack.config.url.cors
    if not cors.allow_origins:
        return {}
    block: dict[str, Any] = {"AllowOrigins": list(cors.allow_origins), "AllowMethods": list(cors.allow_methods),
                             "AllowHeaders": list(cors.allow_headers), "MaxAge": cors.max_age,
                             "AllowCredentials": cors.allow_credentials}
    if cors.expose_headers:
        block["ExposeHeaders"] = list(cors.expose_headers)
    return block


def lifecycle_policy(keep_images: int) -> dict[str, Any]:
    """Expire untagged images after a day and keep only the newest `keep_images` tagged ones."""
    return {"rules": [
        {"rulePriority": 1, "description": "drop untagged layers left by re-pushes",
         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                       "countNumber": 1},
         "action": {"type": "expire"}},
        {"rulePriority": 2, "description": f"keep the newest {keep_images} images",
         "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_images},
         "action": {"type": "expire"}},
    ]}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
