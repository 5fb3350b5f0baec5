"""Functional tests for model_store.sync: all-or-nothing versions, concurrency, kills, aliases, pruning.

Sync never builds a model, so these tests publish a manifest and random "weights" bytes with
the right sha256 straight through the store API; they run against a file store and against a
moto S3 server on 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from model_store.exceptions import ChecksumError, VersionNotFoundError
from model_store.loader import local_versions, verify_version_dir
from model_store.manifest import Architecture, Manifest, Preprocessing, WeightsFile
from model_store.store import Store, manifest_key, open_store, version_key, write_alias
from model_store.sync import FAULT_ENV, sync, sync_version
from model_store.weights import sha256_file

WEIGHTS_BYTES = 3 * 1024 * 1024 + 123  # several 1 MB chunks, so a kill can land mid-file


def publish_fake(store: Store, name: str, version: str, *, size: int = WEIGHTS_BYTES, seed: int = 0,
                 created_at: str = "2026-01-01T00:00:00Z", alias: str | None = None,
                 wrong_sha256: bool = False) -> Manifest:
    """Publish random bytes as a version's weights, with a manifest recording their size and sha256."""
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"fake-{os.getpid()}-{name}-{version}-{seed}.bin"
    scratch.write_bytes(random.Random(seed).randbytes(size))
    try:
        digest = "0" * 64 if wrong_sha256 else sha256_file(scratch)
        entry = WeightsFile(file="model.safetensors", format="safetensors", sha256=digest, size=size)
        manifest = Manifest(name=name, version=version, arch=Architecture(depth=18), class_names=("a", "b"),
                            preprocess=Preprocessing.preset("resize224"), weights={"fp32": entry},
                            trained=False, created_at=created_at)
        store.put_file(version_key(name, version, entry.file), scratch)
    finally:
        scratch.unlink()
    store.write_bytes(manifest_key(name, version), manifest.to_json().encode())
    if alias:
        write_alias(store, name, alias, version)
    return manifest


