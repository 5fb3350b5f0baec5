"""Unit tests for model_store.store: URIs, key layout, the file store, progress, S3 error mapping."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from botocore.stub import Stubber

from model_store.exceptions import ManifestError, StoreError, VersionNotFoundError
from model_store.manifest import Architecture, Manifest, Preprocessing, WeightsFile
from model_store.store import (
    FileStore,
    ProgressLine,
    S3Store,
    alias_key,
    list_aliases,
    list_names,
    list_versions,
    manifest_key,
    open_store,
    read_alias,
    read_manifest,
    s3_retry_config,
    version_key,
    write_alias,
)


def _manifest(name: str = "dogs", version: str = "v1") -> Manifest:
    weights = WeightsFile(file="model.safetensors", format="safetensors", sha256="0" * 64, size=3)
    return Manifest(name=name, version=version, arch=Architecture(depth=18), class_names=("a", "b"),
                    preprocess=Preprocessing.preset("resize224"), weights={"fp32": weights}, trained=False)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


# --- URIs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["file:///abs/dir", "file://localhost/abs/dir", "file:///abs/dir/"])
def test_file_uris_open_a_file_store(uri: str) -> None:
    # GIVEN an absolute file URI / WHEN opened
    store = open_store(uri)
    # THEN it is a file store rooted at the absolute path
    assert isinstance(store, FileStore)
    assert store.root == Path("/abs/dir")


def test_s3_uri_opens_an_s3_store_with_bucket_and_prefix() -> None:
    # GIVEN an S3 URI with a nested prefix / WHEN opened
    store = open_store("s3://my-models/team/prod/")
    # THEN bucket and prefix are split and keys live under the prefix
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("my-models", "team/prod")
    assert store.describe("dogs/v1/manifest.json") == "s3://my-models/team/prod/dogs/v1/manifest.json"


def test_s3_store_without_prefix_uses_bucket_root() -> None:
    store = open_store("s3://my-models")
    assert isinstance(store, S3Store)
    assert store.describe("dogs/aliases/prod.json") == "s3://my-models/dogs/aliases/prod.json"


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("file://relative/dir", "absolute path"),
        ("file:relative/dir", "not an absolute path"),
        ("file:///abs/../etc", "'..'"),
        ("http://example.com/models", "unsupported store URI"),
        ("/abs/dir", "unsupported store URI"),
        ("", "no store URI"),
        ("s3://", "not a valid S3 bucket"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket"),
        ("s3://bucket/a//b", "prefix"),
        ("s3://bucket/x?versionId=1", "query"),
    ],
)
def test_invalid_store_uris_are_refused_clearly(uri: str, says: str) -> None:
    # GIVEN a URI that is not file:///abs or s3://bucket/prefix / WHEN opened / THEN a StoreError says why
    with pytest.raises(StoreError) as caught:
        open_store(uri)
    assert says in str(caught.value)


# --- key layout ---------------------------------------------------------------------------------

def test_key_layout_matches_the_documented_one() -> None:
    # GIVEN a name, version and alias / WHEN keys are built / THEN they follow <name>/<version>/<file>
    assert version_key("dogs", "v1", "model.safetensors") == "dogs/v1/model.safetensors"
    assert manifest_key("dogs", "v1") == "dogs/v1/manifest.json"
    assert alias_key("dogs", "prod") == "dogs/aliases/prod.json"


@pytest.mark.parametrize("bad", ["../x", "a/../b", "/abs", "a//b", ".hidden", "a b"])
def test_keys_that_could_escape_or_differ_are_refused(store: FileStore, bad: str) -> None:
    # GIVEN a key with a traversal, empty segment, hidden or odd name / WHEN written / THEN StoreError
    with pytest.raises(StoreError, match="invalid store key"):
        store.write_bytes(bad, b"x")


def test_version_named_aliases_is_reserved() -> None:
    # GIVEN the version name that would collide with the alias directory / THEN it is refused
    with pytest.raises(ManifestError, match="reserved"):
        version_key("dogs", "aliases", "manifest.json")


def test_only_versions_with_a_manifest_exist(store: FileStore) -> None:
    # GIVEN v1 complete, v2 with weights but no manifest (a publish in progress), and an alias
    store.write_bytes("dogs/v1/model.safetensors", b"abc")
    store.write_bytes(manifest_key("dogs", "v1"), _manifest().to_json().encode())
    store.write_bytes("dogs/v2/model.safetensors", b"abc")
    write_alias(store, "dogs", "prod", "v1")
    # WHEN versions are listed / THEN only v1 exists, and the alias is not mistaken for a version
    assert list_versions(store, "dogs") == ["v1"]
    assert list_aliases(store, "dogs") == {"prod": "v1"}
    assert list_names(store) == ["dogs"]


def test_alias_file_records_version_and_time(store: FileStore) -> None:
    # GIVEN a published v1 / WHEN an alias is written
    store.write_bytes(manifest_key("dogs", "v1"), _manifest().to_json().encode())
    write_alias(store, "dogs", "prod", "v1")
    # THEN the alias JSON holds the version and an update time
    data = json.loads(store.read_bytes(alias_key("dogs", "prod")))
    assert data["version"] == "v1" and data["updated_at"].endswith("Z")
    assert read_alias(store, "dogs", "prod") == "v1"


def test_alias_to_an_unpublished_version_is_refused(store: FileStore) -> None:
    # GIVEN no v9 / WHEN an alias is pointed at it / THEN VersionNotFoundError
    with pytest.raises(VersionNotFoundError, match="v9"):
        write_alias(store, "dogs", "prod", "v9")


def test_missing_alias_lists_the_aliases_present(store: FileStore) -> None:
    store.write_bytes(manifest_key("dogs", "v1"), _manifest().to_json().encode())
    write_alias(store, "dogs", "stable", "v1")
    with pytest.raises(VersionNotFoundError, match="aliases present: stable"):
        read_alias(store, "dogs", "prod")


def test_corrupt_alias_file_is_a_clear_store_error(store: FileStore) -> None:
    store.write_bytes(alias_key("dogs", "prod"), b"{not json")
    with pytest.raises(StoreError, match="not a valid alias file"):
        read_alias(store, "dogs", "prod")


def test_missing_version_lists_the_versions_present(store: FileStore) -> None:
    # GIVEN v1 only / WHEN v2's manifest is read / THEN the error names v1
    store.write_bytes(manifest_key("dogs", "v1"), _manifest().to_json().encode())
    with pytest.raises(VersionNotFoundError, match="versions present: v1"):
        read_manifest(store, "dogs", "v2")


def test_manifest_under_the_wrong_version_is_refused(store: FileStore) -> None:
    # GIVEN v2's manifest stored under v1 (a copy mistake) / WHEN read as v1 / THEN ManifestError
    store.write_bytes(manifest_key("dogs", "v1"), _manifest(version="v2").to_json().encode())
    with pytest.raises(ManifestError, match="describes dogs/v2, not dogs/v1"):
        read_manifest(store, "dogs", "v1")


# --- file store ---------------------------------------------------------------------------------

def test_file_store_round_trip(store: FileStore, tmp_path: Path) -> None:
    # GIVEN a local file
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    # WHEN it is put, listed, fetched, and deleted
    store.put_file("dogs/v1/model.safetensors", source)
    store.write_bytes("dogs/v1/manifest.json", b"{}")
    listed = store.list_keys("dogs/")
    target = tmp_path / "out" / "copy.bin"
    target.parent.mkdir()
    store.get_file("dogs/v1/model.safetensors", target)
    # THEN bytes survive and the listing holds exactly the two keys
    assert target.read_bytes() == source.read_bytes()
    assert listed == ["dogs/v1/manifest.json", "dogs/v1/model.safetensors"]
    assert store.size("dogs/v1/model.safetensors") == source.stat().st_size
    store.delete("dogs/v1/model.safetensors")
    store.delete("dogs/v1/manifest.json")
    assert not store.exists("dogs/v1/manifest.json")
    assert store.list_keys("") == []
    assert not (store.root / "dogs").exists()  # emptied directories go too


def test_file_store_write_is_atomic_when_interrupted(store: FileStore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an existing object
    store.write_bytes("dogs/aliases/prod.json", b'{"version": "v1"}')

    # WHEN a rewrite dies at the moment of the rename
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreError, match="disk vanished"):
        store.write_bytes("dogs/aliases/prod.json", b'{"version": "v2"}')
    monkeypatch.undo()
    # THEN the old content is intact and no temporary file is left behind
    assert store.read_bytes("dogs/aliases/prod.json") == b'{"version": "v1"}'
    assert sorted(p.name for p in (store.root / "dogs" / "aliases").iterdir()) == ["prod.json"]


def test_file_store_listing_ignores_temporary_files(store: FileStore) -> None:
    # GIVEN a temporary file another writer is filling right now
    store.write_bytes("dogs/v1/manifest.json", b"{}")
    (store.root / "dogs" / "v1" / ".model.safetensors.abc.tmp").write_bytes(b"partial")
    # WHEN listed / THEN only real keys show
    assert store.list_keys("dogs/") == ["dogs/v1/manifest.json"]


def test_file_store_missing_key_is_a_clear_error(store: FileStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such key"):
        store.read_bytes("dogs/v1/manifest.json")
    with pytest.raises(StoreError, match="no such key"):
        store.get_file("dogs/v1/model.safetensors", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_file_store_reports_progress_through_a_callback(store: FileStore, tmp_path: Path) -> None:
    # GIVEN a 2.5 MB file and a callback collecting byte counts
    source = tmp_path / "w.bin"
    source.write_bytes(b"\0" * (2 * 1024 * 1024 + 512 * 1024))
    seen: list[int] = []
    # WHEN it is uploaded
    store.put_file("dogs/v1/model.safetensors", source, progress=seen.append)
    # THEN the callback saw several increments adding up to the size
    assert len(seen) == 3 and sum(seen) == source.stat().st_size


# --- progress line ------------------------------------------------------------------------------

def test_progress_line_is_silent_when_stderr_is_not_a_terminal() -> None:
    # GIVEN a non-terminal stream and no explicit request / WHEN bytes move / THEN nothing is printed
    stream = io.StringIO()
    with ProgressLine("dogs/v1", 100, stream=stream) as line:
        line(50)
        line(50)
    assert stream.getvalue() == ""


def test_progress_line_when_asked_shows_done_total_and_rate() -> None:
    # GIVEN progress asked for explicitly / WHEN 2 MB of 4 MB move and the line closes
    stream = io.StringIO()
    with ProgressLine("dogs/v1 weights", 4_000_000, stream=stream, enabled=True, interval=0) as line:
        line(2_000_000)
    # THEN one updating line shows MB done / total and MB/s, ending with a newline
    text = stream.getvalue()
    assert text.startswith("\rdogs/v1 weights  2.0/4.0 MB") and "MB/s" in text
    assert text.endswith("\n") and text.count("\n") == 1


# --- S3 client configuration and error mapping (no network: botocore Stubber) -------------------

def test_s3_client_retries_throttling_in_standard_mode() -> None:
    # GIVEN no retry settings in the environment / WHEN an S3 store is opened
    store = open_store("s3://models")
    assert isinstance(store, S3Store)
    # THEN its client uses botocore's standard retry mode with 5 attempts
    assert store.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}


def test_s3_retry_settings_follow_the_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "8")
    assert s3_retry_config() == {"mode": "adaptive", "total_max_attempts": 8}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "zero")
    with pytest.raises(StoreError, match="AWS_MAX_ATTEMPTS"):
        s3_retry_config()


def test_s3_missing_object_reads_as_absent_and_errors_clearly() -> None:
    # GIVEN S3 answering 404 to a HEAD and NoSuchKey to a GET
    store = open_store("s3://models/pfx")
    assert isinstance(store, S3Store)
    with Stubber(store.client) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404,
                              expected_params={"Bucket": "models", "Key": "pfx/dogs/v1/manifest.json"})
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        # WHEN asked / THEN exists() is False and read_bytes names the object
        assert store.exists("dogs/v1/manifest.json") is False
        with pytest.raises(StoreError, match=r"s3://models/pfx/dogs/v1/manifest.json: no such key"):
            store.read_bytes("dogs/v1/manifest.json")


@pytest.mark.parametrize(
    ("code", "status", "says"),
    [("NoSuchBucket", 404, "bucket does not exist"), ("AccessDenied", 403, "access denied"),
     ("InternalError", 500, "InternalError")],
)
def test_s3_errors_become_one_store_error_line(code: str, status: int, says: str) -> None:
    store = open_store("s3://models")
    assert isinstance(store, S3Store)
    with Stubber(store.client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(StoreError) as caught:
            store.write_bytes("dogs/aliases/prod.json", b"{}")
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("s3://models/dogs/aliases/prod.json: ")
