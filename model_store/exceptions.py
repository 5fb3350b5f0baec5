"""Errors raised by the model store.

Every error carries a message a user can act on: what was wrong, and where.
"""

from __future__ import annotations


class ModelStoreError(Exception):
    """Base class for every model-store failure."""


class ManifestError(ModelStoreError):
    """A manifest is missing, unreadable, of an unknown schema, or inconsistent."""


class ChecksumError(ModelStoreError):
    """A weights file does not match the sha256 or size recorded in its manifest."""


class ArchitectureError(ModelStoreError):
    """The weights do not fit the architecture (detected or given by flags)."""


class UnsafeWeightsError(ModelStoreError):
    """A weights file would need unpickling of arbitrary objects; it is refused."""


class SourceError(ModelStoreError):
    """A publish source cannot be read (missing file, bad archive, unsupported format)."""


class StoreError(ModelStoreError):
    """A store URI is invalid or the store cannot be reached."""


class VersionNotFoundError(ModelStoreError):
    """The requested name/version/alias does not exist in a store or a model root."""


class VariantError(ModelStoreError):
    """A requested weights variant is absent from a version, or failed its quality gate."""
