"""Images named by `s3_uri` (direct invocation only), read only under `ALLOWED_S3_PREFIXES`.

The function never fetches URLs: an S3 object is the one remote input, and only under prefixes
the operator listed (none by default, so the feature is off). boto3 is imported on first use,
keeping its ~0.25 s out of the cold start of a function that never sees an `s3_uri`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from handler.exceptions import (
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamError,
)

_S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/([^\x00-\x1f]{1,1024})")
_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchBucket"}
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "InvalidObjectState"}


def check_s3_uri(uri: str, allowed_prefixes: tuple[str, ...]) -> tuple[str, str]:
    """(bucket, key) when `uri` is a plain S3 object URI under an allowed prefix; else 400/403."""
    if not allowed_prefixes:
        raise ForbiddenError("s3_uri input is disabled: the operator has not set ALLOWED_S3_PREFIXES")
    match = _S3_URI.fullmatch(uri)
    if match is None:
        raise BadRequestError(f"{_shown(uri)} is not an s3://bucket/key URI")
    bucket, key = match.groups()
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ForbiddenError(f"{_shown(uri)} has '.' or '..' path segments")
    if not any(uri.startswith(prefix) for prefix in allowed_prefixes):
        raise ForbiddenError(f"{_shown(uri)} is not under an allowed S3 prefix")
    return bucket, key


def default_client() -> Any:
    """An S3 client with short timeouts: a slow S3 must not eat the invocation's whole deadline."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
    return boto3.client("s3", config=config)


class S3ImageFetcher:
    """Reads one allowed object, refusing it if it is bigger than the body limit."""

    def __init__(
        self,
        allowed_prefixes: tuple[str, ...],
        max_bytes: int,
        client_factory: Callable[[], Any] = default_client,
    ) -> None:
        self.allowed_prefixes = allowed_prefixes
        self.max_bytes = max_bytes
        self._client_factory = client_factory
        self._client: Any = None

    def fetch(self, uri: str) -> bytes:
        """The object's bytes; 403 off the allowlist, 404 when absent, 413 when too big, 502 on S3 trouble."""
        bucket, key = check_s3_uri(uri, self.allowed_prefixes)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if self._client is None:
                self._client = self._client_factory()
            response = self._client.get_object(Bucket=bucket, Key=key)
            size = response.get("ContentLength")
            body = response["Body"]
            try:
                if isinstance(size, int) and size > self.max_bytes:
                    raise PayloadTooLargeError(f"{_shown(uri)} is {size:,} bytes; the limit is {self.max_bytes:,}")
                data: bytes = body.read(self.max_bytes + 1)
            finally:
                body.close()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise NotFoundError(f"there is no S3 object at {_shown(uri)}") from None
            if code in _DENIED:
                raise ForbiddenError(f"the function may not read {_shown(uri)}", code="s3_access_denied") from None
            raise UpstreamError(f"S3 answered {code or 'an error'} for {_shown(uri)}") from None
        except BotoCoreError as exc:
            raise UpstreamError(f"S3 could not be reached ({type(exc).__name__})") from None
        if len(data) > self.max_bytes:
            raise PayloadTooLargeError(f"{_shown(uri)} is over the {self.max_bytes:,}-byte limit")
        return data


def _shown(uri: str) -> str:
    """The URI for a message, cut short and printable."""
    text = uri if len(uri) <= 200 else uri[:197] + "..."
    return repr(text)
