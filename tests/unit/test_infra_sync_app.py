"""The model-sync Lambda entry: which S3 events it acts on, and what it asks model_store to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from handler import sync_app
from model_store.exceptions import ManifestError

STORE = "s3://models-bucket/models"


def s3_event(*keys: str, bucket: str = "models-bucket") -> dict[str, Any]:
    return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key}}} for key in keys]}


def test_manifests_of_the_configured_model_are_synced_once_each() -> None:
    # GIVEN two manifests of dogbreeds (one URL-encoded), a duplicate, and unrelated keys
    event = s3_event("models/dogbreeds/v1/manifest.json", "models/dogbreeds/v%2D2/manifest.json",
                     "models/dogbreeds/v1/manifest.json", "models/dogbreeds/aliases/prod.json",
                     "models/cats/v1/manifest.json", "models/dogbreeds/v1/model.safetensors",
                     "models/dogbreeds/v1/extra/manifest.json")
    # WHEN read
    versions, ignored = sync_app.versions_in_event(event, STORE, "dogbreeds")
    # THEN only the two versions are synced, in order
    assert versions == ["v1", "v-2"]
    assert len(ignored) == 4


def test_events_from_another_bucket_are_ignored() -> None:
    versions, ignored = sync_app.versions_in_event(s3_event("models/dogbreeds/v1/manifest.json", bucket="other"),
                                                   STORE, "dogbreeds")
    assert versions == [] and ignored == ["models/dogbreeds/v1/manifest.json"]


def test_an_unsafe_version_name_is_refused() -> None:
    # GIVEN a key whose version segment is not a valid name
    event = s3_event("models/dogbreeds/..%20x/manifest.json")
    # WHEN read
    # THEN it is refused rather than becoming a path on EFS
    with pytest.raises(ManifestError, match="invalid version"):
        sync_app.versions_in_event(event, STORE, "dogbreeds")


def test_a_store_that_is_not_s3_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="MODEL_STORE_URI"):
        sync_app.versions_in_event(s3_event(), "file:///tmp/store", "dogbreeds")


def test_the_handler_syncs_each_version_into_the_mounted_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # GIVEN the function's environment and a recording stand-in for model_store.sync.sync
    monkeypatch.setenv("MODEL_STORE_URI", STORE)
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path))
    monkeypatch.setenv("MODEL_NAME", "dogbreeds")
    calls = []

    def fake_sync(store_uri: str, name: str, root: str, *, version: str, progress: bool) -> Path:
        calls.append((store_uri, name, root, version, progress))
        return Path(root) / name / "versions" / version

    monkeypatch.setattr(sync_app, "sync", fake_sync)
    # WHEN invoked with one manifest event
    answer = sync_app.lambda_handler(s3_event("models/dogbreeds/v3/manifest.json"), None)
    # THEN that version was synced quietly into MODEL_ROOT, and the answer says where
    assert calls == [(STORE, "dogbreeds", str(tmp_path), "v3", False)]
    assert answer == {"synced": [{"name": "dogbreeds", "version": "v3",
                                  "directory": str(tmp_path / "dogbreeds" / "versions" / "v3")}], "ignored": 0}
