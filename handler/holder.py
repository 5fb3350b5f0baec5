"""The model a runtime serves, loaded once, retried with backoff, switched only to a good version.

Init must never crash (a crashed init is retried by Lambda on every request, each one failing
slowly): a load failure is remembered as the reason, requests get 503 with it, and later
requests retry with exponential backoff (1 s doubling to 60 s by default) so the function heals
by itself once the version appears on EFS. With `MODEL_ALIAS`, the alias is re-resolved every
`MODEL_REFRESH_SECONDS`; a version it now points at is loaded beside the current one and only
replaces it once fully loaded and verified, so a bad publish never takes down a serving function.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from handler.classifier import Classifier, elapsed_ms
from handler.config import Settings
from handler.exceptions import ModelUnavailableError
from handler.observability import Telemetry
from model_store.exceptions import ModelStoreError
from model_store.loader import resolve_version_dir

LoadFn = Callable[..., Classifier]


class ModelHolder:
    """Owns the current `Classifier` (or the reason there is none) for one runtime.

    `threads` goes to every load (the engine's intra-op threads; None lets the loader choose).
    """

    def __init__(
        self,
        settings: Settings,
        telemetry: Telemetry | None = None,
        *,
        load: LoadFn | None = None,
        resolve_alias: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        config_error: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.settings = settings
        self.threads = threads
        self.telemetry = telemetry
        self._load = load or self._load_from_root
        self._resolve_alias = resolve_alias or self._alias_target
        self._clock = clock
        self._config_error = config_error
        self.classifier: Classifier | None = None
        self.reason = config_error or "the model has not been loaded yet"
        self._delay = settings.retry_initial_seconds
        self._next_attempt = 0.0
        self._next_refresh = float("inf")
        self.load_ms: float | None = None

    def start(self) -> None:
        """The init-time load; never raises, whatever goes wrong."""
        self._attempt(self._clock())

    def get(self) -> Classifier:
        """The serving classifier; retries loading when due; raises `ModelUnavailableError` with the reason."""
        now = self._clock()
        if self.classifier is None:
            if self._config_error is None and now >= self._next_attempt:
                self._attempt(now)
            if self.classifier is None:
                raise ModelUnavailableError(self.unavailable_message(now))
        elif self.settings.model_alias and now >= self._next_refresh:
            self._refresh(now)
        return self.classifier

    def unavailable_message(self, now: float | None = None) -> str:
        """The reason, plus when the next attempt happens (nothing to wait for on a config error)."""
        if self._config_error is not None:
            return self._config_error
        wait = max(0.0, self._next_attempt - (self._clock() if now is None else now))
        return f"{self.reason} (next load attempt in {wait:.0f} s)"

    def _attempt(self, now: float) -> None:
        if self._config_error is not None:
            return
        start = time.perf_counter()
        try:
            classifier = self._load()
            classifier.warm_up()
        except Exception as exc:  # noqa: BLE001 - any load failure is a 503 with its reason, never a crash
            self.reason = describe_load_failure(exc)
            self._next_attempt = now + self._delay
            self._log("model load failed", logging.WARNING, reason=self.reason, exc_type=type(exc).__name__,
                      detail=str(exc)[:1000], retry_in_s=self._delay)
            self._delay = min(self._delay * 2, self.settings.retry_max_seconds)
            return
        self._install(classifier, now)
        self.load_ms = elapsed_ms(start)
        self._log("model loaded", load_ms=self.load_ms, model=classifier.identity)

    def _refresh(self, now: float) -> None:
        """Follow a moved alias; a version that fails to load is refused and the current one kept."""
        self._next_refresh = now + self.settings.alias_refresh_seconds
        current = self.classifier
        if current is None:
            return
        try:
            target = self._resolve_alias()
        except Exception as exc:  # noqa: BLE001 - an unreadable alias is not a reason to stop serving
            self._log("alias cannot be resolved; keeping the loaded version", logging.WARNING,
                      alias=self.settings.model_alias, reason=describe_load_failure(exc),
                      version=current.manifest.version)
            return
        if target == current.manifest.version:
            return
        start = time.perf_counter()
        try:
            candidate = self._load(version=target)
            candidate.warm_up()
        except Exception as exc:  # noqa: BLE001 - a refused version never replaces a serving one
            self._log("new version refused; keeping the loaded version", logging.ERROR,
                      alias=self.settings.model_alias, refused_version=target,
                      reason=describe_load_failure(exc), version=current.manifest.version)
            return
        self._install(candidate, now)
        self._log("model switched", load_ms=elapsed_ms(start), previous_version=current.manifest.version,
                  model=candidate.identity)

    def _install(self, classifier: Classifier, now: float) -> None:
        self.classifier = classifier
        self.reason = ""
        self._delay = self.settings.retry_initial_seconds
        self._next_refresh = now + self.settings.alias_refresh_seconds

    def _load_from_root(self, version: str | None = None) -> Classifier:
        settings = self.settings
        return Classifier.from_root(
            settings.model_root,
            settings.model_name,
            version=version or settings.model_version,
            alias=None if version else settings.model_alias,
            variant=settings.model_variant,
            max_image_pixels=settings.max_image_pixels,
            threads=self.threads,
        )

    def _alias_target(self) -> str:
        settings = self.settings
        directory: Path = resolve_version_dir(settings.model_root, settings.model_name, alias=settings.model_alias)
        return directory.name

    def _log(self, message: str, level: int = logging.INFO, **fields: Any) -> None:
        if self.telemetry is not None:
            self.telemetry.event(message, level, **fields)


def describe_load_failure(exc: BaseException) -> str:
    """A reason safe to show callers: model-store errors are written for operators; others only by type."""
    if isinstance(exc, ModelStoreError):
        text = str(exc).strip() or type(exc).__name__
        return text if len(text) <= 500 else text[:497] + "..."
    if isinstance(exc, OSError):
        return f"the model files cannot be read ({type(exc).__name__}: {exc.strerror or 'I/O error'})"
    return f"the model cannot be loaded ({type(exc).__name__}); see the function's logs"
