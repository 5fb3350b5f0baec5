"""Errors the handler answers with: each carries its HTTP status, a stable code and a message.

Clients branch on `code` (stable, documented in docs/handler.md) and show `message` (what was
wrong and what to do). `handler.responses` is the only place these become answers; everything
else just raises them.
"""

from __future__ import annotations

from collections.abc import Mapping


class HandlerError(Exception):
    """A request that cannot be answered with predictions, as `status` + `code` + `message`."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class _StatusError(HandlerError):
    """A `HandlerError` whose status is fixed by its class; only the code may vary."""

    def __init__(self, message: str, code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(type(self).status, code or type(self).code, message, headers)


class BadRequestError(_StatusError):
    """400: the request itself is wrong (`not_an_image`, `bad_base64`, `bad_json`, `bad_top_k`, ...)."""

    status = 400
    code = "bad_request"


class ForbiddenError(_StatusError):
    """403: the request names something the function may not touch (an S3 object off the allowlist)."""

    status = 403
    code = "s3_not_allowed"


class NotFoundError(_StatusError):
    """404: no such route (or no such S3 object)."""

    status = 404
    code = "not_found"


class MethodNotAllowedError(_StatusError):
    """405: the route exists but not for this method; `Allow` lists the ones that work."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: tuple[str, ...]) -> None:
        super().__init__(message, headers={"allow": ", ".join(allow)})
        self.allow = allow


class PayloadTooLargeError(_StatusError):
    """413: the body is over `MAX_BODY_BYTES` (`payload_too_large`) or the image over `MAX_IMAGE_PIXELS`."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(_StatusError):
    """415: a content type or image format this function does not serve (text, TIFF, HEIC, ...)."""

    status = 415
    code = "unsupported_media_type"


class InternalError(_StatusError):
    """500: a bug. The message never carries internals; the log line has the traceback."""

    status = 500
    code = "internal_error"


class UpstreamError(_StatusError):
    """502: S3 failed while fetching an allowed `s3_uri` (throttled, unreachable, ...)."""

    status = 502
    code = "s3_error"


class ModelUnavailableError(_StatusError):
    """503: no model is loaded yet; the message says why and when loading is retried."""

    status = 503
    code = "model_unavailable"


class DeadlineExceededError(_StatusError):
    """504: too little of the invocation's time is left to run the model; answered before Lambda kills us."""

    status = 504
    code = "timeout"


class ConfigError(Exception):
    """The function's environment variables are invalid; served as 503 with this message."""
