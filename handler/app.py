"""The Lambda entry point, `handler.app.lambda_handler` (the container image's CMD).

Importing this module is the function's init: it reads the environment and loads the model once
per runtime environment (a failure there is served as 503 and retried, never a crashed init).
Everything else lives in `handler.service`.
"""

from __future__ import annotations

from typing import Any

from handler.service import Service

SERVICE = Service.from_env()


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """Answer one Function URL request or direct invocation; never raises."""
    return SERVICE.handle(event, context)
