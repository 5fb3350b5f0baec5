"""The façade's exact requests, checked with botocore's Stubber, for what moto does not model:
FileSystemConfigs (moto drops them), provisioned concurrency (not implemented), the scaling
policy, Function URL CORS, public-URL permissions, and the IAM-propagation retry."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from test_infra_fakes import make_stack

from infra.aws import AWS
from infra.exceptions import CredentialsError, ModelSyncError
from infra.resources import EFS_MODEL_TAG, inference_spec, sync_spec

AP = "arn:aws:elasticfilesystem:us-east-1:123456789012:access-point/fsap-0abc"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:demo-inference"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


@pytest.fixture
def aws(time_: FakeTime) -> AWS:
    return AWS("us-east-1", session=boto3.Session(region_name="us-east-1"), sleep=time_.sleep, clock=time_.clock)


def stubbed_lambda(aws: AWS, slot: str) -> Iterator[Stubber]:
    """A stubbed Lambda client put in the façade's client slot `slot`; every queued response must be used."""
    client = boto3.client("lambda", region_name="us-east-1")
    aws._clients[slot] = client
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


@pytest.fixture
def lambda_stub(aws: AWS) -> Iterator[Stubber]:
    yield from stubbed_lambda(aws, "lambda")


def spec() -> Any:
    return inference_spec(make_stack(), ("subnet-0a", "subnet-0b"), ("sg-0f",), AP)


def configuration(state: str = "Active", update: str = "Successful") -> dict[str, Any]:
    return {"FunctionName": "demo-inference", "FunctionArn": FUNCTION_ARN, "State": state, "LastUpdateStatus": update}


def role_not_ready() -> dict[str, Any]:
    return {"service_error_code": "InvalidParameterValueException", "http_status_code": 400,
            "service_message": "The role defined for the function cannot be assumed by Lambda."}


def test_create_function_sends_the_image_vpc_and_efs_mount(aws: AWS, lambda_stub: Stubber) -> None:
    # GIVEN the inference spec
    wanted = spec()
    expected = {
        "FunctionName": "demo-inference", "Role": "arn:aws:iam::123456789012:role/breedserve/demo-inference",
        "Description": f"breedserve inference function, spec {wanted.fingerprint()}", "MemorySize": 3008,
        "Timeout": 30, "EphemeralStorage": {"Size": 512},
        "Environment": {"Variables": {"MODEL_ROOT": "/mnt/models", "MODEL_NAME": "dogbreeds",
                                      "MODEL_VERSION": "demo-1"}},
        "ImageConfig": {"Command": ["handler.app.lambda_handler"]},
        "VpcConfig": {"SubnetIds": ["subnet-0a", "subnet-0b"], "SecurityGroupIds": ["sg-0f"]},
        "FileSystemConfigs": [{"Arn": AP, "LocalMountPath": "/mnt/models"}],
        "PackageType": "Image", "Code": {"ImageUri": wanted.image_uri}, "Architectures": ["x86_64"],
        "Tags": dict(wanted.tags),
    }
    lambda_stub.add_response("create_function", configuration("Pending"), expected)
    lambda_stub.add_response("get_function", {"Configuration": configuration("Active")}, {"FunctionName": "demo-inference"})
    # WHEN created
    arn = aws.create_function(wanted)
    # THEN the request carried exactly those parameters, and the façade waited for Active
    assert arn == FUNCTION_ARN


def test_create_function_retries_while_the_new_role_propagates(aws: AWS, lambda_stub: Stubber,
                                                               time_: FakeTime) -> None:
    # GIVEN Lambda refusing the new role twice
    for _ in range(2):
        lambda_stub.add_client_error("create_function", **role_not_ready())
    lambda_stub.add_response("create_function", configuration())
    lambda_stub.add_response("get_function", {"Configuration": configuration()})
    # WHEN the function is created
    aws.create_function(spec())
    # THEN it succeeded on the third try after backing off 2 s then 4 s
    assert time_.sleeps == [2.0, 4.0]


def test_create_function_gives_up_after_the_propagation_budget(aws: AWS, lambda_stub: Stubber,
                                                               time_: FakeTime) -> None:
    # GIVEN a role that never becomes assumable (11 refusals: the stub fails the test on a 12th call)
    for _ in range(11):
        lambda_stub.add_client_error("create_function", **role_not_ready())
    # WHEN creating the function
    with pytest.raises(ClientError, match="cannot be assumed"):
        aws.create_function(spec())
    # THEN it backed off exponentially, capped at 15 s, and stopped within its 120 s budget
    assert time_.sleeps == [2.0, 4.0, 8.0] + [15.0] * 7 and sum(time_.sleeps) <= 120


