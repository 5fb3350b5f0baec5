"""The Lambda entry point, `handler.app.lambda_handler` (the container image's CMD).

Importing this module is the function's init: it reads the environment and loads the model once
per runtime environment (a failure there is served as 503 and retried, never a crashed init).
First a thread starts reading the weights file the load will use (and hashing it, for fp32);
the imports and the load that follow (Pillow, Powertools, the engine: ONNX Runtime in about
0.05 s for `int8` and `fp32-graph`, torch in 2 s or more for `fp32`) then overlap that read,
which from EFS is the slow part. Nothing here imports torch: only loading `fp32` does.
Everything else lives in `handler.service`.
"""

from __future__ import annotations

from typing import Any

from handler.config import Settings
from handler.exceptions import ConfigError
from model_store.loader import prefetch


def _prefetch_weights() -> None:
    """Read and hash the weights while the rest of init imports and loads (EFS reads are slow).

    Settings are read again by `Service.from_env`, which also reports any problem with them.
    """
    try:
        settings = Settings.from_env()
    except ConfigError:
        return
    prefetch(settings.model_root, settings.model_name, version=settings.model_version,
             alias=settings.model_alias, variant=settings.model_variant)


_prefetch_weights()

from handler.service import Service  # Pillow, Powertools, model_store: only after the prefetch has started

SERVICE = Service.from_env()


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """Answer one Function URL request or direct invocation; never raises."""
    return SERVICE.handle(event, context)
