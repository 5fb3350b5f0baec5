"""The model-sync Lambda entry: which S3 events it acts on, and what it asks model_store to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from handler import sync_app
from model_store.exceptions import ManifestError
from model_store.sync import SyncResult

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


class RecordingSync:
    """Stands in for model_store.sync.sync_version: records each request, reports a download."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, store_uri: str, name: str, root: str, *, progress: bool, version: str | None = None,
                 alias: str | None = None) -> SyncResult:
        self.calls.append({"store": store_uri, "name": name, "root": root, "progress": progress,
                           "version": version, "alias": alias})
        resolved = version or f"{alias}-target"
        return SyncResult(name, resolved, Path(root) / name / "versions" / resolved, downloaded=True,
                          bytes_downloaded=1234, alias=alias)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RecordingSync:
    """The function's environment, with MODEL_ROOT in tmp_path, and a recording sync."""
    monkeypatch.setenv("MODEL_STORE_URI", STORE)
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path))
    monkeypatch.setenv("MODEL_NAME", "dogbreeds")
    fake = RecordingSync()
    monkeypatch.setattr(sync_app, "sync_version", fake)
    return fake


def test_the_handler_syncs_each_version_into_the_mounted_root(recording: RecordingSync, tmp_path: Path) -> None:
    # GIVEN the function's environment and a recording stand-in for model_store.sync.sync_version
    # WHEN invoked with one manifest event
    answer = sync_app.lambda_handler(s3_event("models/dogbreeds/v3/manifest.json"), None)
    # THEN that version was synced quietly into MODEL_ROOT, and the answer says where and what it cost
    assert recording.calls == [{"store": STORE, "name": "dogbreeds", "root": str(tmp_path), "progress": False,
                                "version": "v3", "alias": None}]
    assert answer == {"synced": [{"name": "dogbreeds", "version": "v3",
                                  "directory": str(tmp_path / "dogbreeds" / "versions" / "v3"),
                                  "downloaded": True, "bytes_downloaded": 1234}], "ignored": 0}


@pytest.mark.parametrize("event", [{"version": "demo-1"}, {"alias": "live"}])
def test_a_direct_request_syncs_the_named_version_or_alias(recording: RecordingSync, event: dict[str, str]) -> None:
    # GIVEN a direct invocation as `python -m infra deploy` sends it (no S3 record involved)
    # WHEN handled
    answer = sync_app.lambda_handler(event, None)
    # THEN exactly that version or alias was synced, and the answer names the resulting version
    (call,) = recording.calls
    assert {k: call[k] for k in ("version", "alias")} == {"version": event.get("version"), "alias": event.get("alias")}
    assert answer["synced"][0]["version"] == event.get("version", "live-target") and answer["ignored"] == 0


@pytest.mark.parametrize("event, error", [
    ({"version": "v1", "alias": "live"}, ValueError),
    ({"version": "v1", "force": True}, ValueError),
    ({"version": "../etc"}, ManifestError),
    ({"version": 7}, ManifestError),
])
def test_an_ambiguous_or_unsafe_direct_request_is_refused(recording: RecordingSync, event: dict[str, Any],
                                                          error: type[Exception]) -> None:
    # GIVEN a direct request naming two things, an unknown key, or an invalid version
    # WHEN handled
    # THEN it fails before anything is synced
    with pytest.raises(error):
        sync_app.lambda_handler(event, None)
    assert recording.calls == []
