"""Sync a published version from a store into a model root (the EFS directory), all or nothing.

How a version appears, and why nobody ever sees half of one:

1. Take the version's lock, `<root>/<name>/.locks/<version>.lock` (fcntl.flock; EFS supports it).
   Other processes syncing the same version wait here, then find it complete and skip it.
2. Remove leftovers of killed syncs from `<root>/<name>/.incoming/`.
3. If `versions/<version>/` exists and its files have the recorded sizes (and sha256, with
   `checksums=True`), it is kept: syncing is idempotent and costs no download.
4. Otherwise download into `.incoming/<version>.<random>/` (same filesystem), check every
   weights variant's size and sha256, write the manifest last, fsync, and `os.rename` the
   directory into `versions/` in one step.
5. An alias is a relative symlink `<root>/<name>/<alias> -> versions/<version>`, replaced with
   `os.replace` so readers see the old target or the new one, never nothing.
6. `keep=N` keeps the N newest versions (by manifest `created_at`) plus every aliased one and
   the one just synced; the rest are renamed out of `versions/` first, then deleted.

The skip check in step 3 verifies sizes only by default: a full sha256 of a 100 MB ResNet-50
costs about a second on a Lambda-sized CPU, and the loader re-checks sha256 before serving
anyway. `checksums=True` (`sync --verify-checksums`) re-hashes and replaces a damaged copy.

For tests, `BREEDSERVE_SYNC_FAULT=<stage>` makes the process SIGKILL itself at that stage
(before-download, mid-download, before-rename, before-alias), as a crash or a timeout would.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model_store.exceptions import ChecksumError, ManifestError, StoreError, VariantError
from model_store.loader import (
    VERSIONS_DIR,
    local_aliases,
    local_versions,
    read_local_manifest,
    verify_version_dir,
    verify_weights_file,
)
from model_store.manifest import MANIFEST_FILE, check_name
from model_store.store import (
    ProgressCallback,
    ProgressLine,
    Store,
    fsync_dir,
    open_store,
    read_alias,
    read_manifest,
    version_key,
)

log = logging.getLogger(__name__)

FAULT_ENV = "BREEDSERVE_SYNC_FAULT"
FAULT_STAGES = ("before-download", "mid-download", "before-rename", "before-alias")
LOCKS_DIR = ".locks"
INCOMING_DIR = ".incoming"
_MODEL_LOCK = ".model.lock"  # versions never start with '.', so this cannot clash with one
_RESERVED_ALIASES = {VERSIONS_DIR}


@dataclass(frozen=True)
class SyncResult:
    """What a sync did: where the version is, whether it was downloaded, what was pruned."""

    name: str
    version: str
    directory: Path
    downloaded: bool
    bytes_downloaded: int
    alias: str | None = None
    pruned: tuple[str, ...] = ()


def sync(store_uri: str, name: str, root: Path | str, *, version: str | None = None, alias: str | None = None,
         keep: int | None = None, progress: bool = True, checksums: bool = False) -> Path:
    """Make `root/<name>/versions/<version>/` complete (or leave it absent); returns that directory."""
    return sync_version(store_uri, name, root, version=version, alias=alias, keep=keep,
                        progress=progress, checksums=checksums).directory


def sync_version(store_uri: str, name: str, root: Path | str, *, version: str | None = None,
                 alias: str | None = None, keep: int | None = None, progress: bool = True,
                 checksums: bool = False) -> SyncResult:
    """`sync`, reporting what happened (the CLI prints it; tests count downloads with it)."""
    check_name("name", name)
    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version or alias")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if alias is not None:
        check_name("alias", alias)
        if alias in _RESERVED_ALIASES:
            raise ManifestError(f"{alias!r} cannot be an alias: it is the name of the versions directory")
    store = open_store(store_uri)
    if alias is not None:
        version = read_alias(store, name, alias)
    assert version is not None
    check_name("version", version)
    paths = _ModelPaths(Path(root).absolute(), name)
    paths.create()

    with _flock(paths.lock(version), f"{name}/{version}"):
        _clean_incoming(paths, version)
        final = paths.versions / version
        downloaded, nbytes = False, 0
        if not _usable(final, name, version, checksums):
            if final.exists():
                _retire(paths, version)
            nbytes = _download(store, paths, name, version, progress)
            downloaded = True
        else:
            log.info("%s/%s is already complete in %s", name, version, final)
        if alias is not None:
            with _flock(paths.model_lock, f"{name} aliases"):
                _fault("before-alias")
                _point_alias(paths, alias, version)
        pruned = _prune(paths, keep, protect=version) if keep is not None else ()
    return SyncResult(name=name, version=version, directory=final, downloaded=downloaded,
                      bytes_downloaded=nbytes, alias=alias, pruned=pruned)


class _ModelPaths:
    """The directories of one model under a root."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.model = root / name
        self.versions = self.model / VERSIONS_DIR
        self.locks = self.model / LOCKS_DIR
        self.incoming = self.model / INCOMING_DIR

    def create(self) -> None:
        for directory in (self.versions, self.locks, self.incoming):
            directory.mkdir(parents=True, exist_ok=True)

    def lock(self, version: str) -> Path:
        return self.locks / f"{version}.lock"

    @property
    def model_lock(self) -> Path:
        return self.locks / _MODEL_LOCK

    def scratch(self, version: str) -> Path:
        """A fresh name in `.incoming/` for this version; `<version>.<random>`."""
        return self.incoming / f"{version}.{secrets.token_hex(6)}"


