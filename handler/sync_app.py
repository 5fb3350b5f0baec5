"""The model-sync function: a version in S3 becomes a complete directory on EFS.

Two kinds of event start it, and both end in `model_store.sync.sync_version`, which works
atomically (readers never see a partial version) and idempotently (a complete version costs no
download):

- S3's `ObjectCreated` for `<prefix>/<name>/<version>/manifest.json` (the manifest is written
  last by `publish`, so the version is complete when it arrives);
- a direct, synchronous invocation `{"version": "<version>"}` or `{"alias": "<alias>"}`: what
  `python -m infra deploy` sends for the configured version, which may have been published
  before this function existed and so never produced an event for it.

The same container image as the inference function runs it, with CMD
`handler.sync_app.lambda_handler`. Environment (set by `python -m infra deploy`):
`MODEL_STORE_URI` (`s3://bucket/prefix`), `MODEL_ROOT` (the EFS mount, default `/mnt/models`),
`MODEL_NAME` (only this model is synced).
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from model_store.manifest import MANIFEST_FILE, check_name
from model_store.sync import sync_version

log = logging.getLogger("breedserve.sync")
log.setLevel(logging.INFO)

DIRECT_KEYS = ("version", "alias")


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


def direct_request(event: Any) -> tuple[str, str] | None:
    """("version"|"alias", name) from a direct invocation; None for anything else (S3's events).

    A request holds exactly one of the two keys and nothing else, so an ambiguous one fails
    instead of syncing something the caller did not mean.
    """
    if not isinstance(event, Mapping) or not any(key in event for key in DIRECT_KEYS):
        return None
    given = [key for key in DIRECT_KEYS if key in event]
    extra = sorted(set(event) - set(DIRECT_KEYS))
    if len(given) != 1 or extra:
        raise ValueError('a direct sync request is {"version": V} or {"alias": A}, '
                         f"not one with the keys {sorted(event)}")
    kind = given[0]
    return kind, check_name(kind, event[kind])


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """Sync the requested versions; errors propagate so S3's retries, the caller and the logs see them."""
    store_uri = os.environ["MODEL_STORE_URI"]
    root = os.environ.get("MODEL_ROOT", "/mnt/models")
    name = os.environ.get("MODEL_NAME", "dogbreeds")
    request = direct_request(event)
    ignored: list[str] = []
    if request is not None:
        requests = [request]
    else:
        versions, ignored = versions_in_event(event, store_uri, name)
        requests = [("version", version) for version in versions]
    for key in ignored:
        log.info("ignoring %s: not a manifest of %s under %s", key, name, store_uri)
    synced = []
    for kind, value in requests:
        if kind == "alias":
            result = sync_version(store_uri, name, root, alias=value, progress=False)
        else:
            result = sync_version(store_uri, name, root, version=value, progress=False)
        log.info("synced %s/%s to %s (%s)", name, result.version, result.directory,
                 f"{result.bytes_downloaded} bytes downloaded" if result.downloaded else "already complete")
        synced.append({"name": name, "version": result.version, "directory": str(result.directory),
                       "downloaded": result.downloaded, "bytes_downloaded": result.bytes_downloaded})
    return {"synced": synced, "ignored": len(ignored)}