def test_other_create_errors_are_not_retried(aws: AWS, lambda_stub: Stubber, time_: FakeTime) -> None:
    # GIVEN an error that is not about propagation
    lambda_stub.add_client_error("create_function", "ResourceConflictException", "Function already exist")
    # WHEN creating
    # THEN it fails at once
    with pytest.raises(ClientError, match="already exist"):
        aws.create_function(spec())
    assert time_.sleeps == []


def test_update_configuration_sends_the_mount_and_waits_for_the_update(aws: AWS, lambda_stub: Stubber) -> None:
    # GIVEN a spec with a new memory size
    wanted = spec()
    lambda_stub.add_response("update_function_configuration", configuration(update="InProgress"), {
        "FunctionName": "demo-inference", "Role": wanted.role, "Description": wanted.description(),
        "MemorySize": 3008, "Timeout": 30, "EphemeralStorage": {"Size": 512},
        "Environment": {"Variables": dict(wanted.environment)}, "ImageConfig": {"Command": list(wanted.command)},
        "VpcConfig": {"SubnetIds": ["subnet-0a", "subnet-0b"], "SecurityGroupIds": ["sg-0f"]},
        "FileSystemConfigs": [{"Arn": AP, "LocalMountPath": "/mnt/models"}]})
    lambda_stub.add_response("get_function", {"Configuration": configuration(update="Successful")})
    # WHEN updated
    # THEN the request matches and the waiter saw the update finish
    aws.update_function_configuration(wanted)


def test_provisioned_concurrency_is_set_read_and_deleted_on_the_alias(aws: AWS, lambda_stub: Stubber) -> None:
    # GIVEN the provisioned-concurrency calls moto does not implement
    lambda_stub.add_response("put_provisioned_concurrency_config", {"RequestedProvisionedConcurrentExecutions": 2},
                             {"FunctionName": "demo-inference", "Qualifier": "live",
                              "ProvisionedConcurrentExecutions": 2})
    lambda_stub.add_response("get_provisioned_concurrency_config",
                             {"RequestedProvisionedConcurrentExecutions": 2, "Status": "IN_PROGRESS"},
                             {"FunctionName": "demo-inference", "Qualifier": "live"})
    lambda_stub.add_client_error("get_provisioned_concurrency_config", "ProvisionedConcurrencyConfigNotFoundException",
                                 "No Provisioned Concurrency Config found", 404)
    lambda_stub.add_response("delete_provisioned_concurrency_config", {},
                             {"FunctionName": "demo-inference", "Qualifier": "live"})
    # WHEN set, read, read when absent, and deleted
    aws.set_provisioned_concurrency("demo-inference", "live", 2)
    requested = aws.provisioned_concurrency("demo-inference", "live")
    absent = aws.provisioned_concurrency("demo-inference", "live")
    aws.delete_provisioned_concurrency("demo-inference", "live")
    # THEN the requested count is read back, and absence is None rather than an error
    assert (requested, absent) == (2, None)


def test_scaling_uses_target_tracking_on_provisioned_utilization(aws: AWS) -> None:
    # GIVEN a stubbed Application Auto Scaling client
    client = boto3.client("application-autoscaling", region_name="us-east-1")
    aws._clients["application-autoscaling"] = client
    with Stubber(client) as stub:
        stub.add_response("register_scalable_target", {}, {
            "ServiceNamespace": "lambda", "ResourceId": "function:demo-inference:live",
            "ScalableDimension": "lambda:function:ProvisionedConcurrency", "MinCapacity": 1, "MaxCapacity": 5,
            "Tags": {"breedserve:stack": "demo"}})
        stub.add_response("put_scaling_policy", {"PolicyARN": "arn:p", "Alarms": []}, {
            "PolicyName": "demo-provisioned-utilization", "ServiceNamespace": "lambda",
            "ResourceId": "function:demo-inference:live", "ScalableDimension": "lambda:function:ProvisionedConcurrency",
            "PolicyType": "TargetTrackingScaling", "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": 0.7,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "LambdaProvisionedConcurrencyUtilization"}}})
        # WHEN scaling is registered and its policy put
        aws.register_scaling("demo-inference", "live", 1, 5, {"breedserve:stack": "demo"})
        aws.put_scaling_policy("demo-inference", "live", "demo-provisioned-utilization", 0.7)
        # THEN both requests match exactly
        stub.assert_no_pending_responses()


