"""The request path: event -> route -> classifier -> answer, with one log line and metrics each.

`Service.handle` is what `lambda_handler` calls. It never raises: every failure becomes an
answer through `handler.responses`, and no state a request touches outlives it except the
loaded model, so one bad request cannot spoil the next.

Routes (Function URL): `POST /predict`, `GET|HEAD /health`, `GET|HEAD /model`, and `OPTIONS` on
each (CORS preflight). Anything else without `requestContext.http` is a direct invocation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from handler import responses
from handler.classifier import Classifier, elapsed_ms
from handler.config import Settings
from handler.decode import configure_pillow
from handler.events import (
    DirectRequest,
    HttpRequest,
    PredictInput,
    is_function_url_event,
    parse_event,
    parse_predict_payload,
    predict_input_from_http,
)
from handler.exceptions import (
    ConfigError,
    DeadlineExceededError,
    HandlerError,
    MethodNotAllowedError,
    ModelUnavailableError,
    NotFoundError,
)
from handler.holder import ModelHolder
from handler.observability import RequestRecord, Telemetry
from handler.s3 import S3ImageFetcher

ROUTES: dict[str, tuple[str, ...]] = {
    "/predict": ("POST",),
    "/health": ("GET", "HEAD"),
    "/model": ("GET", "HEAD"),
}


class LambdaDeadline:
    """Refuses inference that would run into the invocation's deadline (504 instead of being killed)."""

    def __init__(self, context: Any, margin_ms: int) -> None:
        self._remaining = getattr(context, "get_remaining_time_in_millis", None)
        self.margin_ms = margin_ms

    def check(self, expected_ms: float) -> None:
        if not callable(self._remaining):
            return
        remaining = self._remaining()
        if isinstance(remaining, (int, float)) and remaining < expected_ms + self.margin_ms:
            raise DeadlineExceededError(
                f"only {remaining:.0f} ms of the invocation are left and inference needs about "
                f"{expected_ms + self.margin_ms:.0f} ms: retry, or raise the function's timeout"
            )


class Service:
    """Settings, the model holder, telemetry and the S3 reader, wired once per runtime."""

    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        telemetry: Telemetry,
        fetcher: S3ImageFetcher | None = None,
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.telemetry = telemetry
        self.fetcher = fetcher or S3ImageFetcher(settings.allowed_s3_prefixes, settings.max_body_bytes)
        self._cors = {"access-control-allow-origin": settings.cors_allow_origin} if settings.cors_allow_origin else {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, telemetry: Telemetry | None = None) -> Service:
        """Read the environment and try the first model load. Never raises.

        The engine's thread count is `OMP_NUM_THREADS`, else every CPU this process may use; the
        loader hands it to the engine it builds (ONNX Runtime's session, or torch's pool for fp32).
        """
        problem = None
        try:
            settings = Settings.from_env(environ)
        except ConfigError as exc:
            settings, problem = Settings(), str(exc)
        telemetry = telemetry or Telemetry(class_dimension=settings.metrics_class_dimension)
        configure_pillow(settings.max_image_pixels)
        holder = ModelHolder(settings, telemetry, config_error=problem, threads=settings.threads)
        holder.start()
        return cls(settings, holder, telemetry)

    def handle(self, event: Any, context: Any) -> dict[str, Any]:
        """One invocation -> its answer. The only `except Exception` on the request path."""
        start = time.perf_counter()
        request_id = getattr(context, "aws_request_id", "")
        record = RequestRecord(request_id=request_id if isinstance(request_id, str) else "",
                               cold_start=self.telemetry.take_cold_start())
        http = is_function_url_event(event)
        record.kind = "http" if http else "direct"
        error: BaseException | None = None
        try:
            request = parse_event(event, record.request_id, self.settings.max_body_bytes)
            record.request_id = request.request_id
            deadline = LambdaDeadline(context, self.settings.deadline_margin_ms)
            if isinstance(request, HttpRequest):
                response = self._http(request, record, deadline)
            else:
                response = self._direct(request, record, deadline)
        except Exception as exc:  # noqa: BLE001 - nothing escapes: every failure is an answer
            error = exc
            failure = responses.to_handler_error(exc, record.request_id)
            record.status, record.error_code = failure.status, failure.code
            response = (responses.http_error(failure, self._cors, record.request_id) if http
                        else responses.direct_error(failure))
            if record.method == "HEAD":
                response = responses.without_body(response)
        record.duration_ms = elapsed_ms(start)
        self.telemetry.emit(record, error)
        return response

    def _http(self, request: HttpRequest, record: RequestRecord, deadline: LambdaDeadline) -> dict[str, Any]:
        record.method, record.path = request.method, request.path
        allowed = ROUTES.get(request.path)
        if allowed is None:
            raise NotFoundError(f"no route {request.path[:100]!r}: use POST /predict, GET /health or GET /model")
        if request.method == "OPTIONS":
            record.status = 204
            return responses.preflight(allowed, self._cors, request.request_id)
        if request.method not in allowed:
            raise MethodNotAllowedError(f"{request.path} takes {', '.join(allowed)}", allow=(*allowed, "OPTIONS"))
        if request.path == "/predict":
            body = self._predict(predict_input_from_http(request, self.settings.max_body_bytes), record, deadline)
            status = 200
        elif request.path == "/health":
            status, body = self._health(record)
        else:
            body = self._classifier(record).describe()
            status = 200
        record.status = status
        response = responses.http_response(status, body, self._cors, request.request_id)
        return responses.without_body(response) if request.method == "HEAD" else response

    def _direct(self, request: DirectRequest, record: RequestRecord, deadline: LambdaDeadline) -> dict[str, Any]:
        found = parse_predict_payload(request.payload, self.settings.max_body_bytes, allow_s3=True)
        return self._predict(found, record, deadline)

    def _health(self, record: RequestRecord) -> tuple[int, dict[str, Any]]:
        try:
            classifier = self._classifier(record)
        except ModelUnavailableError as exc:
            record.error_code = exc.code
            return exc.status, responses.unavailable_health(exc)
        return 200, {"status": "ok", "model": classifier.identity}

    def _predict(self, found: PredictInput, record: RequestRecord, deadline: LambdaDeadline) -> dict[str, Any]:
        classifier = self._classifier(record)
        images = found.images
        if found.s3_uri is not None:
            images = (self.fetcher.fetch(found.s3_uri),)
        if not found.batch:
            body = classifier.classify(images[0], found.top_k, found.include_logits, deadline)
            record.timing_ms = body["timing_ms"]
            record.predicted = [body["predictions"][0]["label"]]
            return body
        start = time.perf_counter()
        results = classifier.classify_batch(images, found.top_k, found.include_logits, deadline)
        answered = [r for r in results if not isinstance(r, HandlerError)]
        record.batch_size = len(images)
        record.predicted = [r["predictions"][0]["label"] for r in answered]
        body = responses.batch_body(results)
        body["model"] = classifier.identity
        body["timing_ms"] = {
            # every chunk's forward pass once: each answer carries its chunk's time and size
            "inference": round(sum(r["timing_ms"]["inference"] / r["timing_ms"]["chunk_size"] for r in answered), 3),
            "total": elapsed_ms(start),
            "variant": classifier.variant,
        }
        record.timing_ms = body["timing_ms"]
        return body

    def _classifier(self, record: RequestRecord) -> Classifier:
        classifier = self.holder.get()
        record.model_version, record.variant = classifier.manifest.version, classifier.variant
        return classifier
