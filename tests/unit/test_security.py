"""Security checks that run with every `make test` (issue 6), each one able to fail on a regression.

- bandit over our packages: no medium or high finding, and every `# nosec` names its test and says why;
- hadolint on the Dockerfile, and the image's final user is not root;
- every IAM policy of the stack passes infra's own least-privilege lint (reused, not rewritten);
- weights: serving never unpickles (no `torch.load` in handler/ or the loader; every `torch.load`
  in the repo has `weights_only=True`), and a pickle posing as `model.safetensors` is refused
  without running anything;
- logs never carry image bytes, base64 bodies or credentials;
- no URL is fetched by default (no SSRF): `s3_uri` is refused without `ALLOWED_S3_PREFIXES`,
  http(s) URLs always, and no socket is even opened;
- SECURITY.md answers what it must.
"""

from __future__ import annotations

import ast
import base64
import builtins
import io
import json
import pickle
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from handler.service import Service
from infra.config import load_config
from infra.policies import POLICY_NAMES, lint_stack, stack_policies
from infra.resources import Stack
from model_store.exceptions import ModelStoreError
from model_store.loader import load
from model_store.manifest import MANIFEST_FILE, WEIGHTS_FILE, Architecture, Preprocessing
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync
from model_store.weights import sha256_file

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("handler", "model_store", "infra", "emulator", "benchmarks", "training")
TOOLS = Path(sys.executable).parent
NAME, VERSION = "secure", "v1"
CLASSES = ("001.Affenpinscher", "096.Labrador_retriever", "133.Yorkshire_terrier")
SKIPPED_DIRS = {".venv", ".git", ".breedserve", "node_modules", "build", "dist", ".hypothesis", ".pytest_cache"}


def python_files(*roots: str) -> list[Path]:
    """Our .py files under `roots` (relative to the repo), never the virtualenv's."""
    found: list[Path] = []
    for root in roots:
        base = REPO / root
        candidates = [base] if base.is_file() else base.rglob("*.py")
        found += [p for p in candidates if not SKIPPED_DIRS & set(p.relative_to(REPO).parts)]
    return sorted(found)


