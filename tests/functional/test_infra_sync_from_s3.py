"""The model-sync Lambda entry end to end: a version published to S3 (moto) arrives complete in
the mounted model root when the function receives the S3 event for its manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest

from handler.sync_app import lambda_handler
from model_store.loader import verify_version_dir
from model_store.manifest import Architecture, Manifest, Preprocessing, WeightsFile
from model_store.store import manifest_key, open_store, version_key

STORE = "s3://breedserve-models/models"


def publish_fake_version(version: str, tmp_path: Path) -> Manifest:
    """A manifest plus random weights bytes (sync checks sizes and sha256, not tensors)."""
    store = open_store(STORE)
    weights = tmp_path / f"{version}.bin"
    weights.write_bytes(os.urandom(256 * 1024))
    entry = WeightsFile(file="model.safetensors", format="safetensors",
                        sha256=hashlib.sha256(weights.read_bytes()).hexdigest(), size=weights.stat().st_size)
    manifest = Manifest(name="dogbreeds", version=version, arch=Architecture(depth=18), class_names=("a", "b"),
                        preprocess=Preprocessing.preset("resize224"), weights={"fp32": entry}, trained=False)
    store.put_file(version_key("dogbreeds", version, entry.file), weights)
    store.write_bytes(manifest_key("dogbreeds", version), manifest.to_json().encode())
    return manifest


def function_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model-sync function's environment (store, model root, model name); returns the model root."""
    root = tmp_path / "efs"
    monkeypatch.setenv("MODEL_STORE_URI", STORE)
    monkeypatch.setenv("MODEL_ROOT", str(root))
    monkeypatch.setenv("MODEL_NAME", "dogbreeds")
    return root


def test_an_s3_manifest_event_syncs_that_version_to_the_model_root(aws_endpoint: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN version v7 published to the bucket, and the function's environment
    boto3.client("s3").create_bucket(Bucket="breedserve-models")
    manifest = publish_fake_version("v7", tmp_path)
    root = function_environment(tmp_path, monkeypatch)
    event = {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "breedserve-models"},
                                                          "object": {"key": "models/dogbreeds/v7/manifest.json"}}}]}
    # WHEN S3 invokes the function with the manifest's ObjectCreated event
    answer = lambda_handler(event, None)
    # THEN the version is complete and verified under MODEL_ROOT, where the inference function reads it
    directory = root / "dogbreeds" / "versions" / "v7"
    assert answer["synced"] == [{"name": "dogbreeds", "version": "v7", "directory": str(directory),
                                 "downloaded": True, "bytes_downloaded": 256 * 1024}]
    assert verify_version_dir(directory, name="dogbreeds", checksums=True) == manifest


def test_a_direct_request_syncs_a_version_published_before_any_event(aws_endpoint: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN version v8 already in the bucket (its S3 event went nowhere), and the function's environment
    boto3.client("s3").create_bucket(Bucket="breedserve-models")
    manifest = publish_fake_version("v8", tmp_path)
    root = function_environment(tmp_path, monkeypatch)
    # WHEN deploy invokes the function directly for that version, twice
    first = lambda_handler({"version": "v8"}, None)
    second = lambda_handler({"version": "v8"}, None)
    # THEN the first copies it to the model root, and the second finds it complete and downloads nothing
    directory = root / "dogbreeds" / "versions" / "v8"
    assert verify_version_dir(directory, name="dogbreeds", checksums=True) == manifest
    assert [(a["synced"][0]["downloaded"], a["synced"][0]["bytes_downloaded"]) for a in (first, second)] == [
        (True, 256 * 1024), (False, 0)]
