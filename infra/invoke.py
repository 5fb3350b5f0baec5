"""`python -m infra invoke --image photo.jpg`: call the Function URL, signed with SigV4.

An `AWS_IAM` Function URL only answers requests signed for the service "lambda" in its region;
botocore's `SigV4Auth` does the signing (with the body's hash), so any credentials boto3 finds
work, including temporary ones (their session token is signed too). The image is sent as raw
bytes to `POST /predict`, as the handler expects.
"""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from infra.exceptions import CredentialsError, InvokeError

MAX_UPLOAD_BYTES = 6 * 1024 * 1024
# Plain HTTP is allowed only to this machine (local stand-ins and tests); signed requests and
# photos go to AWS over TLS.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def content_type_of(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed if guessed and guessed.startswith("image/") else "application/octet-stream"


def signed_request(url: str, body: bytes, content_type: str, credentials: Credentials | None, region: str,
                   *, top_k: int = 5) -> AWSRequest:
    """`POST <url>/predict?top_k=N` with SigV4 headers (Authorization, X-Amz-Date, token)."""
    if credentials is None:
        raise CredentialsError("no AWS credentials found to sign the request (AWS_IAM Function URL)")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "https" and not (parsed.scheme == "http" and parsed.hostname in LOOPBACK):
        raise InvokeError(f"refusing to send a signed request to {url!r}: use the https:// Function URL")
    endpoint = urllib.parse.urljoin(url if url.endswith("/") else url + "/", "predict")
    request = AWSRequest(method="POST", url=f"{endpoint}?top_k={top_k}", data=body,
                         headers={"Content-Type": content_type})
    SigV4Auth(credentials, "lambda", region).add_auth(request)
    return request


def send(request: AWSRequest, timeout: float = 60.0) -> dict[str, Any]:
    """Send a prepared request; returns the JSON answer or raises `InvokeError` with its message."""
    prepared = request.prepare()
    outgoing = urllib.request.Request(prepared.url, data=prepared.body, method=prepared.method,
                                      headers=dict(prepared.headers.items()))
    try:
        # The scheme was checked in signed_request: https, or http to loopback only.
        with urllib.request.urlopen(outgoing, timeout=timeout) as answer:  # nosec B310
            payload = answer.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        raise InvokeError(f"the function answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise InvokeError(f"cannot reach {prepared.url.split('?')[0]}: {getattr(exc, 'reason', exc)}") from None
    try:
        return dict(json.loads(payload))
    except (ValueError, TypeError):
        raise InvokeError(f"the function answered something that is not a JSON object: {payload[:100]!r}") from None


def invoke_image(url: str, image: Path, credentials: Credentials | None, region: str, *, top_k: int = 5,
                 timeout: float = 60.0) -> dict[str, Any]:
    try:
        body = image.read_bytes()
    except OSError as exc:
        raise InvokeError(f"cannot read {image}: {exc.strerror}") from None
    if len(body) > MAX_UPLOAD_BYTES:
        raise InvokeError(f"{image} is {len(body) / 1e6:.1f} MB: a Function URL request holds at most 6 MB")
    return send(signed_request(url, body, content_type_of(image), credentials, region, top_k=top_k), timeout)


def format_predictions(answer: dict[str, Any]) -> str:
    """One line per prediction: probability and label, then the model that answered."""
    predictions = answer.get("predictions")
    if not isinstance(predictions, list):
        return json.dumps(answer, indent=2)
    lines = [f"{float(p.get('probability', 0.0)):6.2%}  {p.get('label', p.get('index'))}" for p in predictions]
    model = answer.get("model")
    if isinstance(model, dict):
        lines.append("model: " + ", ".join(f"{k} {v}" for k, v in model.items()))
    if answer.get("warning"):
        lines.append(f"warning: {answer['warning']}")
    return "\n".join(lines)
