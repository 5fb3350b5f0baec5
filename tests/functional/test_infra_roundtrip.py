"""The whole lifecycle against moto in server mode, from the shipped example config:
plan -> deploy -> status -> deploy (nothing) -> canary -> promote -> rollback -> watch -> destroy.

moto runs no container: a function with PackageType Image is stored, not started. What moto does
not model (FileSystemConfigs, provisioned concurrency) is covered by the Stubber tests in
tests/unit/test_infra_aws_stubbed.py.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "infra" / "config.example.toml")
STACK_TAG = "breedserve:stack"
FUNCTION = "breedserve-inference"


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main([*args, "--config", EXAMPLE], out=out)
    return code, out.getvalue()


def alias() -> dict[str, Any]:
    found = boto3.client("lambda").get_alias(FunctionName=FUNCTION, Name="live")
    return {"version": found["FunctionVersion"],
            "weights": (found.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}}


def tagged_resources() -> dict[str, list[str]]:
    """Everything in the (moto) account that carries the stack tag, service by service."""
    ec2, efs, lam = boto3.client("ec2"), boto3.client("efs"), boto3.client("lambda")
    iam, logs, cloudwatch = boto3.client("iam"), boto3.client("logs"), boto3.client("cloudwatch")
    s3, ecr = boto3.client("s3"), boto3.client("ecr")
    stack_filter = [{"Name": f"tag:{STACK_TAG}", "Values": ["breedserve"]}]
    return {
        "vpcs": [v["VpcId"] for v in ec2.describe_vpcs(Filters=stack_filter)["Vpcs"]],
        "subnets": [s["SubnetId"] for s in ec2.describe_subnets(Filters=stack_filter)["Subnets"]],
        "groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=stack_filter)["SecurityGroups"]],
        "endpoints": [e["VpcEndpointId"] for e in ec2.describe_vpc_endpoints(Filters=stack_filter)["VpcEndpoints"]
                      if e.get("State", "").lower() not in ("deleted", "deleting")],
        "file systems": [f["FileSystemId"] for f in efs.describe_file_systems()["FileSystems"]
                         if any(t["Key"] == STACK_TAG for t in f.get("Tags", []))],
        "functions": [f["FunctionName"] for f in lam.list_functions()["Functions"]],
        "roles": [r["RoleName"] for r in iam.list_roles(PathPrefix="/breedserve/")["Roles"]],
        "log groups": [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]],
        "alarms": [a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNamePrefix="breedserve-")["MetricAlarms"]],
        "buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]],
        "repositories": [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]],
    }


def test_deploy_release_and_destroy_round_trip(aws_endpoint: str, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an empty (moto) account: plan shows everything and creates nothing
    code, planned = cli("plan")
    assert code == 0 and "+ create S3 bucket breedserve-models-123456789012-us-east-1" in planned
    assert not any(tagged_resources().values())
    # AND release commands refuse, in one line, until something is deployed
    capsys.readouterr()
    for command in (["promote"], ["rollback"], ["canary", "--model-version", "demo-2"]):
        code, _ = cli(*command)
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "run `deploy` first" in err

    # WHEN `push --config` runs first (the engine part is replaced: no registry answers for moto's ECR)
    pushed: list[Any] = []

    def fake_push(request: Any, *, login: Any, out: Any) -> str:
        pushed.append((request, login()))
        return f"{request.repository}@sha256:{'0' * 64}"

    monkeypatch.setattr("infra.cli.push_image", fake_push)
    code, uri = cli("push")
    # THEN it created the stack's ECR repository and pushed there for the config's architecture,
    # logging in with an ECR authorization token
    (request, (user, password, registry)), = pushed
    assert code == 0 and uri.strip().startswith("123456789012.dkr.ecr.us-east-1.amazonaws.com/breedserve@sha256:")
    assert (request.repository, request.platform) == ("123456789012.dkr.ecr.us-east-1.amazonaws.com/breedserve",
                                                      "linux/amd64")
    assert user == "AWS" and password and registry.startswith("https://123456789012.dkr.ecr")
    assert tagged_resources()["repositories"] == ["breedserve"]

    # WHEN deployed from the example config
    code, deployed = cli("deploy")
    # THEN every resource exists, progress was shown per step, and the URL printed
    assert code == 0 and "[1/" in deployed and "Function URL: https://" in deployed
    found = tagged_resources()
    assert len(found["subnets"]) == 2 and len(found["groups"]) == 3 and len(found["endpoints"]) == 1
    assert sorted(found["functions"]) == [FUNCTION, "breedserve-model-sync"] and len(found["alarms"]) == 4
    assert alias() == {"version": "1", "weights": {}}
    config = boto3.client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]
    assert config["Environment"]["Variables"]["MODEL_VERSION"] == "demo-1" and config["MemorySize"] == 3008

    # WHEN status is asked
    code, status = cli("status")
    # THEN it shows the resources, the alias routing, concurrency and the URL
    assert code == 0 and "alias live      version 1 (model demo-1" in status
    assert "reserved 10; provisioned off" in status and "(auth AWS_IAM)" in status and "missing" not in status

    # WHEN deployed again with the same config
    code, again = cli("deploy")
    # THEN nothing is planned
    assert code == 0 and "Nothing to do" in again and "[1/" not in again

    # WHEN a canary of model demo-2 takes 20%, is promoted, then rolled back
    assert cli("canary", "--weight", "0.2", "--model-version", "demo-2")[0] == 0
    assert alias() == {"version": "1", "weights": {"2": 0.2}}
    assert cli("promote")[0] == 0
    assert alias() == {"version": "2", "weights": {}}
    assert cli("rollback")[0] == 0
    # THEN live is back on version 1 alone
    assert alias() == {"version": "1", "weights": {}}

    # WHEN a canary runs and its error-rate alarm fires while being watched
    assert cli("canary", "--weight", "0.1", "--model-version", "demo-2")[0] == 0
    boto3.client("cloudwatch").set_alarm_state(AlarmName="breedserve-canary-error-rate", StateValue="ALARM",
                                               StateReason="test: canary errors")
    code, watched = cli("canary", "--weight", "0.1", "--model-version", "demo-2", "--watch", "1",
                        "--poll-seconds", "0.1")
    # THEN it rolled back by itself and said so with a non-zero exit
    assert code == 1 and "rolling back" in watched and "rolled back" in capsys.readouterr().err
    assert alias() == {"version": "1", "weights": {}}

    # WHEN destroyed without --delete-data
    code, destroyed = cli("destroy", "--yes")
    # THEN only the model bucket and image repository are left, and it says how to remove them
    assert code == 0 and "--delete-data" in destroyed
    left = {kind: names for kind, names in tagged_resources().items() if names}
    assert left == {"buckets": ["breedserve-models-123456789012-us-east-1"], "repositories": ["breedserve"]}

    # WHEN destroyed with --delete-data
    assert cli("destroy", "--yes", "--delete-data")[0] == 0
    # THEN no resource of the stack remains, and a further destroy has nothing to do
    assert not any(tagged_resources().values())
    code, empty = cli("destroy", "--yes")
    assert code == 0 and "Nothing to do" in empty

