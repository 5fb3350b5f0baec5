"""Toy Lambda handler for the emulator tests: one behaviour per action.

Invoke API events say `{"action": ..., ...}`; Function URL events pick the action by path
(`/echo`, `/sleep?seconds=1`, ...), so that one runtime serves many tests.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

BINARY_BODY = bytes(range(256)) * 4
_ENV_SHOWN = ("AWS_", "MODEL_", "LAMBDA_", "EMULATOR_TEST_", "_HANDLER", "TZ")


def _action(event: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    if event.get("version") == "2.0" and "requestContext" in event:
        return event["rawPath"].strip("/").split("/")[0] or "echo", event.get("queryStringParameters") or {}, True
    return str(event.get("action", "echo")), event, False


def lambda_handler(event: dict[str, Any], context: Any) -> Any:
    action, args, from_url = _action(event)
    if action == "echo":
        seen = {
            "event": event,
            "env": {k: v for k, v in os.environ.items() if k.startswith(_ENV_SHOWN)},
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            "request_id": context.aws_request_id,
            "function_arn": context.invoked_function_arn,
            "remaining_ms": context.get_remaining_time_in_millis(),
        }
        if from_url:
            return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(seen)}
        return seen
    if action == "sleep":
        start = time.time()
        time.sleep(float(args.get("seconds", 0)))
        return {"start": start, "end": time.time(), "pid": os.getpid()}
    if action == "raise":
        raise ValueError("raised on purpose")
    if action == "binary":
        return {"statusCode": 201, "headers": {"Content-Type": "image/png", "X-Toy": "binary"},
                "cookies": ["a=1; Path=/", "b=2"], "isBase64Encoded": True,
                "body": base64.b64encode(BINARY_BODY).decode()}
    if action == "plain":
        return ["plain", 1]
    if action == "big":
        return {"statusCode": 200, "body": "x" * 7_000_000}
    if action == "malformed":
        return {"statusCode": "teapot"}
    if action == "exit":
        os._exit(3)
    if action == "print":
        print("toy says hello")
        return {"printed": True}
    return {"statusCode": 404, "body": f"unknown action {action}"}
