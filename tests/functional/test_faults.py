"""Faults of issue 6 not covered elsewhere: S3 failing under publish and sync, bad model versions at
cold start and behind a moved alias, a model that appears late, and an invocation near its deadline.

Where the sync is killed at each stage, tests/functional/test_sync.py has it; the in-process
handler faults (backoff timing, checksum at cold start) are in tests/unit/test_app.py. Here the
function runs under the emulator (real awslambdaric, real context deadline, real runtime
processes), so "recovers without a restart" is checked against the runtime's pid, and S3 faults
come from a real HTTP proxy in front of the moto server that answers 503 SlowDown / 500
InternalError on cue, so botocore's own retry mode is what gets exercised.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import torch
from PIL import Image

from emulator import Emulator, EmulatorConfig
from handler.observability import Telemetry
from handler.service import Service
from model_store.exceptions import StoreError
from model_store.loader import load
from model_store.manifest import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Architecture,
    Manifest,
    Preprocessing,
    WeightsFile,
    dog_breed_classes,
)
from model_store.predictor import TorchPredictor
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.store import manifest_key, open_store, version_key, write_alias
from model_store.sync import sync
from model_store.weights import sha256_file
from tests.emulator.support import ListLog, Reply, fake_aws_environment, http_request

REPO = Path(__file__).resolve().parents[2]
NAME = "dogs"
ARCH = Architecture(depth=18)
CLASSES = dog_breed_classes()[:5]


def jpeg(colour: tuple[int, int, int] = (120, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def tiny_state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(ARCH, len(CLASSES)).state_dict()


def publish(store_uri: str, version: str, seed: int = 0) -> None:
    publish_state_dict(tiny_state_dict(seed), store_uri, NAME, version, arch=ARCH, class_names=CLASSES,
                       preprocess="resize224", trained=True, source="tests", progress=False)


def publish_placeholder(store_uri: str, version: str, tmp_path: Path) -> None:
    """A version whose "weights" are 1 MB of random bytes: enough for sync, which never builds a model."""
    weights = tmp_path / f"{version}.bin"
    weights.write_bytes(os.urandom(1 << 20))
    entry = WeightsFile(file=WEIGHTS_FILE, format="safetensors", sha256=sha256_file(weights), size=1 << 20)
    manifest = Manifest(name=NAME, version=version, arch=ARCH, class_names=CLASSES,
                        preprocess=Preprocessing.preset("resize224"), weights={"fp32": entry}, trained=False)
    store = open_store(store_uri)
    store.put_file(version_key(NAME, version, WEIGHTS_FILE), weights)
    store.write_bytes(manifest_key(NAME, version), manifest.to_json().encode())


# --- S3 answering 503 SlowDown and 500 InternalError ----------------------------------------------

@dataclass
class FaultRule:
    """Answer `status`/`code` instead of S3 for requests matching `method` and `path_part`, `times` times."""

    method: str
    path_part: str
    status: int
    code: str
    times: int | None = None  # None: every time
    injected: int = 0

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self.path_part in path and (self.times is None or self.injected < self.times)


@dataclass
class FaultyS3:
    """An HTTP proxy to the moto server that injects S3 errors; records every request it sees."""

    upstream: str
    rules: list[FaultRule] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status answered)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, path_part: str, status: int | None = None) -> int:
        with self.lock:
            return sum(1 for m, p, s in self.seen if m == method and path_part in p and status in (None, s))

    def decide(self, method: str, path: str) -> FaultRule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.injected += 1
                    return rule
        return None


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, whether sized or sent with chunked transfer encoding."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline().strip():  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def make_proxy_handler(proxy: FaultyS3) -> type[BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on `proxy.seen` instead."""

        def _relay(self) -> None:
            body = _read_body(self)
            rule = proxy.decide(self.command, self.path)
            if rule is not None:
                error = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{rule.code}</Code>'
                         f"<Message>injected by the test</Message><RequestId>fault</RequestId></Error>").encode()
                self._answer(rule.status, [("Content-Type", "application/xml")], error)
                return
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("transfer-encoding", "connection", "expect", "content-length")}
            connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST")
                                   else None, headers=headers)
                response = connection.getresponse()
                data = response.read()
                out = [(k, v) for k, v in response.getheaders()
                       if k.lower() not in ("transfer-encoding", "connection", "content-length")]
                self._answer(response.status, out, data)
            finally:
                connection.close()

        def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            with proxy.lock:
                proxy.seen.append((self.command, self.path, status))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

    return Relay