def test_function_url_is_created_on_the_alias_with_cors(aws: AWS, lambda_stub: Stubber) -> None:
    # GIVEN a CORS block
    cors = {"AllowOrigins": ["https://dogs.example"], "AllowMethods": ["POST"], "MaxAge": 300}
    lambda_stub.add_response("create_function_url_config", {
        "FunctionUrl": "https://abc.lambda-url.us-east-1.on.aws/", "FunctionArn": FUNCTION_ARN, "AuthType": "AWS_IAM",
        "CreationTime": "2026-01-01T00:00:00Z"},
        {"FunctionName": "demo-inference", "Qualifier": "live", "AuthType": "AWS_IAM", "InvokeMode": "BUFFERED",
         "Cors": cors})
    # WHEN the URL is created
    url = aws.create_function_url("demo-inference", "live", "AWS_IAM", cors, "BUFFERED")
    # THEN it is on the alias with exactly that CORS block
    assert url.startswith("https://abc.lambda-url")


def test_a_public_url_permission_names_the_function_url_condition(aws: AWS, lambda_stub: Stubber) -> None:
    # GIVEN the second statement a public URL needs since October 2025
    lambda_stub.add_response("add_permission", {"Statement": "{}"}, {
        "FunctionName": "demo-inference", "StatementId": "FunctionURLAllowInvokeAction",
        "Action": "lambda:InvokeFunction", "Principal": "*", "Qualifier": "live", "InvokedViaFunctionUrl": True})
    # WHEN added
    # THEN it is scoped to invocations through the URL
    aws.add_permission("demo-inference", "FunctionURLAllowInvokeAction", "lambda:InvokeFunction", "*",
                       qualifier="live", InvokedViaFunctionUrl=True)


def test_missing_credentials_are_one_clear_error(aws: AWS, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN no credentials anywhere
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    fresh = AWS("us-east-1", session=boto3.Session(region_name="us-east-1"))
    # WHEN the account is needed
    # THEN the error says how to provide credentials
    with pytest.raises(CredentialsError, match="no AWS credentials found"):
        fresh.account_id()


# -- model-sync, run by deploy for the configured version (moto cannot run image functions) ---------

SYNC_ARN = "arn:aws:lambda:us-east-1:123456789012:function:demo-model-sync"


def sync_fn() -> Any:
    return sync_spec(make_stack(), ("subnet-0a", "subnet-0b"), ("sg-0f",), AP)


@pytest.fixture
def invoke_stub(aws: AWS) -> Iterator[Stubber]:
    """The long-read-timeout client the façade keeps for synchronous invocations."""
    yield from stubbed_lambda(aws, "lambda-invoke")


def invoked(payload: dict[str, Any], function_error: str | None = None) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    answer: dict[str, Any] = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(body), len(body)),
                              "ExecutedVersion": "$LATEST"}
    if function_error:
        answer["FunctionError"] = function_error
    return answer


SYNC_REQUEST = {"FunctionName": "demo-model-sync", "InvocationType": "RequestResponse",
                "Payload": b'{"version": "demo-1"}'}


def test_sync_model_invokes_synchronously_reports_and_records_the_confirmation(
        aws: AWS, invoke_stub: Stubber, lambda_stub: Stubber) -> None:
    # GIVEN model-sync answering that it downloaded demo-1
    spec = sync_fn()
    invoke_stub.add_response("invoke", invoked({"synced": [
        {"name": "dogbreeds", "version": "demo-1", "directory": "/mnt/models/dogbreeds/versions/demo-1",
         "downloaded": True, "bytes_downloaded": 97_800_000}], "ignored": 0}), SYNC_REQUEST)
    lambda_stub.add_response("tag_resource", {}, {"Resource": SYNC_ARN, "Tags": {
        EFS_MODEL_TAG: f"dogbreeds/demo-1 spec {spec.fingerprint()}"}})
    progress: list[str] = []
    aws.progress = progress.append
    # WHEN the façade syncs the configured version
    result = aws.sync_model(spec, SYNC_ARN, "dogbreeds", "demo-1")
    # THEN it invoked RequestResponse with the version, tagged the function, and reported the download
    assert (result.version, result.downloaded, result.bytes_downloaded) == ("demo-1", True, 97_800_000)
    assert progress == ["dogbreeds/demo-1 is on EFS at /mnt/models/dogbreeds/versions/demo-1 (downloaded 97.8 MB)"]


