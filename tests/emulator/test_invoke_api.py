"""The RIE-compatible Invoke API path, driven through the real awslambdaric."""

from __future__ import annotations

import json
import re
import time

import boto3
import pytest
from botocore.config import Config

from emulator import Emulator
from tests.emulator.support import HANDLERS, ListLog, Running, http_request, toy_config

INVOKE = "/2015-03-31/functions/function/invocations"


def test_invoke_round_trip_returns_the_handler_result_as_is(toy: Running) -> None:
    # GIVEN a warm toy runtime
    # WHEN an event is posted to the RIE invoke path
    event = {"action": "echo", "nested": {"list": [1, 2.5, "three"], "unicode": "chien 🐕"}}
    reply = http_request(toy.emulator.url, "POST", INVOKE, json.dumps(event).encode())

    # THEN the handler saw exactly that event, and its result comes back unchanged with Lambda's headers
    assert reply.status == 200
    assert reply.headers["X-Amz-Function-Error"] is None
    assert reply.headers["X-Amz-Executed-Version"] == "$LATEST"
    result = json.loads(reply.body)
    assert result["event"] == event
    assert result["request_id"] == reply.headers["X-Amzn-RequestId"]
    assert 0 < result["remaining_ms"] <= 10_000
    assert result["function_arn"].endswith(":function:breedserve")


def test_handler_exception_is_an_unhandled_function_error(toy: Running) -> None:
    # GIVEN a handler that raises
    # WHEN it is invoked
    reply = http_request(toy.emulator.url, "POST", INVOKE, b'{"action": "raise"}')

    # THEN Lambda's shape: 200, X-Amz-Function-Error: Unhandled, and the runtime's error object
    assert reply.status == 200
    assert reply.headers["X-Amz-Function-Error"] == "Unhandled"
    error = json.loads(reply.body)
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "raised on purpose"
    assert error["requestId"] == reply.headers["X-Amzn-RequestId"]
    assert any("toy.py" in frame for frame in error["stackTrace"])


def test_boto3_invoke_works_against_the_emulator(toy: Running) -> None:
    # GIVEN a boto3 Lambda client pointed at the emulator (as one would point it at the official RIE)
    client = boto3.client("lambda", endpoint_url=toy.emulator.url, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}))

    # WHEN it invokes a succeeding and a failing event
    ok = client.invoke(FunctionName="function", Payload=json.dumps({"action": "echo", "n": 7}))
    failed = client.invoke(FunctionName="function", Payload=b'{"action": "raise"}')

    # THEN boto3 reads the result and the function error the way it does from Lambda
    assert ok["StatusCode"] == 200 and "FunctionError" not in ok
    assert json.loads(ok["Payload"].read())["event"] == {"action": "echo", "n": 7}
    assert failed["FunctionError"] == "Unhandled"
    assert json.loads(failed["Payload"].read())["errorType"] == "ValueError"


def test_malformed_json_is_rejected_before_reaching_the_function(toy: Running) -> None:
    # GIVEN the invocation count before
    before = toy.emulator.stats().invocations

    # WHEN the body is not JSON
    reply = http_request(toy.emulator.url, "POST", INVOKE, b"{not json")

    # THEN Lambda's 400 InvalidRequestContentException, and no invocation happened
    assert reply.status == 400
    assert reply.headers["X-Amzn-ErrorType"] == "InvalidRequestContentException"
    assert toy.emulator.stats().invocations == before


def test_request_over_6_mb_gets_413(toy: Running) -> None:
    # GIVEN a payload just over Lambda's 6,291,456-byte synchronous limit
    payload = json.dumps({"action": "echo", "pad": "x" * 6_291_456}).encode()

    # WHEN it is posted
    reply = http_request(toy.emulator.url, "POST", INVOKE, payload)

    # THEN 413 RequestEntityTooLargeException, as Lambda answers
    assert reply.status == 413
    assert reply.headers["X-Amzn-ErrorType"] == "RequestEntityTooLargeException"
    assert "6291456" in json.loads(reply.body)["Message"]


