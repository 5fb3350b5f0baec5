"""Model stores: where published versions live, as keys in S3 or in a local directory.

Both stores hold the same layout, so publishing, syncing and listing never care which one
they talk to:

    <name>/<version>/model.safetensors
    <name>/<version>/manifest.json          written last: a version without it does not exist
    <name>/aliases/<alias>.json             {"version": ..., "updated_at": ...}

`file:///abs/dir` is the embedded default (no AWS needed). `s3://bucket/prefix` uses boto3
with botocore's standard retry mode, so throttling (SlowDown) and 5xx answers are retried with
backoff before a StoreError says what failed and how often it was tried. boto3 itself honours
`AWS_ENDPOINT_URL` (how the tests reach a moto server); `AWS_RETRY_MODE` and
`AWS_MAX_ATTEMPTS` override our retry defaults.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol, Self
from urllib.parse import quote, unquote, urlsplit

from model_store.exceptions import ManifestError, StoreError, VersionNotFoundError
from model_store.manifest import MANIFEST_FILE, Manifest, check_name, utc_now

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes moved since the last call (the boto3 `Callback` convention)."""
Progress = bool | ProgressCallback | None
"""`True`: a progress line on stderr when it is a terminal; a callable: your own; None/False: silent."""

ALIASES_DIR = "aliases"
DEFAULT_S3_RETRY_MODE = "standard"
DEFAULT_S3_MAX_ATTEMPTS = 5
_CHUNK = 1024 * 1024
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# S3 bucket naming rules (general purpose buckets): 3-63 chars, lower case, digits, dots, hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class Store(Protocol):
    """What publishing, syncing and listing need from a store. Keys are `/`-separated."""

    uri: str

    def put_file(self, key: str, path: Path, progress: Progress = None) -> None: ...
    def get_file(self, key: str, path: Path, progress: Progress = None) -> None: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list_keys(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def describe(self, key: str) -> str: ...


def open_store(uri: str) -> Store:
    """A store for `file:///abs/dir` or `s3://bucket[/prefix]`; StoreError for anything else."""
    if not isinstance(uri, str) or not uri:
        raise StoreError("no store URI given: use file:///abs/dir or s3://bucket/prefix")
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise StoreError(f"store URI {uri!r} must not have a query or fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(
                f"store URI {uri!r} names host {parts.netloc!r}: a file store needs an absolute path, "
                f"as in file:///abs/dir (three slashes)"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise StoreError(f"store URI {uri!r} is not an absolute path: use file:///abs/dir")
        if any(seg in (".", "..") for seg in path.split("/")):
            raise StoreError(f"store URI {uri!r} must not contain '.' or '..' segments")
        return FileStore(Path(path))
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise StoreError(
                f"store URI {uri!r}: {bucket!r} is not a valid S3 bucket name "
                "(3-63 characters: lower-case letters, digits, '.', '-')"
            )
        prefix = parts.path.strip("/")
        if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
            raise StoreError(f"store URI {uri!r}: prefix must not contain empty, '.' or '..' segments")
        return S3Store(bucket, prefix)
    raise StoreError(f"unsupported store URI {uri!r}: use file:///abs/dir or s3://bucket/prefix")


# --- key layout ---------------------------------------------------------------------------------

def version_key(name: str, version: str, file: str) -> str:
    """`<name>/<version>/<file>`: one file of one published version."""
    check_name("name", name)
    _check_version(version)
    check_key(file)
    return f"{name}/{version}/{file}"


def manifest_key(name: str, version: str) -> str:
    """The key whose presence makes a version exist."""
    return version_key(name, version, MANIFEST_FILE)


def alias_key(name: str, alias: str) -> str:
    """`<name>/aliases/<alias>.json`."""
    check_name("name", name)
    check_name("alias", alias)
    return f"{name}/{ALIASES_DIR}/{alias}.json"


def check_key(key: str) -> str:
    """Refuse keys that could escape a file store's directory or differ between the two stores."""
    segments = key.split("/") if isinstance(key, str) else [""]
    if not all(_KEY_SEGMENT.match(seg) for seg in segments):
        raise StoreError(
            f"invalid store key {key!r}: each '/'-separated part must start with a letter or digit "
            "and use only A-Z a-z 0-9 . _ -"
        )
    return key


def _check_version(version: str) -> str:
    check_name("version", version)
    if version == ALIASES_DIR:
        raise ManifestError(f"{ALIASES_DIR!r} is reserved for alias files and cannot be a version name")
    return version


def list_names(store: Store) -> list[str]:
    """Model names that have at least one version or alias."""
    return sorted({key.split("/", 1)[0] for key in store.list_keys("") if "/" in key})


def list_versions(store: Store, name: str) -> list[str]:
    """Versions of `name` whose manifest exists, sorted by name."""
    check_name("name", name)
    versions = set()
    for key in store.list_keys(f"{name}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST_FILE and parts[1] != ALIASES_DIR:
            versions.add(parts[1])
    return sorted(versions)


def list_aliases(store: Store, name: str) -> dict[str, str]:
    """alias -> version for `name`."""
    check_name("name", name)
    aliases = {}
    for key in store.list_keys(f"{name}/{ALIASES_DIR}/"):
        leaf = key.rsplit("/", 1)[-1]
        if leaf.endswith(".json"):
            alias = leaf.removesuffix(".json")
            aliases[alias] = read_alias(store, name, alias)
    return dict(sorted(aliases.items()))


def read_alias(store: Store, name: str, alias: str) -> str:
    """The version an alias points to; VersionNotFoundError listing the aliases that exist."""
    key = alias_key(name, alias)
    if not store.exists(key):
        present = sorted(k.rsplit("/", 1)[-1].removesuffix(".json")
                         for k in store.list_keys(f"{name}/{ALIASES_DIR}/") if k.endswith(".json"))
        raise VersionNotFoundError(
            f"no alias {alias!r} for model {name!r} in {store.uri}; aliases present: {_listing(present)}"
        )
    try:
        data = json.loads(store.read_bytes(key))
        version = data["version"]
        _check_version(version)
    except (ValueError, KeyError, TypeError, ManifestError) as exc:
        raise StoreError(
            f"{store.describe(key)} is not a valid alias file ({exc}); publish the alias again"
        ) from exc
    return str(version)


def write_alias(store: Store, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version`, which must already be published (one atomic object write)."""
    if not store.exists(manifest_key(name, version)):
        raise VersionNotFoundError(
            f"cannot point alias {alias!r} at {name}/{version}: that version is not in {store.uri}; "
            f"versions present: {_listing(list_versions(store, name))}"
        )
    body = json.dumps({"version": version, "updated_at": utc_now()}, indent=2) + "\n"
    store.write_bytes(alias_key(name, alias), body.encode("utf-8"))


def read_manifest(store: Store, name: str, version: str) -> tuple[Manifest, bytes]:
    """The parsed manifest and its exact bytes; VersionNotFoundError listing versions that exist."""
    key = manifest_key(name, version)
    if not store.exists(key):
        raise VersionNotFoundError(
            f"no version {version!r} of model {name!r} in {store.uri}; "
            f"versions present: {_listing(list_versions(store, name))}"
        )
    data = store.read_bytes(key)
    try:
        manifest = Manifest.from_json(data)
    except ManifestError as exc:
        raise ManifestError(f"{store.describe(key)}: {exc}") from exc
    if (manifest.name, manifest.version) != (name, version):
        raise ManifestError(
            f"{store.describe(key)} describes {manifest.name}/{manifest.version}, not {name}/{version}"
        )
    return manifest, data


def _listing(items: list[str]) -> str:
    return ", ".join(items) if items else "(none)"


# --- progress -----------------------------------------------------------------------------------

class ProgressLine:
    """One updating line on stderr: label, MB done / total, MB/s.

    Shown only when the stream is a terminal (or `enabled=True`), so logs, pipes and tests stay
    clean. Thread-safe: boto3 calls it from its transfer threads.
    """

    def __init__(self, label: str, total: int | None = None, *, stream: IO[str] | None = None,
                 enabled: bool | None = None, interval: float = 0.1) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self._stream) if enabled is None else enabled
        self._interval = interval
        self._started = time.monotonic()
        self._shown = 0.0
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            now = time.monotonic()
            if self.enabled and now - self._shown >= self._interval:
                self._shown = now
                self._write("\r")

    def close(self) -> None:
        """Draw the final figures and end the line."""
        with self._lock:
            if self.enabled:
                self._write("\r", end="\n")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, start: str, end: str = "") -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        total = f"/{self.total / 1e6:.1f}" if self.total is not None else ""
        line = f"{self.label}  {self.done / 1e6:.1f}{total} MB  {self.done / 1e6 / elapsed:.1f} MB/s"
        self._stream.write(f"{start}{line}\x1b[K{end}" if _isatty(self._stream) else f"{start}{line}{end}")
        self._stream.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def _progress(progress: Progress, label: str, total: Callable[[], int]) -> Iterator[ProgressCallback | None]:
    """Turn the `progress` argument into a callback (or None) for one transfer."""
    if progress is True:
        with ProgressLine(label, total()) as line:
            yield line if line.enabled else None
    elif callable(progress):
        yield progress
    else:
        yield None


# --- file store ---------------------------------------------------------------------------------

class FileStore:
    """A store in a local directory. Every write is atomic: a temporary file, fsync, os.replace."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = "file://" + quote(str(self.root))

    def describe(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, path: Path, progress: Progress = None) -> None:
        source = Path(path)
        try:
            with source.open("rb") as src, _progress(progress, key, lambda: source.stat().st_size) as report:
                _atomic_write(self._path(key), src, report)
        except FileNotFoundError as exc:
            raise StoreError(f"cannot upload {source}: no such file") from exc
        except OSError as exc:
            raise StoreError(f"{self.describe(key)}: cannot write: {exc}") from exc

    def get_file(self, key: str, path: Path, progress: Progress = None) -> None:
        stored = self._path(key)
        try:
            with stored.open("rb") as src, _progress(progress, key, lambda: stored.stat().st_size) as report:
                _atomic_write(Path(path), src, report)
        except FileNotFoundError as exc:
            if not stored.is_file():
                raise StoreError(f"{self.describe(key)}: no such key") from exc
            raise StoreError(f"cannot write {path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"{self.describe(key)} -> {path}: {exc}") from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"{self.describe(key)}: no such key") from exc
        except OSError as exc:
            raise StoreError(f"{self.describe(key)}: cannot read: {exc}") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            _atomic_write(self._path(key), io.BytesIO(data), None)
        except OSError as exc:
            raise StoreError(f"{self.describe(key)}: cannot write: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise StoreError(f"{self.describe(key)}: no such key") from exc

    def list_keys(self, prefix: str = "") -> list[str]:
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            # Hidden names are our temporary files (and never valid keys).
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                if filename.startswith("."):
                    continue
                key = filename if rel == "." else f"{rel}/{filename}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.describe(key)}: cannot delete: {exc}") from exc
        # Drop directories the deletion left empty, so listings do not show ghosts.
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _atomic_write(dest: Path, src: IO[bytes], progress: ProgressCallback | None) -> None:
    """Copy `src` to `dest` so that `dest` is either the old file or the complete new one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- S3 store -----------------------------------------------------------------------------------

def s3_retry_config() -> dict[str, Any]:
    """botocore retries: standard mode, 5 attempts, unless AWS_RETRY_MODE / AWS_MAX_ATTEMPTS say otherwise."""
    mode = os.environ.get("AWS_RETRY_MODE", DEFAULT_S3_RETRY_MODE)
    if mode not in ("standard", "adaptive"):
        raise StoreError(f"AWS_RETRY_MODE={mode!r}: use 'standard' or 'adaptive'")
    raw = os.environ.get("AWS_MAX_ATTEMPTS", str(DEFAULT_S3_MAX_ATTEMPTS))
    try:
        attempts = int(raw)
    except ValueError:
        attempts = 0
    if attempts < 1:
        raise StoreError(f"AWS_MAX_ATTEMPTS={raw!r}: use a whole number of at least 1")
    # botocore's "max_attempts" counts retries only; "total_max_attempts" counts every try (as
    # AWS_MAX_ATTEMPTS does), so "after 5 attempts" means 5 requests.
    return {"mode": mode, "total_max_attempts": attempts}


class S3Store:
    """A store under `s3://bucket/prefix`. Large files go through boto3's multipart transfers."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client if client is not None else _make_s3_client()

    @property
    def client(self) -> Any:
        return self._client

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path, progress: Progress = None) -> None:
        source = Path(path)
        if not source.is_file():
            raise StoreError(f"cannot upload {source}: no such file")
        size = source.stat().st_size
        with self._errors(self.describe(key)), _progress(progress, key, lambda: size) as callback:
            self._client.upload_file(str(source), self.bucket, self._key(key), Callback=callback)

    def get_file(self, key: str, path: Path, progress: Progress = None) -> None:
        with self._errors(self.describe(key)), _progress(progress, key, lambda: self.size(key)) as callback:
            # boto3 downloads into a temporary name beside `path` and renames it when complete.
            self._client.download_file(self.bucket, self._key(key), str(path), Callback=callback)

    def read_bytes(self, key: str) -> bytes:
        with self._errors(self.describe(key)):
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(response["Body"].read())

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(self.describe(key)):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(self.describe(key)):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                    return False
                raise
        return True

    def size(self, key: str) -> int:
        with self._errors(self.describe(key)):
            return int(self._client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def list_keys(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        keys = []
        with self._errors(f"{self.uri.rstrip('/')}/{prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    keys.append(key[len(self.prefix) + 1:] if self.prefix else key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors(self.describe(key)):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    @contextmanager
    def _errors(self, where: str) -> Iterator[None]:
        """Turn boto3/botocore failures into one StoreError line naming the object and the attempts."""
        from boto3.exceptions import RetriesExceededError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except (S3UploadFailedError, RetriesExceededError) as exc:
            cause = exc.__cause__ or getattr(exc, "last_exception", None)
            if isinstance(cause, ClientError):
                raise _client_error(where, cause) from exc
            raise StoreError(f"{where}: {exc}") from exc
        except ClientError as exc:
            raise _client_error(where, exc) from exc
        except NoCredentialsError as exc:
            raise StoreError(
                f"{where}: no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY)"
            ) from exc
        except BotoCoreError as exc:
            raise StoreError(f"{where}: {exc}") from exc


_MISSING_CODES = ("404", "NoSuchKey", "NotFound")


def _client_error(where: str, exc: Any) -> StoreError:
    response = getattr(exc, "response", {}) or {}
    error = response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = str(error.get("Message", "")).strip()
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    attempts = int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) + 1
    if code in _MISSING_CODES:
        return StoreError(f"{where}: no such key")
    if code == "NoSuchBucket":
        return StoreError(f"{where}: bucket does not exist")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return StoreError(f"{where}: access denied ({code}); check the credentials and the bucket policy")
    detail = f" ({message})" if message and message != code else ""
    if attempts > 1:
        return StoreError(f"{where}: {code}{detail} after {attempts} attempts")
    return StoreError(f"{where}: {code}{detail} (HTTP {status})")


def _make_s3_client() -> Any:
    """A client that retries throttling and 5xx with backoff (botocore standard/adaptive mode)."""
    import boto3
    from botocore.config import Config

    config = Config(retries=s3_retry_config(), connect_timeout=10, read_timeout=60)  # type: ignore[arg-type]
    return boto3.session.Session(botocore_session=_botocore_session()).client("s3", config=config)


_loader_lock = threading.Lock()
_shared_loader: Any = None


def _botocore_session() -> Any:
    """A new botocore session (credentials, region and endpoint read afresh from the environment)
    that shares one parsed copy of the service models: a client then costs ~0.1 s instead of ~0.6 s."""
    import botocore.session

    global _shared_loader
    session = botocore.session.get_session()
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        session.register_component("data_loader", _shared_loader)
    return session
