"""Errors raised by the local Lambda emulator.

Function errors (a handler raising, timing out, failing init) are not exceptions here: they are
outcomes a caller receives, shaped as Lambda shapes them. These classes are for the emulator itself
failing to do its job, each with a message a user can act on.
"""

from __future__ import annotations


class EmulatorError(Exception):
    """Base class for every emulator failure."""


class ConfigError(EmulatorError):
    """The emulator's configuration is invalid (bad option, missing directory, port in use)."""


class ContainerEngineError(EmulatorError):
    """No container engine can run the image (no docker daemon answers and podman is absent)."""


class RuntimeStartError(EmulatorError):
    """A runtime process or container could not be started at all."""


class RuntimeInitError(EmulatorError):
    """A runtime failed its init phase (reported by `Emulator.wait_ready`)."""

    def __init__(self, runtime: str, error_type: str, error_message: str) -> None:
        super().__init__(f"{runtime} failed init: {error_type}: {error_message}")
        self.error_type = error_type
        self.error_message = error_message


class ReadyTimeoutError(EmulatorError):
    """The runtimes did not finish init within the time `Emulator.wait_ready` was given."""


class EmulatorClosedError(EmulatorError):
    """An invocation arrived after the emulator was closed."""


class MalformedResponseError(EmulatorError):
    """A handler's result cannot become an HTTP response (the Function URL answers 502)."""
