"""The Lambda entry point, `handler.app.lambda_handler` (the container image's CMD).

Importing this module is the function's init: it reads the environment and loads the model once
per runtime environment (a failure there is served as 503 and retried, never a crashed init).
Before torch is imported (a second or more on one CPU), a thread starts reading and hashing the
weights file the load will verify, so that work overlaps the import. Everything else lives in
`handler.service`.
"""

from __future__ import annotations

from typing import Any

from handler.config import Settings
from handler.exceptions import ConfigError
from model_store.loader import prefetch


def _prefetch_weights() -> None:
    """Read and hash the weights while torch imports (one CPU busy, the other idle; EFS reads are slow).

    Settings are read again by `Service.from_env`, which also reports any problem with them.
    """
    try:
        settings = Settings.from_env()
    except ConfigError:
        return
    prefetch(settings.model_root, settings.model_name, version=settings.model_version,
             alias=settings.model_alias, variant=settings.model_variant)


_prefetch_weights()

from handler.service import Service  # imports torch: only after the prefetch has started

SERVICE = Service.from_env()


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """Answer one Function URL request or direct invocation; never raises."""
    return SERVICE.handle(event, context)