def test_the_invoke_client_outlasts_the_longest_function_and_never_retries_a_read(aws: AWS) -> None:
    # GIVEN the client used for synchronous invocations
    config = aws._invoke_client().meta.config
    # THEN a 15-minute function can finish before the read times out, and a timed-out read is not resent
    assert config.read_timeout > 900 and config.retries["total_max_attempts"] == 1


def test_a_failing_sync_is_an_error_naming_the_version_and_the_functions_message(
        aws: AWS, invoke_stub: Stubber, lambda_stub: Stubber) -> None:
    # GIVEN model-sync raising (Lambda reports an unhandled function error with the exception)
    invoke_stub.add_response("invoke", invoked({
        "errorType": "StoreError", "errorMessage": "s3://demo-models/models/dogbreeds/demo-1/manifest.json: "
                                                  "AccessDenied", "stackTrace": []}, "Unhandled"), SYNC_REQUEST)
    # WHEN syncing
    # THEN the error names the version, the function and its message, and nothing is tagged
    with pytest.raises(ModelSyncError) as failed:
        aws.sync_model(sync_fn(), SYNC_ARN, "dogbreeds", "demo-1")
    message = str(failed.value)
    assert "version demo-1" in message and "demo-model-sync failed with StoreError" in message
    assert "AccessDenied" in message and "/aws/lambda/demo-model-sync" in message


def test_an_image_that_ignores_direct_requests_is_an_error(aws: AWS, invoke_stub: Stubber,
                                                           lambda_stub: Stubber) -> None:
    # GIVEN an old image whose handler only knows S3 events (it answers "nothing synced")
    invoke_stub.add_response("invoke", invoked({"synced": [], "ignored": 0}), SYNC_REQUEST)
    # WHEN syncing
    # THEN the deploy says so instead of recording the version as on EFS
    with pytest.raises(ModelSyncError, match="answered without syncing it.*push a new one"):
        aws.sync_model(sync_fn(), SYNC_ARN, "dogbreeds", "demo-1")


def test_sync_model_waits_while_the_new_functions_efs_mount_is_not_reachable(
        aws: AWS, invoke_stub: Stubber, lambda_stub: Stubber, time_: FakeTime) -> None:
    # GIVEN a just-created VPC function whose EFS mount targets are not reachable yet, twice
    for _ in range(2):
        invoke_stub.add_client_error("invoke", "EFSMountConnectivityException", "Lambda cannot connect to EFS", 408,
                                     expected_params=SYNC_REQUEST)
    invoke_stub.add_response("invoke", invoked({"synced": [
        {"name": "dogbreeds", "version": "demo-1", "directory": "/mnt/models/dogbreeds/versions/demo-1",
         "downloaded": False, "bytes_downloaded": 0}]}), SYNC_REQUEST)
    lambda_stub.add_response("tag_resource", {})
    # WHEN syncing
    result = aws.sync_model(sync_fn(), SYNC_ARN, "dogbreeds", "demo-1")
    # THEN it retried after 5 s and 10 s, and then succeeded
    assert time_.sleeps == [5.0, 10.0] and result.downloaded is False


def test_object_exists_lists_the_exact_key_without_reading_it(aws: AWS) -> None:
    # GIVEN S3 listing a longer key first for one prefix, and the exact key for another
    client = boto3.client("s3", region_name="us-east-1")
    aws._clients["s3"] = client
    aws._account = "123456789012"
    key = "models/dogbreeds/demo-1/manifest.json"
    with Stubber(client) as stub:
        stub.add_response("list_objects_v2", {"Contents": [{"Key": key + ".tmp"}]},
                          {"Bucket": "b", "Prefix": key, "MaxKeys": 1, "ExpectedBucketOwner": "123456789012"})
        stub.add_response("list_objects_v2", {"Contents": [{"Key": key}]})
        # WHEN asked twice
        # THEN only the exact key counts (a listing needs only s3:ListBucket, which the deployer has)
        assert (aws.object_exists("b", key), aws.object_exists("b", key)) == (False, True)
