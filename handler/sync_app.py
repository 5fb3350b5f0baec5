"""The model-sync function: a new version in S3 becomes a complete directory on EFS.

S3 invokes it on `ObjectCreated` for `<prefix>/<name>/<version>/manifest.json` (the manifest is
written last by `publish`, so the version is complete when it arrives). The same container
image as the inference function runs it, with CMD `handler.sync_app.lambda_handler`.
`model_store.sync.sync` does the work atomically: readers never see a partial version.

Environment (set by `python -m infra deploy`): `MODEL_STORE_URI` (`s3://bucket/prefix`),
`MODEL_ROOT` (the EFS mount, default `/mnt/models`), `MODEL_NAME` (only this model is synced).
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from model_store.manifest import MANIFEST_FILE, check_name
from model_store.sync import sync

log = logging.getLogger("breedserve.sync")
log.setLevel(logging.INFO)


def versions_in_event(event: Any, store_uri: str, model_name: str) -> tuple[list[str], list[str]]:
    """(versions to sync, keys ignored) from an S3 notification, for this store and model only."""
    parsed = urllib.parse.urlparse(store_uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"MODEL_STORE_URI must be s3://bucket/prefix, not {store_uri!r}")
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    expected_start = f"{prefix}/{model_name}/" if prefix else f"{model_name}/"
    versions: list[str] = []
    ignored: list[str] = []
    records = event.get("Records") if isinstance(event, Mapping) else None
    for record in records if isinstance(records, list) else []:
        s3 = record.get("s3", {}) if isinstance(record, Mapping) else {}
        key = urllib.parse.unquote_plus(str(s3.get("object", {}).get("key", "")))
        version = key[len(expected_start):].removesuffix("/" + MANIFEST_FILE)
        if (s3.get("bucket", {}).get("name") != bucket or not key.startswith(expected_start)
                or not key.endswith("/" + MANIFEST_FILE) or "/" in version):
            ignored.append(key)
            continue
        check_name("version", version)
        if version not in versions:
            versions.append(version)
    return versions, ignored


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """Sync every version named in the event; errors propagate so S3's retries and the logs see them."""
    store_uri = os.environ["MODEL_STORE_URI"]
    root = os.environ.get("MODEL_ROOT", "/mnt/models")
    name = os.environ.get("MODEL_NAME", "dogbreeds")
    versions, ignored = versions_in_event(event, store_uri, name)
    for key in ignored:
        log.info("ignoring %s: not a manifest of %s under %s", key, name, store_uri)
    synced = []
    for version in versions:
        directory = sync(store_uri, name, root, version=version, progress=False)
        log.info("synced %s/%s to %s", name, version, directory)
        synced.append({"name": name, "version": version, "directory": str(directory)})
    return {"synced": synced, "ignored": len(ignored)}
