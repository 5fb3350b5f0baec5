"""Planning of roles, log groups, both functions, the `live` alias, its URL, concurrency and alarms.

How versions work: a published version is immutable and its description records the
fingerprint of the spec it was made from (`FunctionSpec.fingerprint`). `live` is correct when
its version carries the configured fingerprint; otherwise the newest version that does is
reused, and only if none exists is `$LATEST` updated and a new version published. So `$LATEST`
is a staging area, and a second `deploy` with the same config plans nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from infra.aws_storage import model_notification
from infra.exceptions import DeployError
from infra.plan import PlanBuilder, has_refs
from infra.policies import inference_role_policy, lambda_trust_policy, sync_role_policy
from infra.resources import (
    ALIAS,
    EFS_MODEL_TAG,
    INLINE_POLICY,
    MANIFEST_SUFFIX,
    ROLE_PATH,
    FunctionSpec,
    Stack,
    Value,
    alarm_specs,
    cors_parameters,
    efs_model_marker,
    fingerprint_of,
    inference_spec,
    sync_spec,
)
from infra.state import AliasState, FunctionState, RemoteState

if TYPE_CHECKING:
    from infra.planner import FileSystemIds, NetworkIds

S3_PERMISSION = "s3-model-manifests"
# Since October 2025 a public (NONE) Function URL needs both statements.
PUBLIC_URL_PERMISSIONS: dict[str, dict[str, Any]] = {
    "FunctionURLAllowPublicAccess": {"action": "lambda:InvokeFunctionUrl", "FunctionUrlAuthType": "NONE"},
    "FunctionURLAllowInvokeAction": {"action": "lambda:InvokeFunction", "InvokedViaFunctionUrl": True},
}


class FunctionsPlanning:
    stack: Stack
    remote: RemoteState
    allow_public: bool
    bucket_exists: bool
    b: PlanBuilder

    def plan_roles(self, file_system: FileSystemIds) -> None:
        stack = self.stack
        fs_arn, ap_arn = file_system.file_system_arn, file_system.access_point_arn
        self.plan_role(stack.inference_function, inference_role_policy(stack, fs_arn, ap_arn), "inference")
        self.plan_role(stack.sync_function, sync_role_policy(stack, fs_arn, ap_arn), "model-sync")

    def plan_functions(self, network: NetworkIds, file_system: FileSystemIds,
                       bucket_notifications: tuple[dict[str, Any], ...]) -> None:
        stack = self.stack
        ap_arn = file_system.access_point_arn
        for function in (stack.inference_function, stack.sync_function):
            self.plan_log_group(function)
        sync = sync_spec(stack, network.subnet_ids, network.sync_groups, ap_arn)
        sync_state = self.plan_sync_function(sync, bucket_notifications)
        # Before the inference function: a new version goes live with its model already on EFS.
        self.plan_model_on_efs(sync, sync_state)
        inference = inference_spec(stack, network.subnet_ids, network.inference_groups, ap_arn)
        state = self.remote.function(inference.name)
        alias = self.remote.alias(inference.name, ALIAS) if state else None
        live = self.plan_live_version(inference, state, alias)
        self.plan_url(exists=alias is not None)
        self.plan_reserved_concurrency(state is not None)
        self.plan_provisioned_concurrency(alias is not None)
        canary = alias.canary[0] if alias and alias.canary else live
        self.plan_alarms(canary)

    # -- IAM and logs ---------------------------------------------------------------------------
    def plan_role(self, name: str, policy: dict[str, Any], kind: str) -> None:
        label, stack = f"{kind} role", self.stack
        state = self.remote.role(name)
        trust = lambda_trust_policy(stack)
        if state is None:
            self.b.call(label, f"create IAM role {ROLE_PATH}{name}", "create_role", name=name, path=ROLE_PATH,
                        trust_policy=trust, description=f"breedserve {stack.name}: {kind} function",
                        tags=stack.tags(f"{kind}-role"))
            self.b.call(label, f"attach the least-privilege policy ({_actions(policy)} actions)", "put_role_policy",
                        role=name, policy_name=INLINE_POLICY, policy=policy)
            return
        before = len(self.b.steps)
        if dict(state.trust_policy) != trust:
            self.b.call(label, f"{name}: only Lambda in this account may assume it", "update_trust_policy",
                        name=name, trust_policy=trust)
        if has_refs(policy) or state.inline_policies.get(INLINE_POLICY) != policy:
            self.b.call(label, f"{name}: update the least-privilege policy", "put_role_policy", role=name,
                        policy_name=INLINE_POLICY, policy=policy)
        for extra in sorted(set(state.inline_policies) - {INLINE_POLICY}):
            self.b.call(label, f"{name}: remove inline policy {extra} (not least privilege)", "delete_role_policy",
                        role=name, policy_name=extra)
        if any(state.tags.get(k) != v for k, v in stack.tags(f"{kind}-role").items()):
            self.b.call(label, f"tag {name}", "tag_role", name=name, tags=stack.tags(f"{kind}-role"))
        if len(self.b.steps) == before:
            self.b.unchanged(label, f"{state.arn} ({_actions(policy)} actions)")

    def plan_log_group(self, function: str) -> None:
        name, days = self.stack.log_group(function), self.stack.config.log_retention_days
        state = self.remote.log_group(name)
        if state is None:
            self.b.call("logs", f"create log group {name} ({days} days)", "create_log_group", name=name,
                        retention_days=days, tags=self.stack.tags("log-group"))
        elif state.retention_days != days:
            self.b.call("logs", f"{name}: retention {state.retention_days} -> {days} days", "set_log_retention",
                        name=name, retention_days=days)
        else:
            self.b.unchanged("logs", f"{name} ({days} days)")

    # -- functions ------------------------------------------------------------------------------
    def plan_function_update(self, spec: FunctionSpec, state: FunctionState | None, label: str) -> bool:
        """Create, or bring `$LATEST` to `spec`; returns True when a step was planned."""
        if state is None:
            self.b.call(label, f"create function {spec.name} ({spec.architecture}, {spec.memory_mb} MB, "
                        f"{spec.timeout_s} s, image {spec.image_uri})", "create_function", spec=spec)
            return True
        changed = False
        if has_refs(spec):
            why = ["network or file system ids change"]
        else:
            why = spec.differences(state)
        if why and spec.code_changed(state):
            self.b.call(label, f"{spec.name}: image {state.image_uri} -> {spec.image_uri}", "update_function_code",
                        spec=spec)
            changed = True
        if why:
            self.b.call(label, f"{spec.name}: " + "; ".join(why), "update_function_configuration", spec=spec)
            changed = True
        if any(state.tags.get(k) != v for k, v in spec.tags.items()):
            self.b.call(label, f"tag {spec.name}", "tag_function", arn=state.arn, tags=dict(spec.tags))
            changed = True
        return changed

    def plan_sync_function(self, spec: FunctionSpec,
                           notifications: tuple[dict[str, Any], ...]) -> FunctionState | None:
        """Returns the function's current state (None when it is created now)."""
        label, stack = "model-sync function", self.stack
        state = self.remote.function(spec.name)
        if not self.plan_function_update(spec, state, label):
            self.b.unchanged(label, f"{spec.name} (spec {fingerprint_of(state.description) if state else '-'})")
        if state is None or S3_PERMISSION not in self.remote.permission_ids(spec.name):
            self.b.call(label, f"allow S3 bucket {stack.bucket} (this account only) to invoke {spec.name}",
                        "add_permission", function=spec.name, statement_id=S3_PERMISSION,
                        action="lambda:InvokeFunction", principal="s3.amazonaws.com", SourceArn=stack.bucket_arn,
                        SourceAccount=stack.account)
        wanted = model_notification(stack.notification_id, stack.function_arn(spec.name), stack.model_key_prefix,
                                    MANIFEST_SUFFIX)
        current = next((n for n in notifications if n.get("Id") == stack.notification_id), None)
        if current != wanted:
            self.b.call("model bucket", f"on each new {stack.model_key_prefix}*{MANIFEST_SUFFIX}, run {spec.name}",
                        "set_model_notification", bucket=stack.bucket, notification_id=stack.notification_id,
                        function_arn=stack.function_arn(spec.name), prefix=stack.model_key_prefix,
                        suffix=MANIFEST_SUFFIX)
        else:
            self.b.unchanged("model bucket", f"new manifests under {stack.model_key_prefix} trigger {spec.name}")
        return state

    def plan_model_on_efs(self, spec: FunctionSpec, state: FunctionState | None) -> None:
        """Invoke model-sync for the configured version unless the last deploy confirmed it on EFS.

        S3 events sync only versions published after the sync function existed; a version
        published earlier (or a sync that failed) would leave the inference function answering
        503. The planner cannot look into EFS, so `sync_model` tags the sync function with what it
        confirmed (`EFS_MODEL_TAG`: version and sync spec); the step is planned when that tag does
        not match, i.e. on the first deploy, a new configured version, or a changed sync function
        (a new file system, another store). Skipped while the version is not in S3: then its S3
        event will sync it.
        """
        label, stack = "model on EFS", self.stack
        model, version = stack.config.model.name, stack.config.model.version
        key = stack.manifest_key(version)
        if not (self.bucket_exists and self.remote.object_exists(stack.bucket, key)):
            self.b.unchanged(label, f"{model}/{version}: not published yet (no s3://{stack.bucket}/{key})")
            self.b.note(f"model {model} version {version} is not in {stack.store_uri}: the inference "
                        "function answers 503 until you publish it (python -m model_store publish ... "
                        f"--store {stack.store_uri} --name {model} --version {version}); its S3 event then "
                        "syncs it to EFS")
            return
        marker = None if has_refs(spec) else efs_model_marker(spec, model, version)
        confirmed = state.tags.get(EFS_MODEL_TAG) if state else None
        if marker is not None and confirmed == marker:
            self.b.unchanged(label, f"{model}/{version} (confirmed by {spec.name}, "
                                    f"spec {fingerprint_of(marker)})")
            return
        self.b.call(label, f"copy {model}/{version} from S3 to EFS: run {spec.name} and wait for it "
                           f"(last confirmed: {confirmed or 'nothing'})", "sync_model",
                    spec=spec, arn=stack.function_arn(spec.name), model=model, version=version)

    def plan_live_version(self, spec: FunctionSpec, state: FunctionState | None, alias: AliasState | None) -> Value:
        """Make `live` serve `spec`; returns the version it will point at (a `Ref` if published now)."""
        label = "inference function"
        if state is None or alias is None:
            self.plan_function_update(spec, state, label)
            version = self.b.produce(label, f"publish a version of {spec.name}", "publish_version",
                                     output="version", spec=spec)
            self.b.call(label, f"create alias {ALIAS} -> the new version", "create_alias", function=spec.name,
                        name=ALIAS, version=version, description="")
            return version
        fingerprint = None if has_refs(spec) else spec.fingerprint()
        if fingerprint and fingerprint == self._version_fingerprint(spec.name, alias.version):
            tagged = self.plan_tags_only(spec, state, label)
            message = f"{ALIAS} -> version {alias.version} (spec {fingerprint})"
            if alias.canary:
                message += f"; canary: version {alias.canary[0]} gets {alias.canary[1]:.0%}"
            if not tagged:
                self.b.unchanged(label, message)
            return alias.version
        if alias.canary:
            raise DeployError(f"a canary is running on {ALIAS} (version {alias.canary[0]} at {alias.canary[1]:.0%}): "
                              "run `promote` or `rollback` before deploying")
        return self.plan_new_version(spec, state, alias, weights=None)

    def plan_new_version(self, spec: FunctionSpec, state: FunctionState, alias: AliasState,
                         weights: float | None) -> Value:
        """Reuse a published version with `spec`'s fingerprint, or stage and publish one; then route
        `live` to it fully (`weights=None`) or as a canary receiving that share of traffic."""
        label = "inference function"
        fingerprint = None if has_refs(spec) else spec.fingerprint()
        existing = [v.version for v in self.remote.versions(spec.name)
                    if fingerprint and fingerprint_of(v.description) == fingerprint]
        if existing:
            version: Value = existing[-1]
            self.b.unchanged(label, f"version {version} already has spec {fingerprint}")
        else:
            self.plan_function_update(spec, state, label)
            version = self.b.produce(label, f"publish a version of {spec.name}", "publish_version",
                                     output="version", spec=spec)
        if weights is None:
            self.b.call(label, f"route {ALIAS}: version {alias.version} -> {version}", "route_alias", function=spec.name,
                        name=ALIAS, version=version, weights={}, description=f"previous version {alias.version}")
        else:
            self.b.call(label, f"route {ALIAS}: {weights:.0%} to version {version}, the rest to {alias.version}",
                        "route_alias", function=spec.name, name=ALIAS, version=alias.version,
                        weights={version: weights}, description=alias.description)
        return version

    def plan_tags_only(self, spec: FunctionSpec, state: FunctionState, label: str) -> bool:
        if all(state.tags.get(k) == v for k, v in spec.tags.items()):
            return False
        self.b.call(label, f"tag {spec.name}", "tag_function", arn=state.arn, tags=dict(spec.tags))
        return True

    def _version_fingerprint(self, function: str, version: str) -> str | None:
        for item in self.remote.versions(function):
            if item.version == version:
                return fingerprint_of(item.description)
        return None

    # -- URL, concurrency, alarms ---------------------------------------------------------------
    def plan_url(self, exists: bool) -> None:
        config, stack, label = self.stack.config.url, self.stack, "function URL"
        function = stack.inference_function
        if config.auth == "NONE":
            if not self.allow_public:
                raise DeployError("url.auth = \"NONE\" makes the endpoint public: pass --allow-public to confirm")
            self.b.note("WARNING: the Function URL is public (auth NONE): anyone can call it and you pay for "
                        "every request; keep reserved_concurrency low")
        cors = cors_parameters(stack)
        state = self.remote.function_url(function, ALIAS) if exists else None
        if state is None:
            self.b.produce(label, f"create the Function URL on {function}:{ALIAS} (auth {config.auth})",
                           "create_function_url", output="url", function=function, qualifier=ALIAS, auth=config.auth,
                        cors=cors, invoke_mode=config.invoke_mode)
        elif (state.auth, _cors_key(state.cors), state.invoke_mode) != (config.auth, _cors_key(cors), config.invoke_mode):
            self.b.call(label, f"update the Function URL (auth {state.auth} -> {config.auth}, CORS, {config.invoke_mode})",
                        "update_function_url", function=function, qualifier=ALIAS, auth=config.auth, cors=cors,
                        invoke_mode=config.invoke_mode)
        else:
            self.b.unchanged(label, f"{state.url} (auth {state.auth})")
        present = self.remote.permission_ids(function, ALIAS) if exists else set()
        for sid, permission in PUBLIC_URL_PERMISSIONS.items():
            extra = {k: v for k, v in permission.items() if k != "action"}
            if config.auth == "NONE" and sid not in present:
                self.b.call(label, f"allow anyone to call the URL ({permission['action']})", "add_permission",
                            function=function, statement_id=sid, action=permission["action"], principal="*",
                            qualifier=ALIAS, **extra)
            elif config.auth != "NONE" and sid in present:
                self.b.call(label, f"remove public permission {sid}", "remove_permission", function=function,
                            statement_id=sid, qualifier=ALIAS)

    def plan_reserved_concurrency(self, exists: bool) -> None:
        function = self.stack.inference_function
        wanted = self.stack.config.function.reserved_concurrency or None
        current = self.remote.reserved_concurrency(function) if exists else None
        if wanted == current:
            self.b.unchanged("concurrency", f"reserved concurrency: {wanted or 'none (account pool)'}")
        elif wanted is None:
            self.b.call("concurrency", f"{function}: remove reserved concurrency ({current})", "clear_reserved_concurrency",
                        function=function)
        else:
            self.b.call("concurrency", f"{function}: reserve {wanted} concurrent executions (caps cost and blast radius)",
                        "set_reserved_concurrency", function=function, count=wanted)

    def plan_provisioned_concurrency(self, alias_exists: bool) -> None:
        config, function, label = self.stack.config.provisioned, self.stack.inference_function, "concurrency"
        scaling = self.remote.scaling(function, ALIAS) if alias_exists else None
        if not config.enabled:
            # deploy only ever provisions together with a scalable target, so no target means
            # nothing is provisioned (and no per-hour charge is running).
            if scaling is None:
                self.b.unchanged(label, "provisioned concurrency: off")
            else:
                self.b.call(label, "stop scaling provisioned concurrency", "deregister_scaling", function=function,
                            qualifier=ALIAS)
                self.b.call(label, "remove provisioned concurrency (stops its hourly charge)",
                            "delete_provisioned_concurrency", function=function, qualifier=ALIAS)
            return
        before = len(self.b.steps)
        current = self.remote.provisioned_concurrency(function, ALIAS) if alias_exists else None
        if current is None:
            self.b.call(label, f"provision {config.min} warm environments on {ALIAS} (billed hourly)",
                        "set_provisioned_concurrency", function=function, qualifier=ALIAS, count=config.min)
        if scaling is None or (scaling.min, scaling.max) != (config.min, config.max):
            self.b.call(label, f"scale provisioned concurrency between {config.min} and {config.max}", "register_scaling",
                        function=function, qualifier=ALIAS, minimum=config.min, maximum=config.max,
                        tags=self.stack.tags("scalable-target"))
        if scaling is None or scaling.target_utilization != config.target_utilization:
            self.b.call(label, f"target {config.target_utilization:.0%} utilisation (LambdaProvisionedConcurrencyUtilization)",
                        "put_scaling_policy", function=function, qualifier=ALIAS, policy_name=self.stack.scaling_policy,
                        target=config.target_utilization)
        if len(self.b.steps) == before:
            self.b.unchanged(label, f"provisioned concurrency {config.min}-{config.max} at "
                                    f"{config.target_utilization:.0%} target utilisation")

    def plan_alarms(self, canary_version: Value) -> None:
        specs = alarm_specs(self.stack, canary_version)
        existing = self.remote.alarms([s.name for s in specs])
        for spec in specs:
            state = existing.get(spec.name)
            if state is None:
                self.b.call("alarms", f"create alarm {spec.name}", "put_alarm", spec=spec)
            elif has_refs(spec) or dict(state.definition) != dict(spec.definition):
                self.b.call("alarms", f"update alarm {spec.name}", "put_alarm", spec=spec)
            else:
                self.b.unchanged("alarms", f"{spec.name} ({state.state})")


def _cors_key(cors: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """CORS blocks compare equal whatever the order of lists or absent false/empty fields."""
    items = []
    for key, value in cors.items():
        if value in (None, False, [], ""):
            continue
        items.append((key, tuple(sorted(str(v).lower() for v in value)) if isinstance(value, list) else value))
    return tuple(sorted(items))


def _actions(policy: Mapping[str, Any]) -> int:
    return sum(len(s["Action"]) if isinstance(s["Action"], list) else 1 for s in policy["Statement"])

