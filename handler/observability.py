"""One structured log line and one set of CloudWatch EMF metrics per request.

Logs (Powertools Logger, JSON on stdout): request id, transport, method, path, status, error code,
timings, model version, cold start; never bodies, image bytes, base64 text or headers (which may
carry `authorization` or signatures), so nothing here can leak a user's photo or a credential.

Metrics (Powertools EMF on stdout, namespace `breedserve`, dimension `service`): `Latency` and
`InferenceLatency` (ms), `Requests`, `ColdStart` (1 on a runtime's first request, else 0, so its
average is the cold-start rate), `Predictions`, and `Errors` with a `code` dimension (about 15
codes: cheap). The predicted class is an EMF *property* (searchable in Logs Insights, free); a
`class` dimension would create up to 133 custom metrics (about $40/month), so it is opt-in with
`METRICS_CLASS_DIMENSION=true`. Telemetry never raises: losing a metric must not lose an answer.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "breedserve"
SERVICE = "breedserve"


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes and emitted once at the end."""

    request_id: str = ""
    kind: str = "direct"
    method: str | None = None
    path: str | None = None
    status: int = 200
    error_code: str | None = None
    duration_ms: float = 0.0
    timing_ms: dict[str, float] | None = None
    model_version: str | None = None
    variant: str | None = None
    predicted: list[str] = field(default_factory=list)
    batch_size: int | None = None
    cold_start: bool = False


class Telemetry:
    """The service's logger and metrics; `emit` is called once per request."""

    def __init__(
        self,
        service: str | None = None,
        namespace: str = NAMESPACE,
        class_dimension: bool = False,
        stream: IO[str] | None = None,
    ) -> None:
        self.service = service or os.environ.get("POWERTOOLS_SERVICE_NAME") or SERVICE
        self.namespace = namespace
        self.class_dimension = class_dimension
        self.logger = Logger(service=self.service, stream=stream or sys.stdout)
        self._cold = True

    def take_cold_start(self) -> bool:
        """True exactly once per runtime: for its first request."""
        cold, self._cold = self._cold, False
        return cold

    def emit(self, record: RequestRecord, exc: BaseException | None = None) -> None:
        """Write the request's log line and metrics; an internal error's traceback goes in the same line."""
        try:
            fields = _log_fields(record)
            if record.status >= 500 and exc is not None and record.error_code == "internal_error":
                self.logger.error("request", extra=fields, exc_info=exc)
            elif record.status >= 500:
                self.logger.warning("request", extra=fields)
            else:
                self.logger.info("request", extra=fields)
        except Exception:  # logging trouble must not turn an answer into a failure
            logging.getLogger(__name__).exception("could not write the request log line")
        try:
            self._metrics(record)
        except Exception:  # nor may a metric that cannot be written
            logging.getLogger(__name__).exception("could not write the request metrics")

    def event(self, message: str, level: int = logging.INFO, **fields: Any) -> None:
        """A log line outside requests (model loaded, load failed, ...)."""
        try:
            self.logger.log(level, message, extra=fields)  # type: ignore[attr-defined]  # forwarded to logging
        except Exception:  # same for non-request log lines
            logging.getLogger(__name__).exception("could not write a log line")

    def _metrics(self, record: RequestRecord) -> None:
        main = EphemeralMetrics(namespace=self.namespace, service=self.service)
        main.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
        main.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=record.duration_ms)
        main.add_metric(name="ColdStart", unit=MetricUnit.Count, value=1 if record.cold_start else 0)
        if record.timing_ms and "inference" in record.timing_ms:
            main.add_metric(name="InferenceLatency", unit=MetricUnit.Milliseconds,
                            value=record.timing_ms["inference"])
        if record.predicted:
            main.add_metric(name="Predictions", unit=MetricUnit.Count, value=len(record.predicted))
            main.add_metadata(key="predicted_class", value=record.predicted[0] if len(record.predicted) == 1
                              else record.predicted)
        main.add_metadata(key="request_id", value=record.request_id)
        main.add_metadata(key="status", value=record.status)
        if record.model_version:
            main.add_metadata(key="model_version", value=record.model_version)
        main.flush_metrics(raise_on_empty_metrics=False)
        if record.error_code:
            errors = EphemeralMetrics(namespace=self.namespace, service=self.service)
            errors.add_dimension(name="code", value=record.error_code)
            errors.add_metric(name="Errors", unit=MetricUnit.Count, value=1)
            errors.flush_metrics(raise_on_empty_metrics=False)
        if self.class_dimension:
            for label in record.predicted:
                by_class = EphemeralMetrics(namespace=self.namespace, service=self.service)
                by_class.add_dimension(name="class", value=label)
                by_class.add_metric(name="PredictedClass", unit=MetricUnit.Count, value=1)
                by_class.flush_metrics(raise_on_empty_metrics=False)


def _log_fields(record: RequestRecord) -> dict[str, Any]:
    """The log line's keys; by construction only metadata, never payloads or headers."""
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "kind": record.kind,
        "status": record.status,
        "duration_ms": round(record.duration_ms, 3),
        "cold_start": record.cold_start,
    }
    optional = {
        "method": record.method,
        "path": record.path,
        "error_code": record.error_code,
        "timing_ms": record.timing_ms,
        "model_version": record.model_version,
        "variant": record.variant,
        "batch_size": record.batch_size,
        "predicted": record.predicted[:16] or None,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    return fields