def calls(path: Path) -> Iterator[tuple[str, ast.Call]]:
    """Every call in a file as (dotted name of the callee, node): `torch.load`, `pickle.loads`, ..."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            parts = []
            func: ast.AST = node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            yield ".".join(reversed(parts)), node


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# --- static analysis --------------------------------------------------------------------------------

def test_bandit_finds_no_medium_or_high_issue() -> None:
    # GIVEN bandit over every package we ship or run
    run = subprocess.run([str(TOOLS / "bandit"), "-r", *SCANNED, "-ll", "-f", "json", "-q"], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=False)
    # WHEN its JSON report is read
    report = json.loads(run.stdout)
    # THEN no medium or high finding is left (justified ones carry `# nosec`), and nothing failed to parse
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert findings == []
    assert report["errors"] == []
    assert report["metrics"]["_totals"]["loc"] > 5000  # it really scanned the code


def test_every_nosec_names_its_check_and_says_why() -> None:
    # GIVEN every `# nosec` in the scanned packages
    unjustified = []
    for path in python_files(*SCANNED):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            match = re.search(r"#\s*nosec\b(.*)$", line)
            if not match:
                continue
            # THEN it names the bandit test(s) it silences, and a comment says why: after it, or just
            # above the statement (a comment line among the three lines before)
            names_test = re.match(r"\s*:?\s*B\d{3}", match.group(1)) is not None
            reason_after = re.search(r"B\d{3}\S*\s*(?:#|:)\s*\w+", match.group(1)) is not None
            reason_above = any(above.strip().startswith("#") for above in lines[max(0, number - 4):number - 1])
            if not (names_test and (reason_after or reason_above)):
                unjustified.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert unjustified == []


def test_hadolint_passes_on_the_dockerfile() -> None:
    run = subprocess.run([str(TOOLS / "hadolint"), "--no-color", "Dockerfile"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "", run.stdout + run.stderr


def test_the_image_runs_as_a_non_root_user() -> None:
    # GIVEN the Dockerfile's final stage
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    final_stage = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM ")):]
    users = [line.split(None, 1)[1] for line in final_stage if line.upper().startswith("USER ")]
    # THEN its last USER is neither root nor uid 0
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0")


def test_every_iam_policy_passes_the_least_privilege_lint() -> None:
    # GIVEN the example deployment (infra/config.example.toml) in some account
    stack = Stack(load_config(REPO / "infra" / "config.example.toml"), "123456789012")
    # WHEN every policy document of the stack is linted by infra's own lint
    findings = lint_stack(stack)
    # THEN nothing: no wildcard action, resource-scoped, the inference role writes neither EFS nor S3
    assert [str(f) for f in findings] == []
    assert set(stack_policies(stack)) == set(POLICY_NAMES)


def test_serving_code_never_unpickles_weights() -> None:
    # GIVEN the code that runs inside the function: handler/, the model loader and the predictors
    serving = python_files("handler", "model_store/loader.py", "model_store/predictor.py")
    unpickling = {"torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "joblib.load", "dill.load",
                  "numpy.load", "np.load", "torch.serialization.load"}
    # THEN none of it calls an unpickler, and the fp32 weights are read with safetensors
    found = [f"{p.relative_to(REPO)}:{node.lineno} {name}" for p in serving for name, node in calls(p)
             if name in unpickling]
    assert found == []
    loader_calls = {name for name, _ in calls(REPO / "model_store" / "loader.py")}
    assert "load_file" in loader_calls  # safetensors.torch.load_file
    # AND a serialized graph (code, not data) is parsed in exactly one audited place, OnnxPredictor, which
    # serving builds only in the loader, from bytes it verified (and publishing from bytes it just made)
    sessions = {str(p.relative_to(REPO)) for p in python_files(*SCANNED) for name, _ in calls(p)
                if name.endswith("InferenceSession")}
    assert sessions == {"model_store/predictor.py"}
    builders = {str(p.relative_to(REPO)) for p in python_files(*SCANNED) for name, _ in calls(p)
                if name == "OnnxPredictor"}
    assert builders <= {"model_store/loader.py", "model_store/variants.py"}
    assert "model_store/loader.py" in builders
    # AND no TorchScript is loaded anywhere any more
    assert [p for p in python_files(*SCANNED) for name, _ in calls(p) if name == "torch.jit.load"] == []


def test_every_torch_load_in_the_repo_passes_weights_only_true() -> None:
    # GIVEN every call to torch.load anywhere in our code and tests
    loads = [(p, node) for p in python_files(".") for name, node in calls(p) if name == "torch.load"]
    # THEN each one passes weights_only=True literally
    unsafe = [f"{p.relative_to(REPO)}:{node.lineno}" for p, node in loads
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)]
    assert loads and unsafe == []


# --- a tiny served model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store").as_uri()
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(11)
    arch = Architecture(depth=18)
    publish_state_dict(build_model(arch, len(CLASSES)).state_dict(), store, NAME, VERSION, arch=arch,
                       class_names=CLASSES, preprocess=Preprocessing(resize_mode="exact", size=(32, 32)),
                       trained=True, source="test", progress=False)
    sync(store, NAME, root, version=VERSION, progress=False)
    return root


def start_service(root: Path, **env: str) -> Service:
    """`Service.from_env` as the Lambda init runs it; Pillow's and torch's globals are put back after."""
    pixels, threads = Image.MAX_IMAGE_PIXELS, torch.get_num_threads()
    try:
        return Service.from_env({"MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": VERSION,
                                 "OMP_NUM_THREADS": "1", **env})
    finally:
        Image.MAX_IMAGE_PIXELS = pixels
        torch.set_num_threads(threads)


class Context:
    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((80, 60)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def url_event(method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
              **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"version": "2.0", "rawPath": path, "headers": headers or {},
                             "requestContext": {"http": {"method": method, "path": path}, "requestId": "r"},
                             "isBase64Encoded": isinstance(body, bytes), **extra}
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if isinstance(body, bytes) else body
    return event


# --- weights at serve time --------------------------------------------------------------------------

class OpensAFileWhenUnpickled:
    """What an attacker's weights file would do: run code as it is loaded (here: create a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return builtins.open, (str(self.marker), "w")


