"""Functional tests for the S3 store against a moto server on 127.0.0.1, including injected faults.

Throttling and 5xx answers come from a small HTTP proxy between boto3 and moto that answers the
first N matching requests with an S3 error instead of forwarding them, so the real botocore
retry machinery (standard mode) is what gets tested.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from model_store.cli import main
from model_store.exceptions import StoreError
from model_store.loader import local_versions, verify_version_dir
from model_store.manifest import Architecture, Manifest, Preprocessing, WeightsFile
from model_store.store import S3Store, list_versions, manifest_key, open_store
from model_store.sync import sync_version
from model_store.weights import sha256_file

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
ERROR_XML = ("<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code><Message>{message}</Message>"
             "<RequestId>injected</RequestId></Error>")


class FaultProxy:
    """Forwards HTTP to moto; answers matching requests with an S3 error while `failures` lasts."""

    def __init__(self, upstream: str, *, status: int, code: str, message: str, failures: int,
                 matches: Callable[[str, str], bool] = lambda method, path: True) -> None:
        self.upstream = urlsplit(upstream)
        self.status, self.code, self.message = status, code, message
        self.failures = failures
        self.matches = matches
        self.injected = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, method: str, path: str) -> bool:
        with self._lock:
            if self.failures != 0 and self.matches(method, path):
                self.failures -= 1
                self.injected += 1
                return True
            self.forwarded += 1
            return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _serve(self) -> None:
                body = self._body()
                if proxy._take_fault(self.command, self.path):
                    payload = ERROR_XML.format(code=proxy.code, message=proxy.message).encode()
                    self.send_response(proxy.status)
                    self.send_header("content-type", "application/xml")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.netloc, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["content-length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                length = response.getheader("content-length") if self.command == "HEAD" else None
                self.send_header("content-length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve

        return Handler


@pytest.fixture
def bucket(aws_endpoint: str) -> str:
    boto3.client("s3").create_bucket(Bucket="models")
    return "models"


@pytest.fixture
def faulty(aws_endpoint: str, bucket: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FaultProxy]]:
    """Make a FaultProxy in front of moto and point boto3 at it."""
    proxies: list[FaultProxy] = []

    def make(**kwargs: object) -> FaultProxy:
        proxy = FaultProxy(aws_endpoint, **kwargs)  # type: ignore[arg-type]
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


# --- the store against moto ---------------------------------------------------------------------

def test_round_trip_under_a_prefix(bucket: str, tmp_path: Path) -> None:
    # GIVEN stores on two prefixes of one bucket
    team = open_store("s3://models/team")
    other = open_store("s3://models/team-b")
    source = tmp_path / "w.bin"
    source.write_bytes(os.urandom(100_000))
    # WHEN objects are written, listed, read and deleted through one of them
    team.put_file("dogs/v1/model.safetensors", source)
    team.write_bytes(manifest_key("dogs", "v1"), b"{}")
    other.write_bytes("cats/v1/manifest.json", b"{}")
    target = tmp_path / "copy.bin"
    team.get_file("dogs/v1/model.safetensors", target)
    # THEN keys are relative to each prefix, which do not leak into each other
    assert team.list_keys("") == ["dogs/v1/manifest.json", "dogs/v1/model.safetensors"]
    assert list_versions(team, "dogs") == ["v1"]
    assert target.read_bytes() == source.read_bytes()
    assert team.read_bytes("dogs/v1/manifest.json") == b"{}"
    assert team.size("dogs/v1/model.safetensors") == 100_000
    raw = boto3.client("s3").list_objects_v2(Bucket="models")["Contents"]
    assert sorted(o["Key"] for o in raw) == ["team-b/cats/v1/manifest.json", "team/dogs/v1/manifest.json",
                                           "team/dogs/v1/model.safetensors"]
    team.delete("dogs/v1/model.safetensors")
    assert not team.exists("dogs/v1/model.safetensors") and team.exists("dogs/v1/manifest.json")


def test_large_files_go_multipart_with_progress(bucket: str, tmp_path: Path) -> None:
    # GIVEN a 9 MB file (over boto3's 8 MB multipart threshold) and a byte counter
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(9 * 1024 * 1024))
    store = open_store("s3://models")
    up: list[int] = []
    down: list[int] = []
    # WHEN uploaded and downloaded
    store.put_file("dogs/v1/model.safetensors", source, progress=up.append)
    store.get_file("dogs/v1/model.safetensors", tmp_path / "back.bin", progress=down.append)
    # THEN it was stored in parts, arrives intact, and progress added up to the size both ways
    head = boto3.client("s3").head_object(Bucket="models", Key="dogs/v1/model.safetensors")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart ETag: md5-of-parts "-" part count
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    assert sum(up) == sum(down) == source.stat().st_size


def test_missing_bucket_and_key_are_clear_errors(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"s3://nope/dogs/v1/manifest.json: bucket does not exist"):
        open_store("s3://nope").read_bytes("dogs/v1/manifest.json")
    with pytest.raises(StoreError, match=r"s3://models/dogs/v1/model.safetensors: no such key"):
        open_store("s3://models").get_file("dogs/v1/model.safetensors", tmp_path / "x")
    assert open_store("s3://models").exists("dogs/v1/manifest.json") is False


# --- throttling and 5xx -------------------------------------------------------------------------

def test_slowdown_is_retried_then_succeeds(faulty: Callable[..., FaultProxy]) -> None:
    # GIVEN S3 throttling the first request with 503 SlowDown
    proxy = faulty(status=503, code="SlowDown", message="Please reduce your request rate.", failures=1)
    store = open_store("s3://models")
    # WHEN an object is written and read back
    store.write_bytes("dogs/aliases/prod.json", b'{"version": "v1"}')
    # THEN the throttled request was retried and succeeded
    assert store.read_bytes("dogs/aliases/prod.json") == b'{"version": "v1"}'
    assert proxy.injected == 1 and proxy.forwarded == 2


def test_persistent_slowdown_fails_clearly_after_the_attempt_budget(faulty: Callable[..., FaultProxy],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN S3 throttling every request, and a budget of 3 attempts
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    proxy = faulty(status=503, code="SlowDown", message="Please reduce your request rate.", failures=-1)
    store = open_store("s3://models")
    # WHEN a read is attempted
    with pytest.raises(StoreError) as caught:
        store.read_bytes("dogs/v1/manifest.json")
    # THEN exactly 3 requests were made and the error says what, where and how often
    assert proxy.injected == 3
    assert str(caught.value) == (
        "s3://models/dogs/v1/manifest.json: SlowDown (Please reduce your request rate.) after 3 attempts"
    )


def test_500_on_a_multipart_part_is_retried(faulty: Callable[..., FaultProxy], tmp_path: Path) -> None:
    # GIVEN S3 failing the first two UploadPart requests with 500 InternalError
    proxy = faulty(status=500, code="InternalError", message="We encountered an internal error.", failures=2,
                   matches=lambda method, path: method == "PUT" and "partNumber=" in path)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(9 * 1024 * 1024))
    store = open_store("s3://models")
    # WHEN the file is uploaded
    store.put_file("dogs/v1/model.safetensors", source)
    # THEN both failures were retried and the object is intact
    assert proxy.injected == 2
    store.get_file("dogs/v1/model.safetensors", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_503_on_head_names_the_status_when_retries_run_out(faulty: Callable[..., FaultProxy],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN every HEAD answered 503 (HEAD answers carry no error code, only the status)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    faulty(status=503, code="ServiceUnavailable", message="x", failures=-1,
           matches=lambda method, path: method == "HEAD")
    # WHEN existence is checked / THEN a StoreError, not a silent False
    with pytest.raises(StoreError, match=r"s3://models/dogs/v1/manifest.json: 503 .*after 2 attempts"):
        open_store("s3://models").exists("dogs/v1/manifest.json")


def test_store_client_uses_the_endpoint_from_the_environment(faulty: Callable[..., FaultProxy]) -> None:
    # GIVEN AWS_ENDPOINT_URL pointing at the proxy / WHEN a store is opened / THEN boto3 uses it
    proxy = faulty(status=500, code="InternalError", message="x", failures=0)
    store = open_store("s3://models")
    assert isinstance(store, S3Store) and store.client.meta.endpoint_url == proxy.url
    store.list_keys("")
    assert proxy.forwarded == 1


# --- sync through faults ------------------------------------------------------------------------

def _upload_version(tmp_path: Path) -> None:
    """dogs/v1 in s3://models: 2 MB of random bytes and a manifest that records them."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(2 * 1024 * 1024))
    store = open_store("s3://models")
    store.put_file("dogs/v1/model.safetensors", weights)
    entry = WeightsFile(file=weights.name, format="safetensors", sha256=sha256_file(weights),
                        size=weights.stat().st_size)
    manifest = Manifest(name="dogs", version="v1", arch=Architecture(depth=18), class_names=("a", "b"),
                        preprocess=Preprocessing.preset("imagenet"), weights={"fp32": entry}, trained=False)
    store.write_bytes(manifest_key("dogs", "v1"), manifest.to_json().encode())