@contextmanager
def _flock(path: Path, what: str, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `path`; yields False (without waiting) when busy and not `blocking`.

    The kernel drops the lock when the process dies, so a killed sync never blocks the next one.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            if not blocking:
                yield False
                return
            log.info("waiting for another sync of %s (lock %s)", what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def _fault(stage: str) -> None:
    """Test hook: die here, as abruptly as a kill -9 or a Lambda timeout would."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    if wanted not in FAULT_STAGES:
        raise ValueError(f"{FAULT_ENV}={wanted!r}: expected one of {', '.join(FAULT_STAGES)}")
    if wanted == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def _usable(directory: Path, name: str, version: str, checksums: bool) -> bool:
    """Is an existing version directory intact? A damaged one is logged and will be replaced."""
    if not directory.exists():
        return False
    try:
        verify_version_dir(directory, name=name, version=version, checksums=checksums)
    except (ManifestError, ChecksumError, VariantError) as exc:
        log.warning("replacing damaged %s: %s", directory, exc)
        return False
    return True


def _download(store: Store, paths: _ModelPaths, name: str, version: str, progress: bool) -> int:
    """Download, verify and rename one version into place; returns the bytes downloaded."""
    manifest, manifest_bytes = read_manifest(store, name, version)
    _fault("before-download")
    scratch = paths.scratch(version)
    scratch.mkdir(mode=0o755)
    total = 0
    try:
        for variant, weights in manifest.weights.items():
            key = version_key(name, version, weights.file)
            log.info("downloading %s (%s, %.1f MB)", store.describe(key), variant, weights.size / 1e6)
            with ProgressLine(f"{name}/{version} {weights.file}", weights.size,
                              enabled=None if progress else False) as line:
                store.get_file(key, scratch / weights.file, progress=_FaultingProgress(line, scratch))
            try:
                verify_weights_file(scratch, weights, checksum=True)
            except ChecksumError as exc:
                raise ChecksumError(
                    f"download of {store.describe(key)} does not match its manifest: {exc}"
                ) from exc
            _fsync_file(scratch / weights.file)
            total += weights.size
        # The manifest goes in last: a directory with a manifest is a complete version.
        (scratch / MANIFEST_FILE).write_bytes(manifest_bytes)
        _fsync_file(scratch / MANIFEST_FILE)
        scratch.chmod(0o755)
        fsync_dir(scratch)
        _fault("before-rename")
        os.rename(scratch, paths.versions / version)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    fsync_dir(paths.versions)
    log.info("synced %s/%s into %s (%.1f MB)", name, version, paths.versions / version, total / 1e6)
    return total


class _FaultingProgress:
    """Progress callback that also serves the `mid-download` fault.

    The fault fires once some bytes of the file are on disk in the scratch directory (boto3
    writes from another thread, so "bytes received" alone would not prove that).
    """

    def __init__(self, line: ProgressCallback, scratch: Path) -> None:
        self._line = line
        self._scratch = scratch
        self._armed = os.environ.get(FAULT_ENV) == "mid-download"

    def __call__(self, nbytes: int) -> None:
        self._line(nbytes)
        if self._armed and _holds_bytes(self._scratch):
            _fault("mid-download")


def _holds_bytes(directory: Path) -> bool:
    for entry in directory.iterdir():
        try:
            if entry.stat().st_size > 0:
                return True
        except FileNotFoundError:
            continue  # renamed by the downloader meanwhile
    return False


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _retire(paths: _ModelPaths, version: str) -> None:
    """Take a version out of `versions/` in one rename, then delete it (caller holds its lock)."""
    doomed = paths.scratch(version)
    os.rename(paths.versions / version, doomed)
    fsync_dir(paths.versions)
    shutil.rmtree(doomed, ignore_errors=True)


def _clean_incoming(paths: _ModelPaths, version: str) -> None:
    """Delete what killed syncs left in `.incoming/` (caller holds `version`'s lock).

    Leftovers of this version are stale by definition (their owner would hold the lock). For
    other versions, a leftover is stale only if its lock is free right now.
    """
    for entry in sorted(paths.incoming.iterdir()):
        owner = entry.name.rsplit(".", 1)[0]
        if owner == version:
            log.info("removing %s left by an interrupted sync", entry)
            _remove(entry)
            continue
        try:
            check_name("version", owner)
        except ManifestError:
            _remove(entry)
            continue
        with _flock(paths.lock(owner), f"{paths.model.name}/{owner}", blocking=False) as free:
            if free:
                log.info("removing %s left by an interrupted sync", entry)
                _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _point_alias(paths: _ModelPaths, alias: str, version: str) -> None:
    """Swap `<model>/<alias>` to `versions/<version>` atomically (caller holds the model lock)."""
    link = paths.model / alias
    if link.exists() and not link.is_symlink():
        raise StoreError(f"{link} exists and is not an alias symlink; move it away and sync again")
    for stale in paths.model.glob(f".{alias}.*.tmp"):
        stale.unlink(missing_ok=True)  # a swap killed between symlink and replace
    if link.is_symlink() and os.readlink(link) == f"{VERSIONS_DIR}/{version}":
        return
    tmp = paths.model / f".{alias}.{secrets.token_hex(6)}.tmp"
    os.symlink(f"{VERSIONS_DIR}/{version}", tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(paths.model)
    log.info("alias %s/%s -> %s", paths.model.name, alias, version)


def _prune(paths: _ModelPaths, keep: int, *, protect: str) -> tuple[str, ...]:
    """Delete versions beyond the `keep` newest that no alias points to (never `protect`)."""
    with _flock(paths.model_lock, f"{paths.model.name} aliases"):
        aliased = set(local_aliases(paths.root, paths.model.name).values())
        versions = sorted(local_versions(paths.root, paths.model.name),
                          key=lambda v: _age_key(paths.versions / v), reverse=True)
        pruned = []
        for version in versions[keep:]:
            if version in aliased or version == protect:
                continue
            with _flock(paths.lock(version), f"{paths.model.name}/{version}", blocking=False) as free:
                if not free:
                    continue  # someone is syncing it right now: it is wanted
                _retire(paths, version)
                pruned.append(version)
                log.info("pruned %s/%s", paths.model.name, version)
    return tuple(pruned)


def _age_key(directory: Path) -> tuple[str, int, str]:
    """Newest first by manifest `created_at`, then by when it was synced, then by name."""
    try:
        created = read_local_manifest(directory).created_at
    except ManifestError:
        created = ""
    try:
        synced = (directory / MANIFEST_FILE).stat().st_mtime_ns
    except OSError:
        synced = 0
    return (created, synced, directory.name)