def test_response_over_6_mb_is_a_function_error_and_the_runtime_recovers(toy: Running) -> None:
    # GIVEN a handler returning ~7 MB
    # WHEN it is invoked
    too_big = toy.emulator.invoke({"action": "big"})

    # THEN Lambda's Function.ResponseSizeTooLarge, and the following requests are served again
    assert too_big.error_type == "Function.ResponseSizeTooLarge"
    assert "exceeded maximum allowed payload size (6291556 bytes)" in too_big.json()["errorMessage"]
    for _ in range(3):  # lands on both runtimes, whichever awslambdaric process died
        assert toy.emulator.invoke({"action": "echo"}).ok


def test_report_line_per_invocation_with_init_duration_only_when_cold() -> None:
    # GIVEN a fresh emulator with one runtime
    log = ListLog()
    with Emulator(toy_config(memory_mb=1536), log=log) as emulator:
        # WHEN it serves two invocations
        cold = emulator.invoke({"action": "echo"})
        warm = emulator.invoke({"action": "echo"})

    # THEN each has one REPORT line shaped like Lambda's; only the first carries Init Duration
    cold_line, warm_line = log.report_for(cold.request_id), log.report_for(warm.request_id)
    shape = (r"REPORT RequestId: [0-9a-f-]{36}\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
             r"Memory Size: 1536 MB\tMax Memory Used: \d+ MB")
    assert re.fullmatch(shape + r"\tInit Duration: \d+\.\d\d ms", cold_line)
    assert re.fullmatch(shape, warm_line)
    lines = log.lines
    start, end = lines.index(f"START RequestId: {cold.request_id} Version: $LATEST"), \
        lines.index(f"END RequestId: {cold.request_id}")
    assert start < end < lines.index(cold_line)
    assert cold.record.init_duration_ms is not None and cold.record.init_duration_ms > 0
    assert warm.record.init_duration_ms is None
    # Init is billed; memory is the runtime tree's real peak (a Python process is well over 5 MB)
    assert cold.record.billed_duration_ms >= cold.record.init_duration_ms + cold.record.duration_ms
    assert 5 < cold.record.max_memory_used_mb < 1536


def test_runtime_sees_lambda_environment_and_inherits_the_emulators(tmp_path, monkeypatch) -> None:
    # GIVEN a model root, a pinned version, and variables in the emulator's own environment
    monkeypatch.setenv("EMULATOR_TEST_MARKER", "inherited")
    monkeypatch.setenv("MODEL_ALIAS", "from-the-shell")  # must not fight the --model-version pin
    config = toy_config(model_root=tmp_path, model_name="dogs", model_version="7", timeout_s=12.0,
                        memory_mb=3008, function_name="breedserve-test")

    # WHEN the handler reports what it sees
    with Emulator(config, log=ListLog()) as emulator:
        seen = emulator.invoke({"action": "echo"}).json()

    # THEN it has Lambda's variables, the model selection, and what the emulator inherited
    env = seen["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "breedserve-test"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "3008"
    assert env["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "12"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/breedserve-test"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", env["AWS_LAMBDA_LOG_STREAM_NAME"])
    assert env["AWS_REGION"] == "us-east-1"
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")
    assert env["LAMBDA_TASK_ROOT"] == str(HANDLERS) == seen["cwd"]
    assert env["MODEL_ROOT"] == str(tmp_path.resolve())
    assert env["MODEL_NAME"] == "dogs" and env["MODEL_VERSION"] == "7"
    assert "MODEL_ALIAS" not in env
    assert env["EMULATOR_TEST_MARKER"] == "inherited"


@pytest.mark.parametrize("invocation_type, status", [("Event", 202), ("DryRun", 204)])
def test_other_invocation_types(toy: Running, invocation_type: str, status: int) -> None:
    # GIVEN the Invoke API's X-Amz-Invocation-Type header
    # WHEN an asynchronous or dry-run invocation is posted
    reply = http_request(toy.emulator.url, "POST", INVOKE, b'{"action": "echo"}',
                         [("X-Amz-Invocation-Type", invocation_type)])

    # THEN Lambda's status codes for them
    assert reply.status == status


def test_handler_output_is_logged_with_the_runtime_prefix(toy: Running) -> None:
    # GIVEN a handler that prints
    # WHEN it is invoked
    assert toy.emulator.invoke({"action": "print"}).ok

    # THEN its line shows up in the emulator's log, prefixed with the runtime's name
    deadline = time.monotonic() + 10
    while not any(line.endswith("] toy says hello") for line in toy.log.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(re.fullmatch(r"\[runtime-\d\] toy says hello", line) for line in toy.log.lines)
