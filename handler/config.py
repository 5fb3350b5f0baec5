"""The function's settings, read once from the environment at init.

Every knob is an environment variable so that a Lambda version (code + configuration) fully
describes what it serves; docs/handler.md lists them. Invalid values raise `ConfigError`, which
the function serves as 503 with the message instead of crashing its init.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from handler.exceptions import ConfigError
from model_store.exceptions import ManifestError
from model_store.manifest import check_name

DEFAULT_MODEL_ROOT = "/mnt/models"
DEFAULT_MODEL_NAME = "dogbreeds"
# The Function URL caps a request at 6 MB including base64 inflation; this bounds the decoded bytes.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
# 40 MP: every phone photo fits, a decompression bomb does not (RGB at 40 MP is 120 MB of pixels).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
MAX_BATCH = 16


@dataclass(frozen=True)
class Settings:
    """What the function serves and the limits it enforces."""

    model_root: Path = Path(DEFAULT_MODEL_ROOT)
    model_name: str = DEFAULT_MODEL_NAME
    model_version: str | None = None
    model_alias: str | None = None
    model_variant: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    allowed_s3_prefixes: tuple[str, ...] = ()
    # Time kept in hand after inference so the answer still gets out before Lambda's deadline.
    deadline_margin_ms: int = 250
    # How often an alias is re-resolved, so a moved alias is picked up without a restart.
    alias_refresh_seconds: float = 60.0
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    cors_allow_origin: str | None = None
    metrics_class_dimension: bool = False
    # The inference engine's intra-op threads (OMP_NUM_THREADS); None: every CPU the process may use.
    threads: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings; raises `ConfigError` naming every invalid variable at once."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        version = _optional(env, "MODEL_VERSION")
        alias = _optional(env, "MODEL_ALIAS")
        if version and alias:
            problems.append("set MODEL_VERSION (a pinned version) or MODEL_ALIAS, not both")
        elif not version and not alias:
            problems.append("set MODEL_VERSION (a pinned version) or MODEL_ALIAS to choose what to serve")
        settings = cls(
            model_root=Path(env.get("MODEL_ROOT") or DEFAULT_MODEL_ROOT),
            model_name=env.get("MODEL_NAME") or DEFAULT_MODEL_NAME,
            model_version=version,
            model_alias=alias,
            model_variant=_optional(env, "MODEL_VARIANT"),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1, problems),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, 1, problems),
            allowed_s3_prefixes=_s3_prefixes(env.get("ALLOWED_S3_PREFIXES", ""), problems),
            deadline_margin_ms=_int(env, "DEADLINE_MARGIN_MS", 250, 0, problems),
            alias_refresh_seconds=float(_int(env, "MODEL_REFRESH_SECONDS", 60, 1, problems)),
            cors_allow_origin=_optional(env, "CORS_ALLOW_ORIGIN"),
            metrics_class_dimension=_bool(env, "METRICS_CLASS_DIMENSION", problems),
            threads=_int(env, "OMP_NUM_THREADS", 0, 0, problems) or None,
        )
        for kind, value in (("MODEL_NAME", settings.model_name), ("MODEL_VERSION", version),
                            ("MODEL_ALIAS", alias), ("MODEL_VARIANT", settings.model_variant)):
            if value is not None:
                try:
                    check_name(kind, value)
                except ManifestError as exc:
                    problems.append(str(exc))
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return settings


def _optional(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key, "").strip()
    return value or None


def _int(env: Mapping[str, str], key: str, default: int, minimum: int, problems: list[str]) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        problems.append(f"{key}={raw!r} is not an integer")
        return default
    if value < minimum:
        problems.append(f"{key}={value} must be at least {minimum}")
        return default
    return value


def _bool(env: Mapping[str, str], key: str, problems: list[str]) -> bool:
    raw = env.get(key, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    problems.append(f"{key}={raw!r} is not true/false")
    return False


def _s3_prefixes(raw: str, problems: list[str]) -> tuple[str, ...]:
    """`s3://bucket/prefix` entries; each is made to end in `/` so `images` never matches `images-private`."""
    prefixes = []
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        bucket = item[len("s3://"):].split("/", 1)[0] if item.startswith("s3://") else ""
        if not bucket:
            problems.append(f"ALLOWED_S3_PREFIXES entry {item!r} is not s3://bucket[/prefix]")
            continue
        prefixes.append(item if item.endswith("/") else item + "/")
    return tuple(prefixes)