def test_a_pickle_posing_as_safetensors_is_refused_and_never_run(model_root: Path, tmp_path: Path) -> None:
    # GIVEN a version whose model.safetensors is a malicious pickle, with a manifest that vouches for it
    root = tmp_path / "models"
    version_dir = root / NAME / "versions" / VERSION
    version_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    weights = version_dir / WEIGHTS_FILE
    weights.write_bytes(pickle.dumps({"conv1.weight": OpensAFileWhenUnpickled(marker)}, protocol=2))
    manifest = json.loads((model_root / NAME / "versions" / VERSION / MANIFEST_FILE).read_text())
    manifest["weights"]["fp32"].update(sha256=sha256_file(weights), size=weights.stat().st_size)
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    # WHEN the loader, and then the function, try to serve it
    with pytest.raises(ModelStoreError) as caught:
        load(root, NAME, version=VERSION, variant="fp32")
    service = start_service(root, MODEL_VARIANT="fp32")
    health = service.handle(url_event("GET", "/health"), Context())
    # THEN it is refused as not being safetensors, the function answers 503, and the pickle never ran
    assert "safetensors" in str(caught.value)
    assert health["statusCode"] == 503 and "safetensors" in json.loads(health["body"])["error"]["message"]
    assert not marker.exists()


# --- logs -------------------------------------------------------------------------------------------