@pytest.fixture
def faulty_s3(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyS3]:
    """A bucket `models` on moto, reached through the fault-injecting proxy (AWS_ENDPOINT_URL)."""
    boto3.client("s3").create_bucket(Bucket="models")
    proxy = FaultyS3(aws_endpoint)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_proxy_handler(proxy))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()


def test_publish_and_sync_ride_out_s3_throttling_and_5xx(faulty_s3: FaultyS3, tmp_path: Path) -> None:
    # GIVEN S3 throttling the first two weight uploads and failing the first manifest upload
    faulty_s3.rules += [FaultRule("PUT", WEIGHTS_FILE, 503, "SlowDown", times=2),
                        FaultRule("PUT", MANIFEST_FILE, 500, "InternalError", times=1)]
    # WHEN a model is published through it
    publish("s3://models/team", "v1", seed=5)
    # THEN the faults were injected and retried, and the version is complete in the store
    assert faulty_s3.count("PUT", WEIGHTS_FILE, 503) == 2 and faulty_s3.count("PUT", MANIFEST_FILE, 500) == 1
    assert faulty_s3.count("PUT", MANIFEST_FILE, 200) == 1
    # GIVEN S3 now throttling the first two weight downloads and failing the first manifest read
    faulty_s3.rules += [FaultRule("GET", WEIGHTS_FILE, 503, "SlowDown", times=2),
                        FaultRule("GET", MANIFEST_FILE, 500, "InternalError", times=1)]
    # WHEN the version is synced through it
    root = tmp_path / "models"
    directory = sync("s3://models/team", NAME, root, version="v1", progress=False)
    # THEN the sync retried through them and serves exactly the published weights
    assert faulty_s3.count("GET", WEIGHTS_FILE, 503) == 2 and faulty_s3.count("GET", MANIFEST_FILE, 500) == 1
    loaded = load(root, NAME, version="v1")
    expected = tiny_state_dict(5)
    assert loaded.directory == directory
    assert isinstance(loaded.predictor, TorchPredictor)  # fp32 only: the eager network, as published
    state = loaded.predictor.module.state_dict()
    assert all(torch.equal(state[key], value) for key, value in expected.items())