def weights_get(method: str, path: str) -> bool:
    return method == "GET" and path.split("?")[0].endswith("/model.safetensors")


def test_sync_rides_out_transient_5xx(faulty: Callable[..., FaultProxy], tmp_path: Path) -> None:
    # GIVEN a version in S3, and S3 failing the first two GETs of its weights with 500
    _upload_version(tmp_path)
    proxy = faulty(status=500, code="InternalError", message="We encountered an internal error.", failures=2,
                   matches=weights_get)
    # WHEN it is synced
    result = sync_version("s3://models", "dogs", tmp_path / "root", version="v1", progress=False)
    # THEN the failures were retried and the version is complete and verified
    assert proxy.injected == 2 and result.downloaded
    verify_version_dir(result.directory, name="dogs", checksums=True)


def test_sync_through_persistent_5xx_fails_with_one_line_and_leaves_nothing(
        faulty: Callable[..., FaultProxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a version in S3 whose weights GET always fails with 503 SlowDown, and 2 attempts allowed
    _upload_version(tmp_path)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    proxy = faulty(status=503, code="SlowDown", message="Please reduce your request rate.", failures=-1,
                   matches=weights_get)
    root = tmp_path / "root"
    # WHEN the CLI syncs it
    status = main(["sync", "--store", "s3://models", "--name", "dogs", "--version", "v1", "--root", str(root),
                   "-q"])
    # THEN exit 1 with one line naming the object, the error and the attempts; no version, no leftovers
    assert status == 1 and proxy.injected == 2
    assert capsys.readouterr().err.splitlines() == [
        ("error: s3://models/dogs/v1/model.safetensors: "
         "SlowDown (Please reduce your request rate.) after 2 attempts")
    ]
    assert local_versions(root, "dogs") == []
    assert list((root / "dogs" / ".incoming").iterdir()) == []