def test_logs_never_contain_image_bytes_base64_bodies_or_credentials(
        model_root: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a function whose environment holds credentials, and requests that carry secrets
    secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    token = "IQoJb3JpZ2luX2VjEHQaCXVzLWVhc3QtMSJHMEUCIQDexampleSessionToken0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    # a service name of its own: Powertools reuses a named logger (and the stream it was made with)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", f"security-{uuid.uuid4().hex[:8]}")
    signature = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    authorization = (f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/lambda/aws4_request, "
                     f"SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature={signature}")
    signed = {"authorization": authorization, "x-amz-security-token": token, "x-amz-date": "20260101T000000Z",
              "cookie": "session=s3cr3t-cookie-value", "content-type": "image/jpeg"}
    iam = {"authorizer": {"iam": {"accessKey": "AKIAIOSFODNN7EXAMPLE", "callerId": "AIDAEXAMPLECALLER",
                                  "userArn": "arn:aws:iam::123456789012:user/alice"}}}
    image = jpeg()
    text = base64.b64encode(image).decode()
    service = start_service(model_root)
    capfd.readouterr()
    requests: list[Any] = [
        url_event("POST", "/predict", image, signed),
        url_event("POST", "/predict", b"\xff\xd8\xff" + image[100:400], signed),  # not an image
        url_event("POST", "/predict", json.dumps({"image": text, "top_k": "many"}),
                  {**signed, "content-type": "application/json"}),
        url_event("POST", "/predict", json.dumps({"image": text[:-7] + "%%%%%%%"}),
                  {**signed, "content-type": "application/json"}),
        {"image": text, "top_k": 2},
        {"image": text + "!!"},
        {"images": [text, base64.b64encode(b"not an image").decode()]},
    ]
    for event in requests:
        context = event.get("requestContext")
        if isinstance(context, dict):
            context.update(iam)
    # WHEN the function answers them all
    statuses = []
    for event in requests:
        result = service.handle(event, Context())
        statuses.append(result.get("statusCode", result.get("status", 200)))
    captured = capfd.readouterr()
    output = captured.out + captured.err
    # THEN each request was logged (so the check below is not vacuous)...
    assert statuses == [200, 400, 400, 400, 200, 400, 200]
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{") and '"message"' in line]
    assert sum(1 for line in lines if line.get("message") == "request") == len(requests)
    # ...and no image byte, base64 fragment, header secret or credential appears anywhere in the output
    fragments = [text[i:i + 24] for i in range(0, len(text) - 24, max(1, len(text) // 12))]
    for secret in [*fragments, signature, token, secret_key, "AKIAIOSFODNN7EXAMPLE", "s3cr3t-cookie-value",
                   "AIDAEXAMPLECALLER", "user/alice", "AWS4-HMAC-SHA256", "\\xff\\xd8", "JFIF"]:
        assert secret not in output, f"{secret[:30]!r} leaked into the logs"


# --- no URL fetching (SSRF) ---------------------------------------------------------------------------

@pytest.fixture
def sockets(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) every outgoing connection attempt."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize("uri", [
    "s3://photos/incoming/dog.jpg",
    "https://example.com/dog.jpg",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://127.0.0.1:9000/predict",
    "file:///etc/passwd",
])
def test_nothing_is_fetched_without_allowed_s3_prefixes(model_root: Path, sockets: list[Any], uri: str) -> None:
    # GIVEN the default configuration (ALLOWED_S3_PREFIXES unset)
    service = start_service(model_root)
    # WHEN a direct invocation names something to fetch
    result = service.handle({"s3_uri": uri}, Context())
    # THEN it is refused as not allowed, and no connection was even attempted
    assert (result["status"], result["error"]["code"]) == (403, "s3_not_allowed")
    assert sockets == []


@pytest.mark.parametrize("uri, status, code", [
    ("https://photos.s3.amazonaws.com/incoming/dog.jpg", 400, "bad_request"),
    ("http://169.254.169.254/latest/meta-data/", 400, "bad_request"),
    ("s3://photos/incoming-private/dog.jpg", 403, "s3_not_allowed"),
    ("s3://photos/incoming/../private/dog.jpg", 403, "s3_not_allowed"),
    ("s3://other-bucket/incoming/dog.jpg", 403, "s3_not_allowed"),
])
def test_with_prefixes_set_only_s3_objects_under_them_are_ever_fetched(
        model_root: Path, sockets: list[Any], uri: str, status: int, code: str) -> None:
    # GIVEN ALLOWED_S3_PREFIXES=s3://photos/incoming
    service = start_service(model_root, ALLOWED_S3_PREFIXES="s3://photos/incoming")
    # WHEN a direct invocation names a URL, or an object outside the prefix
    result = service.handle({"s3_uri": uri}, Context())
    # THEN refused before any connection
    assert (result["status"], result["error"]["code"]) == (status, code)
    assert sockets == []


def test_http_requests_cannot_name_anything_to_fetch(model_root: Path, sockets: list[Any]) -> None:
    # GIVEN prefixes configured (the most permissive setting)
    service = start_service(model_root, ALLOWED_S3_PREFIXES="s3://photos/incoming")
    # WHEN a Function URL request asks for an s3_uri or a URL
    for payload in ({"s3_uri": "s3://photos/incoming/dog.jpg"}, {"url": "https://example.com/dog.jpg"}):
        response = service.handle(url_event("POST", "/predict", json.dumps(payload),
                                             {"content-type": "application/json"}), Context())
        # THEN 400: fetching is for direct invocations only (the caller already holds lambda:InvokeFunction)
        assert response["statusCode"] == 400 and json.loads(response["body"])["error"]["code"] == "bad_request"
    assert sockets == []


def test_the_handler_has_no_http_client_at_all() -> None:
    # GIVEN every module of the function  THEN none imports an HTTP client; boto3 only where s3_uri is read
    clients = {"urllib.request", "http.client", "requests", "httpx", "urllib3", "aiohttp", "socket", "pycurl"}
    for path in python_files("handler"):
        modules = imported_modules(path)
        assert not modules & clients, f"{path.name} imports {modules & clients}"
        if {"boto3", "botocore"} & {m.split(".")[0] for m in modules}:
            assert path.name == "s3.py", path


# --- SECURITY.md --------------------------------------------------------------------------------------

def test_security_md_answers_who_can_call_what_roles_touch_and_how_to_report() -> None:
    text = (REPO / "SECURITY.md").read_text(encoding="utf-8")
    for needed in ("AWS_IAM", "NONE", "lambda:InvokeFunctionUrl", "inference role", "sync role",
                   "ALLOWED_S3_PREFIXES", "TIFF", "HEIC", "415", "safetensors", "Reporting a vulnerability"):
        assert needed in text, needed