def test_sync_gives_up_after_the_configured_attempts_with_one_clear_error(
        faulty_s3: FaultyS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a published version, and then S3 failing every manifest read; 3 attempts allowed
    publish_placeholder("s3://models/team", "v1", tmp_path)
    faulty_s3.rules.append(FaultRule("GET", MANIFEST_FILE, 503, "SlowDown"))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    root = tmp_path / "models"
    # WHEN synced
    with pytest.raises(StoreError) as caught:
        sync("s3://models/team", NAME, root, version="v1", progress=False)
    # THEN exactly 3 attempts, then one line naming the object, the code and the attempts
    message = str(caught.value)
    assert faulty_s3.count("GET", MANIFEST_FILE) == 3
    assert "\n" not in message and f"{NAME}/v1/{MANIFEST_FILE}" in message
    assert "SlowDown" in message and "after 3 attempts" in message
    # AND nothing was left that a reader could take for a version
    assert not (root / NAME / "versions" / "v1").exists()


def test_the_sync_command_fails_with_one_line_and_status_1(faulty_s3: FaultyS3, tmp_path: Path) -> None:
    # GIVEN a published version whose weights S3 refuses to serve (500 on every read)
    publish_placeholder("s3://models/team", "v1", tmp_path)
    faulty_s3.rules.append(FaultRule("GET", WEIGHTS_FILE, 500, "InternalError"))
    # WHEN `python -m model_store sync` runs against it with 2 attempts
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "2"}
    run = subprocess.run([sys.executable, "-m", "model_store", "sync", "--store", "s3://models/team",
                          "--name", NAME, "--version", "v1", "--root", str(tmp_path / "models")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    # THEN exit status 1 and one error line naming the object and the S3 error
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and WEIGHTS_FILE in errors[0] and "InternalError" in errors[0], run.stderr
    assert faulty_s3.count("GET", WEIGHTS_FILE) >= 2
    assert not (tmp_path / "models" / NAME / "versions" / "v1").exists()


# --- bad model versions -------------------------------------------------------------------------

# kind -> (what is done to a good copy on disk, words the refusal must contain)
BAD_VERSIONS = {
    "checksum-mismatch": "sha256",
    "truncated-weights": "truncated",
    "corrupt-manifest": "not valid JSON",
    "unknown-schema-manifest": "unsupported manifest schema_version 99",
}


def make_bad_version(root: Path, good: str, kind: str) -> str:
    """Copy the synced `good` version under a new name on disk, then damage it as `kind` says."""
    version = f"bad-{kind}"
    source, target = root / NAME / "versions" / good, root / NAME / "versions" / version
    target.mkdir()
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    manifest["version"] = version
    weights = (source / WEIGHTS_FILE).read_bytes()
    if kind == "checksum-mismatch":  # same size, 16 bytes flipped in the middle
        middle = len(weights) // 2
        weights = weights[:middle] + bytes(b ^ 0xFF for b in weights[middle:middle + 16]) + weights[middle + 16:]
    elif kind == "truncated-weights":
        weights = weights[: len(weights) // 2]
    elif kind == "unknown-schema-manifest":
        manifest["schema_version"] = 99
    (target / WEIGHTS_FILE).write_bytes(weights)
    text = json.dumps(manifest) if kind != "corrupt-manifest" else json.dumps(manifest)[:-40]
    (target / MANIFEST_FILE).write_text(text)
    return version


def point_alias(root: Path, alias: str, version: str) -> None:
    """Swap the alias symlink atomically, as `model_store sync` does."""
    link = root / NAME / alias
    temporary = root / NAME / f".{alias}.{uuid.uuid4().hex}.tmp"
    os.symlink(f"versions/{version}", temporary)
    os.replace(temporary, link)


@pytest.fixture(scope="module")
def store_with_two_versions(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A file store with two good versions, v1 and v2, of a 5-class ResNet-18."""
    uri = tmp_path_factory.mktemp("store").as_uri()
    publish(uri, "v1", seed=1)
    publish(uri, "v2", seed=2)
    return uri


def start_emulator(root: Path, log: ListLog, *, version: str | None = None, alias: str | None = None,
                   timeout_s: float = 120.0, **environment: str) -> Emulator:
    config = EmulatorConfig(port=0, model_root=root, model_name=NAME, model_version=version, model_alias=alias,
                            timeout_s=timeout_s, environment={"OMP_NUM_THREADS": "1",
                                                              "POWERTOOLS_METRICS_DISABLED": "true",
                                                              **environment})
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_aws_environment(monkeypatch)
        return Emulator(config, log=log).start()


def body(reply: Reply) -> Any:
    return json.loads(reply.body)


def handler_lines(log: ListLog, message: str) -> list[dict[str, Any]]:
    """The handler's JSON log lines (relayed by the emulator) with this message."""
    found = []
    for line in list(log.lines):
        start = line.find("{")
        try:
            record = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == message:
            found.append(record)
    return found


@dataclass
class LiveFunction:
    """An emulated function serving alias `live`, and what happened while it came up."""

    emulator: Emulator
    log: ListLog
    root: Path
    store: str
    first_health: Reply
    unavailable_answers: int
    recovered: Reply
    recovery_s: float
    pid: int | None


@pytest.fixture(scope="module")
def live_function(store_with_two_versions: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFunction]:
    """Start the function BEFORE its model reaches the root; then sync it and wait for the function to heal."""
    root = tmp_path_factory.mktemp("efs")
    log = ListLog()
    emulator = start_emulator(root, log, alias="live", MODEL_REFRESH_SECONDS="1")
    with emulator:
        emulator.wait_ready(timeout=300)
        pid = emulator.stats().runtimes[0].pid
        first = http_request(emulator.url, "GET", "/health")
        write_alias(open_store(store_with_two_versions), NAME, "live", "v1")
        sync(store_with_two_versions, NAME, root, alias="live", progress=False)
        started, unavailable = time.monotonic(), 0
        while True:
            reply = http_request(emulator.url, "GET", "/health")
            if reply.status != 503 or time.monotonic() - started > 90:
                break
            unavailable += 1
            time.sleep(0.25)
        yield LiveFunction(emulator, log, root, store_with_two_versions, first, unavailable, reply,
                           time.monotonic() - started, pid)


def test_model_missing_at_cold_start_is_503_then_served_without_a_restart(live_function: LiveFunction) -> None:
    # GIVEN a function whose init found no model under its root (the sync had not run yet)
    first = live_function.first_health
    # THEN it answered 503 model_unavailable, saying what is missing and when it will look again
    assert first.status == 503
    error = body(first)["error"]
    assert error["code"] == "model_unavailable"
    assert "live" in error["message"] and "next load attempt in" in error["message"]
    # WHEN the version appeared (synced after the first answer)
    # THEN the same runtime process served it by itself, within the backoff
    assert live_function.recovered.status == 200, live_function.recovered.body
    assert body(live_function.recovered)["model"]["version"] == "v1"
    assert live_function.recovery_s < 30
    stats = live_function.emulator.stats()
    assert stats.restarts == 0 and stats.init_errors == 0 and stats.runtimes[0].pid == live_function.pid
    assert handler_lines(live_function.log, "model load failed")


@pytest.mark.parametrize("kind", BAD_VERSIONS)
def test_alias_moved_to_a_bad_version_is_refused_and_the_loaded_one_keeps_serving(
        live_function: LiveFunction, kind: str) -> None:
    # GIVEN the function serving v1 behind alias live (refreshed every second)
    emulator, root = live_function.emulator, live_function.root
    point_alias(root, "live", "v1")
    assert body(http_request(emulator.url, "GET", "/health"))["model"]["version"] == "v1"
    # WHEN the alias is moved to a damaged version
    bad = make_bad_version(root, "v1", kind)
    point_alias(root, "live", bad)
    try:
        deadline = time.monotonic() + 60
        refusals: list[dict[str, Any]] = []
        answers: list[Reply] = []
        while not refusals and time.monotonic() < deadline:
            time.sleep(0.3)
            answers.append(http_request(emulator.url, "POST", "/predict", jpeg(), [("Content-Type", "image/jpeg")]))
            refusals = [r for r in handler_lines(live_function.log, "new version refused; keeping the loaded version")
                        if r.get("refused_version") == bad]
        # THEN that version is refused with a clear reason, and every answer meanwhile came from v1
        assert refusals, f"no refusal of {bad} logged"
        assert BAD_VERSIONS[kind] in refusals[0]["reason"], refusals[0]["reason"]
        assert refusals[0]["version"] == "v1"
        assert answers and all(a.status == 200 and body(a)["model"]["version"] == "v1" for a in answers)
    finally:
        point_alias(root, "live", "v1")
    # AND nothing restarted
    stats = emulator.stats()
    assert stats.restarts == 0 and stats.errors == 0 and stats.runtimes[0].pid == live_function.pid


def test_alias_moved_to_a_good_version_is_followed_without_a_restart(live_function: LiveFunction) -> None:
    # GIVEN the function serving v1
    emulator = live_function.emulator
    point_alias(live_function.root, "live", "v1")
    # WHEN the store's alias moves to v2 and the root is synced (as the sync function does)
    write_alias(open_store(live_function.store), NAME, "live", "v2")
    sync(live_function.store, NAME, live_function.root, alias="live", progress=False)
    # THEN within a few refreshes the same runtime serves v2
    deadline, version = time.monotonic() + 60, "v1"
    while version != "v2" and time.monotonic() < deadline:
        time.sleep(0.3)
        version = body(http_request(emulator.url, "GET", "/health"))["model"]["version"]
    assert version == "v2"
    assert [line["model"]["version"] for line in handler_lines(live_function.log, "model switched")][-1] == "v2"
    stats = emulator.stats()
    assert stats.restarts == 0 and stats.runtimes[0].pid == live_function.pid


@pytest.mark.parametrize("kind", BAD_VERSIONS)
def test_a_bad_version_at_cold_start_is_503_with_the_reason(store_with_two_versions: str, tmp_path: Path,
                                                            kind: str) -> None:
    # GIVEN a model root holding only a damaged copy of a version, pinned by the function
    root = tmp_path / "efs"
    sync(store_with_two_versions, NAME, root, version="v1", progress=False)
    bad = make_bad_version(root, "v1", kind)
    pixels, threads = Image.MAX_IMAGE_PIXELS, torch.get_num_threads()
    try:
        telemetry = Telemetry(service=f"faults-{uuid.uuid4().hex[:8]}", stream=io.StringIO())
        service = Service.from_env({"MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": bad,
                                    "OMP_NUM_THREADS": "1"}, telemetry=telemetry)
    finally:
        Image.MAX_IMAGE_PIXELS = pixels
        torch.set_num_threads(threads)
    # WHEN the function starts and is asked to predict
    event = {"version": "2.0", "rawPath": "/predict", "headers": {"content-type": "image/jpeg"},
             "requestContext": {"http": {"method": "POST", "path": "/predict"}, "requestId": "r"},
             "body": base64.b64encode(jpeg()).decode(), "isBase64Encoded": True}
    answer = service.handle(event, None)
    # THEN 503 model_unavailable whose message names the damage
    assert answer["statusCode"] == 503
    error = json.loads(answer["body"])["error"]
    assert error["code"] == "model_unavailable" and BAD_VERSIONS[kind] in error["message"], error


# --- an invocation close to its deadline ----------------------------------------------------------

def test_too_little_time_left_is_a_clean_504_not_a_killed_runtime(store_with_two_versions: str,
                                                                  tmp_path: Path) -> None:
    # GIVEN a function with a 2 s timeout that keeps 2 s in hand after inference (so no invocation fits)
    root = tmp_path / "efs"
    sync(store_with_two_versions, NAME, root, version="v1", progress=False)
    log = ListLog()
    emulator = start_emulator(root, log, version="v1", timeout_s=2.0, DEADLINE_MARGIN_MS="2000")
    with emulator:
        emulator.wait_ready(timeout=300)
        pid = emulator.stats().runtimes[0].pid
        # WHEN a photo is posted, and sent by direct invocation
        reply = http_request(emulator.url, "POST", "/predict", jpeg(), [("Content-Type", "image/jpeg")])
        direct = emulator.invoke({"image": base64.b64encode(jpeg()).decode()})
        health = http_request(emulator.url, "GET", "/health")
        stats = emulator.stats()
    # THEN both are answered 504 timeout by the handler, from the real context's remaining time
    assert reply.status == 504, reply.body
    error = body(reply)["error"]
    assert error["code"] == "timeout" and "ms of the invocation are left" in error["message"]
    left_ms = int(error["message"].split("only ", 1)[1].split(" ms", 1)[0])
    assert 0 < left_ms <= 2000
    assert direct.ok and direct.json()["status"] == 504 and direct.json()["error"]["code"] == "timeout"
    # AND well before the deadline: Lambda never had to kill the runtime, which still serves
    assert direct.record.duration_ms < 2000 and stats.timeouts == 0 and stats.errors == 0
    assert stats.restarts == 0 and stats.runtimes[0].pid == pid
    assert health.status == 200
