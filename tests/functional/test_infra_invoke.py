"""`invoke` signs its request with SigV4 for the service "lambda": checked by a Function-URL
stand-in on 127.0.0.1 that recomputes the signature from what it received, with botocore."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from infra.cli import main
from infra.exceptions import InvokeError
from infra.invoke import format_predictions, invoke_image

EXAMPLE = str(Path(__file__).resolve().parents[2] / "infra" / "config.example.toml")
CREDENTIALS = Credentials("testing", "testing-secret", "testing-token")
AUTHORIZATION = re.compile(r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
                           r"(?P<service>[a-z]+)/aws4_request, SignedHeaders=(?P<headers>[a-z0-9;-]+), "
                           r"Signature=(?P<signature>[0-9a-f]{64})$")
ANSWER = {"predictions": [{"index": 3, "label": "Beagle", "probability": 0.875},
                          {"index": 9, "label": "Basset hound", "probability": 0.0625}],
          "model": {"name": "dogbreeds", "version": "demo-1"}}


class FunctionUrl(BaseHTTPRequestHandler):
    """Answers like an AWS_IAM Function URL: 403 unless the SigV4 signature verifies."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        match = AUTHORIZATION.match(self.headers.get("Authorization", ""))
        record = {"path": self.path, "headers": dict(self.headers), "body": body, "match": match}
        FunctionUrl.seen.append(record)
        if not match or not self._signature_ok(match, body):
            self._answer(403, {"Message": "Forbidden"})
            return
        self._answer(200, ANSWER)

    def _signature_ok(self, match: re.Match[str], body: bytes) -> bool:
        host = self.headers["Host"]
        signed = match.group("headers").split(";")
        request = AWSRequest(method="POST", url=f"http://{host}{self.path}", data=body,
                             headers={name: self.headers[name] for name in signed})
        request.context["timestamp"] = self.headers["X-Amz-Date"]
        auth = SigV4Auth(CREDENTIALS, match.group("service"), match.group("region"))
        canonical = auth.canonical_request(request)
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        return expected == match.group("signature")

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def function_url() -> Iterator[str]:
    FunctionUrl.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FunctionUrl)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "dog.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9")
    return path


def test_the_request_is_sigv4_signed_for_lambda_in_the_region(function_url: str, photo: Path) -> None:
    # WHEN the photo is sent to the Function URL
    answer = invoke_image(function_url, photo, CREDENTIALS, "eu-west-1", top_k=2)
    # THEN the stand-in verified the signature and answered the predictions
    assert answer == ANSWER
    seen = FunctionUrl.seen[0]
    match = seen["match"]
    assert (match.group("key"), match.group("region"), match.group("service")) == ("testing", "eu-west-1", "lambda")
    assert {"host", "x-amz-date", "x-amz-security-token"} <= set(match.group("headers").split(";"))
    # AND the raw image went to POST /predict as image/jpeg, with top_k in the query
    assert seen["path"] == "/predict?top_k=2" and seen["body"] == photo.read_bytes()
    assert seen["headers"]["Content-Type"] == "image/jpeg"


def test_a_wrong_secret_is_refused_by_the_url(function_url: str, photo: Path) -> None:
    # GIVEN credentials whose secret differs from the one the URL checks against
    wrong = Credentials("testing", "another-secret", "testing-token")
    # WHEN invoking
    # THEN the 403 surfaces as an InvokeError with the function's answer
    with pytest.raises(InvokeError, match="answered 403"):
        invoke_image(function_url, photo, wrong, "us-east-1")


def test_the_cli_prints_the_predictions(function_url: str, photo: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the conftest's fake credentials, with the secret the URL expects
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing-token")
    # WHEN `invoke` is given the URL (no AWS lookup needed)
    out = io.StringIO()
    code = main(["invoke", "--config", EXAMPLE, "--image", str(photo), "--url", function_url], out=out)
    # THEN it printed one line per prediction
    assert code == 0, capsys.readouterr().err
    assert out.getvalue().splitlines()[:2] == ["87.50%  Beagle", " 6.25%  Basset hound"]


@pytest.mark.parametrize("url", ["http://abc.lambda-url.us-east-1.on.aws/", "file:///etc/passwd", "ftp://x/"])
def test_signed_requests_go_only_over_https_or_to_loopback(url: str, photo: Path) -> None:
    with pytest.raises(InvokeError, match="refusing"):
        invoke_image(url, photo, CREDENTIALS, "us-east-1")


def test_an_unreachable_url_is_one_clear_error(photo: Path) -> None:
    with pytest.raises(InvokeError, match="cannot reach http://127.0.0.1:9/predict"):
        invoke_image("http://127.0.0.1:9/", photo, CREDENTIALS, "us-east-1", timeout=5)


def test_predictions_are_formatted_with_the_model_and_warning() -> None:
    text = format_predictions({**ANSWER, "warning": "untrained demo model"})
    assert text.splitlines() == ["87.50%  Beagle", " 6.25%  Basset hound", "model: name dogbreeds, version demo-1",
                                 "warning: untrained demo model"]