@pytest.fixture(params=["file", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store: a directory, or a bucket on the moto server."""
    if request.param == "file":
        yield f"file://{tmp_path}/store"
        return
    request.getfixturevalue("aws_endpoint")
    boto3.client("s3").create_bucket(Bucket="models")
    yield "s3://models/team"


@pytest.fixture
def file_store_uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}/store"


def assert_no_partial_versions(root: Path, name: str = "dogs") -> list[str]:
    """Every entry of versions/ is a complete version whose files have the recorded sizes."""
    versions = root / name / "versions"
    seen = []
    for entry in sorted(versions.iterdir()) if versions.is_dir() else []:
        if entry.name.startswith("."):
            continue
        verify_version_dir(entry, name=name, checksums=False)
        seen.append(entry.name)
    return seen


# --- the basics ---------------------------------------------------------------------------------

def test_sync_by_version_makes_a_complete_verified_directory(store_uri: str, tmp_path: Path) -> None:
    # GIVEN v1 in the store
    manifest = publish_fake(open_store(store_uri), "dogs", "v1")
    # WHEN synced
    result = sync_version(store_uri, "dogs", tmp_path / "root", version="v1", progress=False)
    # THEN versions/v1 holds the manifest and the weights, sha256-verified, and nothing is left over
    assert result.directory == tmp_path / "root" / "dogs" / "versions" / "v1"
    assert result.downloaded and result.bytes_downloaded == WEIGHTS_BYTES
    assert verify_version_dir(result.directory, name="dogs", checksums=True) == manifest
    assert list((tmp_path / "root" / "dogs" / ".incoming").iterdir()) == []


def test_sync_by_alias_makes_a_relative_symlink(file_store_uri: str, tmp_path: Path) -> None:
    # GIVEN v1 with alias prod in the store
    publish_fake(open_store(file_store_uri), "dogs", "v1", alias="prod")
    # WHEN synced by alias
    directory = sync(file_store_uri, "dogs", tmp_path / "root", alias="prod", progress=False)
    # THEN the alias is a relative symlink into versions/, so the root can be mounted anywhere
    link = tmp_path / "root" / "dogs" / "prod"
    assert os.readlink(link) == "versions/v1"
    assert link.resolve() == directory.resolve()


def test_second_sync_skips_a_verified_version(file_store_uri: str, tmp_path: Path) -> None:
    # GIVEN v1 already synced
    publish_fake(open_store(file_store_uri), "dogs", "v1")
    first = sync_version(file_store_uri, "dogs", tmp_path / "root", version="v1", progress=False)
    inode = (first.directory / "model.safetensors").stat().st_ino
    # WHEN synced again
    again = sync_version(file_store_uri, "dogs", tmp_path / "root", version="v1", progress=False)
    # THEN nothing is downloaded and the very same files stay
    assert not again.downloaded and again.bytes_downloaded == 0
    assert (again.directory / "model.safetensors").stat().st_ino == inode


def test_damaged_local_copy_is_replaced(file_store_uri: str, tmp_path: Path) -> None:
    # GIVEN a synced v1 whose weights were later truncated on disk
    publish_fake(open_store(file_store_uri), "dogs", "v1")
    directory = sync(file_store_uri, "dogs", tmp_path / "root", version="v1", progress=False)
    os.truncate(directory / "model.safetensors", 1000)
    # WHEN synced again
    result = sync_version(file_store_uri, "dogs", tmp_path / "root", version="v1", progress=False)
    # THEN it is downloaded again and verifies
    assert result.downloaded
    verify_version_dir(directory, name="dogs", checksums=True)


def test_same_size_corruption_needs_the_checksums_flag(file_store_uri: str, tmp_path: Path) -> None:
    # GIVEN a synced v1 with one byte flipped (same size)
    publish_fake(open_store(file_store_uri), "dogs", "v1")
    root = tmp_path / "root"
    weights = sync(file_store_uri, "dogs", root, version="v1", progress=False) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[7] ^= 0x01
    weights.write_bytes(bytes(data))
    # WHEN synced with the default (sizes only) and then with checksums=True
    quick = sync_version(file_store_uri, "dogs", root, version="v1", progress=False)
    full = sync_version(file_store_uri, "dogs", root, version="v1", progress=False, checksums=True)
    # THEN only the full check notices, and it restores the published bytes
    assert not quick.downloaded and full.downloaded
    verify_version_dir(full.directory, name="dogs", checksums=True)


def test_store_object_not_matching_its_manifest_leaves_nothing(file_store_uri: str, tmp_path: Path) -> None:
    # GIVEN a version whose manifest records a wrong sha256
    publish_fake(open_store(file_store_uri), "dogs", "v1", wrong_sha256=True)
    # WHEN synced / THEN ChecksumError, no version directory and no leftovers
    with pytest.raises(ChecksumError, match="does not match its manifest"):
        sync(file_store_uri, "dogs", tmp_path / "root", version="v1", progress=False)
    assert local_versions(tmp_path / "root", "dogs") == []
    assert list((tmp_path / "root" / "dogs" / ".incoming").iterdir()) == []


def test_missing_version_in_store_lists_what_exists(file_store_uri: str, tmp_path: Path) -> None:
    publish_fake(open_store(file_store_uri), "dogs", "v1")
    with pytest.raises(VersionNotFoundError, match="no version 'v2'.*versions present: v1"):
        sync(file_store_uri, "dogs", tmp_path / "root", version="v2", progress=False)


# --- several processes at once ------------------------------------------------------------------

FORK = multiprocessing.get_context("fork")  # children inherit the imports: no 3 s torch import each


def _child_sync(result_file: Path, log_file: Path, fault: str | None, kwargs: dict[str, Any]) -> None:
    """Run one sync in a child process, logging to a file and recording the result as JSON."""
    if fault:
        os.environ[FAULT_ENV] = fault
    logger = logging.getLogger("model_store")
    logger.handlers[:] = [logging.FileHandler(log_file)]
    logger.setLevel(logging.INFO)
    result = sync_version(progress=False, **kwargs)
    result_file.write_text(json.dumps({"downloaded": result.downloaded, "directory": str(result.directory)}))


class SyncProcess:
    """`sync_version` in its own process (forked), as a second Lambda or a cron job would run it."""

    def __init__(self, workdir: Path, index: int, fault: str | None = None, **kwargs: Any) -> None:
        self.result_file = workdir / f"sync{index}.json"
        self.log_file = workdir / f"sync{index}.log"
        self.log_file.touch()
        self.process = FORK.Process(target=_child_sync, args=(self.result_file, self.log_file, fault, kwargs))

    def start(self) -> SyncProcess:
        self.process.start()
        return self

    def finish(self, timeout: float = 60) -> int | None:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
        return self.process.exitcode

    @property
    def log(self) -> str:
        return self.log_file.read_text()

    @property
    def result(self) -> dict[str, Any]:
        return dict(json.loads(self.result_file.read_text()))


class VersionsWatcher(threading.Thread):
    """Polls versions/ as a Lambda cold start would, recording any directory that is not complete."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.partial: list[str] = []
        self.polls = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                assert_no_partial_versions(self.root)
            except Exception as exc:  # noqa: BLE001 - any failure to read a listed version is what we hunt
                self.partial.append(repr(exc))
            self.polls += 1


class LockHolder:
    """Holds a version's lock from a separate process; killing it is what releases the lock.

    (Forked syncs inherit every descriptor of this test process, so neither a lock nor a pipe
    held here could be released reliably while they run.)
    """

    def __init__(self, path: Path) -> None:
        code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)")
        self.process = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline() == "locked\n"
        self.process.stdout.close()

    def release(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


def test_four_processes_syncing_one_version_download_it_once(store_uri: str, tmp_path: Path) -> None:
    # GIVEN v1 in the store, and the version lock held so that all four syncs start together
    publish_fake(open_store(store_uri), "dogs", "v1", size=8 * 1024 * 1024 + 5)
    root = tmp_path / "root"
    (root / "dogs" / ".locks").mkdir(parents=True)
    gate = LockHolder(root / "dogs" / ".locks" / "v1.lock")
    syncs = [SyncProcess(tmp_path, i, store_uri=store_uri, name="dogs", root=root, version="v1").start()
             for i in range(4)]
    watcher = VersionsWatcher(root)
    watcher.start()
    try:
        deadline = time.monotonic() + 60
        while not all("waiting for another sync" in s.log for s in syncs):
            assert time.monotonic() < deadline, [s.log for s in syncs]
            time.sleep(0.02)
        # WHEN the gate opens
        gate.release()
        codes = [s.finish() for s in syncs]
    finally:
        gate.release()
        watcher.stop.set()
        watcher.join()
    # THEN all succeed, exactly one downloaded, all got the same directory, nobody saw a partial version
    assert codes == [0, 0, 0, 0], [s.log for s in syncs]
    assert sorted(s.result["downloaded"] for s in syncs) == [False, False, False, True]
    assert {s.result["directory"] for s in syncs} == {str(root / "dogs" / "versions" / "v1")}
    assert watcher.partial == [] and watcher.polls > 0
    assert assert_no_partial_versions(root) == ["v1"]
    assert list((root / "dogs" / ".incoming").iterdir()) == []


# --- killed at each stage -----------------------------------------------------------------------

KILL_CASES = [
    ("file", "before-download"),
    ("file", "mid-download"),
    ("file", "before-rename"),
    ("file", "before-alias"),
    ("s3", "mid-download"),
]


@pytest.mark.parametrize(("kind", "stage"), KILL_CASES, ids=[f"{k}-{s}" for k, s in KILL_CASES])
def test_sync_killed_at_each_stage_leaves_no_partial_version(kind: str, stage: str, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    # GIVEN v1 synced behind alias prod, then v2 published and prod moved to it in the store
    if kind == "s3":
        request.getfixturevalue("aws_endpoint")
        boto3.client("s3").create_bucket(Bucket="models")
        uri = "s3://models"
    else:
        uri = f"file://{tmp_path}/store"
    store = open_store(uri)
    root = tmp_path / "root"
    publish_fake(store, "dogs", "v1", alias="prod")
    sync(uri, "dogs", root, alias="prod", progress=False)
    publish_fake(store, "dogs", "v2", seed=2)
    write_alias(store, "dogs", "prod", "v2")

    # WHEN a sync of prod is killed (SIGKILL) at the stage
    killed = SyncProcess(tmp_path, 0, fault=stage, store_uri=uri, name="dogs", root=root, alias="prod")
    exit_code = killed.start().finish()

    # THEN it died there, and readers see only complete versions with prod still on v1
    assert exit_code == -signal.SIGKILL, killed.log
    visible = assert_no_partial_versions(root)
    assert visible == (["v1", "v2"] if stage == "before-alias" else ["v1"])
    assert os.readlink(root / "dogs" / "prod") == "versions/v1"
    leftovers = list((root / "dogs" / ".incoming").iterdir())
    if stage == "mid-download":
        # the kill really landed half-way: a partial file sits in the scratch directory
        partial = [f for d in leftovers for f in d.iterdir()]
        assert partial and all(0 < f.stat().st_size < WEIGHTS_BYTES for f in partial)
    if stage == "before-rename":
        complete_but_hidden = [sorted(f.name for f in d.iterdir()) for d in leftovers]
        assert complete_but_hidden == [["manifest.json", "model.safetensors"]]

    # AND the next sync completes, cleans up, and moves the alias
    sync(uri, "dogs", root, alias="prod", progress=False)
    assert assert_no_partial_versions(root) == ["v1", "v2"]
    verify_version_dir(root / "dogs" / "versions" / "v2", name="dogs", checksums=True)
    assert os.readlink(root / "dogs" / "prod") == "versions/v2"
    assert list((root / "dogs" / ".incoming").iterdir()) == []
    assert not [p for p in (root / "dogs").iterdir() if p.name.endswith(".tmp")]


def test_unknown_fault_stage_is_refused(file_store_uri: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a typo in the fault variable / WHEN syncing / THEN it fails loudly rather than never faulting
    publish_fake(open_store(file_store_uri), "dogs", "v1")
    monkeypatch.setenv(FAULT_ENV, "mid-dowload")
    with pytest.raises(ValueError, match="mid-dowload"):
        sync(file_store_uri, "dogs", tmp_path / "root", version="v1", progress=False)


# --- aliases and pruning ------------------------------------------------------------------------

def test_alias_swap_is_atomic_for_readers(file_store_uri: str, tmp_path: Path) -> None:
    # GIVEN v1 and v2 synced, alias prod on v1
    store = open_store(file_store_uri)
    root = tmp_path / "root"
    publish_fake(store, "dogs", "v1", alias="prod")
    publish_fake(store, "dogs", "v2", seed=2, size=1000)
    sync(file_store_uri, "dogs", root, version="v2", progress=False)
    sync(file_store_uri, "dogs", root, alias="prod", progress=False)
    link = root / "dogs" / "prod"
    seen: set[str] = set()
    missing: list[str] = []
    done = threading.Event()

    def swap() -> None:
        for i in range(40):
            write_alias(store, "dogs", "prod", "v2" if i % 2 == 0 else "v1")
            sync(file_store_uri, "dogs", root, alias="prod", progress=False)
        done.set()

    # WHEN the alias flips 40 times while a reader keeps opening the manifest through it
    writer = threading.Thread(target=swap)
    writer.start()
    while not done.is_set():
        try:
            seen.add(Manifest.read(link / "manifest.json").version)
        except Exception as exc:  # noqa: BLE001 - a missing link or manifest, whatever it raises
            missing.append(repr(exc))
    writer.join()
    # THEN the reader always found a complete version, and saw both
    assert missing == []
    assert seen == {"v1", "v2"}


def test_keep_prunes_oldest_versions_no_alias_points_to(file_store_uri: str, tmp_path: Path) -> None:
    # GIVEN v1..v4 published on successive days, alias stable -> v1, all synced
    store = open_store(file_store_uri)
    root = tmp_path / "root"
    for day in range(1, 5):
        publish_fake(store, "dogs", f"v{day}", seed=day, size=1000, created_at=f"2026-01-0{day}T00:00:00Z")
    write_alias(store, "dogs", "stable", "v1")
    sync(file_store_uri, "dogs", root, alias="stable", progress=False)
    for version in ("v2", "v3"):
        sync(file_store_uri, "dogs", root, version=version, progress=False)
    # WHEN v4 is synced keeping 2
    result = sync_version(file_store_uri, "dogs", root, version="v4", keep=2, progress=False)
    # THEN v2 goes; v3 and v4 are the two newest and v1 is aliased
    assert result.pruned == ("v2",)
    assert local_versions(root, "dogs") == ["v1", "v3", "v4"]
    # AND WHEN old v2 comes back with keep=1, it is kept (just synced) but v3 goes
    result = sync_version(file_store_uri, "dogs", root, version="v2", keep=1, progress=False)
    assert result.pruned == ("v3",)
    assert local_versions(root, "dogs") == ["v1", "v2", "v4"]
    assert list((root / "dogs" / ".incoming").iterdir()) == []


def test_keep_skips_a_version_another_process_is_syncing(file_store_uri: str, tmp_path: Path) -> None:
    # GIVEN v1 and v2 synced, and another process holding v1's lock (re-syncing it right now)
    store = open_store(file_store_uri)
    root = tmp_path / "root"
    for day in (1, 2):
        publish_fake(store, "dogs", f"v{day}", seed=day, size=1000, created_at=f"2026-01-0{day}T00:00:00Z")
        sync(file_store_uri, "dogs", root, version=f"v{day}", progress=False)
    busy = os.open(root / "dogs" / ".locks" / "v1.lock", os.O_RDWR)
    fcntl.flock(busy, fcntl.LOCK_EX)
    try:
        # WHEN v2 is synced keeping 1
        result = sync_version(file_store_uri, "dogs", root, version="v2", keep=1, progress=False)
    finally:
        os.close(busy)
    # THEN v1 is left alone
    assert result.pruned == ()
    assert local_versions(root, "dogs") == ["v1", "v2"]
