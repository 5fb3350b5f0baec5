"""Errors raised by training.

Each one carries a message a user can act on; the CLI prints it as one line and exits non-zero.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base class for every training failure the user can fix."""


class ConfigError(TrainingError):
    """Flags that cannot work together (e.g. `--amp on` without a GPU, `--publish` without `--name`)."""


class DatasetError(TrainingError):
    """The ImageFolder tree is missing a split, has no images, or its splits disagree on the classes."""


class WeightsError(TrainingError):
    """A `--pretrained` file cannot be read or does not fit the chosen architecture."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, unreadable, or from a run with a different model or classes."""


class DistributedError(TrainingError):
    """The torchrun environment is inconsistent or the process group cannot start."""
