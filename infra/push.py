"""`python -m infra push`: build if needed, tag, log in to ECR, push, print the digest URI.

Lambda pins an image by digest, and the digest is only known once a registry has the image, so
`push` ends by printing `<repository>@sha256:...`: the value for `[image] uri` in the config.
The tag defaults to `img-<first 12 hex of the image id>`, so pushing the same build twice uses
the same tag (ECR tags are immutable here) and a new build never overwrites an old tag.

Building is `infra.image` (docker, else podman). Registry login is done only for ECR hosts,
with a token from `ecr.get_authorization_token` passed on stdin (never on the command line).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from infra import image as image_builder
from infra.exceptions import PushError

ECR_HOST_RE = re.compile(r"^(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
PLATFORMS = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}

Runner = Callable[[Sequence[str], str | None], str]


def run_command(command: Sequence[str], stdin: str | None = None) -> str:
    """Run an engine command; its stderr's last line becomes the `PushError` message on failure."""
    try:
        completed = subprocess.run(list(command), input=stdin, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise PushError(f"cannot run {command[0]}: {exc.strerror}") from None
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise PushError(f"{' '.join(command[:2])} failed (exit {completed.returncode}): {tail[0]}")
    return completed.stdout


@dataclass(frozen=True)
class PushRequest:
    repository: str
    local_tag: str = image_builder.DEFAULT_TAG
    tag: str | None = None
    platform: str | None = None
    build: bool = False
    local_build: bool = False
    engine: str | None = None
    tls_verify: bool = True


def registry_host(repository: str) -> str:
    host = repository.split("/", 1)[0]
    if "/" not in repository or not host:
        raise PushError(f"--repository {repository!r}: expected HOST/NAME, e.g. "
                        "123456789012.dkr.ecr.us-east-1.amazonaws.com/breedserve")
    return host


def ecr_region(repository: str) -> str | None:
    """The region of an ECR repository URI, or None for any other registry."""
    match = ECR_HOST_RE.match(registry_host(repository))
    return match.group("region") if match else None


def push_image(request: PushRequest, *, login: Callable[[], tuple[str, str, str]] | None, out: TextIO,
               run: Runner = run_command, build: Callable[..., object] | None = None) -> str:
    """Push `request.local_tag` to the repository; returns `repository@sha256:...`.

    `login` returns (user, password, registry) for ECR repositories; `run` and `build` are
    injectable so the command sequence can be tested without an engine.
    """
    host = registry_host(request.repository)
    engine = request.engine or image_builder.detect_engine()
    image_id = _image_id(engine, request.local_tag, run)
    if request.build or image_id is None:
        print(f"push: building {request.local_tag}", file=out, flush=True)
        if build is not None:
            build(request.local_tag, platform=request.platform, engine=engine)
        elif request.local_build:
            image_builder.build_local_image(request.local_tag)
        else:
            image_builder.build_image(request.local_tag, platform=request.platform, engine=engine)
        image_id = _image_id(engine, request.local_tag, run)
        if image_id is None:
            raise PushError(f"the build finished but {request.local_tag} does not exist")
    tag = request.tag or f"img-{image_id.removeprefix('sha256:')[:12]}"
    target = f"{request.repository}:{tag}"
    run([engine, "tag", request.local_tag, target], None)
    tls = [] if request.tls_verify or engine != "podman" else ["--tls-verify=false"]
    if login is not None:
        user, password, _ = login()
        print(f"push: logging in to {host}", file=out, flush=True)
        run([engine, "login", *tls, "--username", user, "--password-stdin", host], password)
    print(f"push: pushing {target}", file=out, flush=True)
    if engine == "podman":
        with tempfile.TemporaryDirectory(prefix="breedserve-push-") as workdir:
            digest_file = Path(workdir) / "digest"
            run([engine, "push", *tls, "--digestfile", str(digest_file), target], None)
            found = DIGEST_RE.search(digest_file.read_text() if digest_file.exists() else "")
    else:
        found = DIGEST_RE.search(run([engine, "push", target], None))
    if not found:
        raise PushError(f"{engine} push of {target} reported no digest")
    return f"{request.repository}@{found.group(0)}"


def _image_id(engine: str, tag: str, run: Runner) -> str | None:
    try:
        return run([engine, "image", "inspect", "--format", "{{.Id}}", tag], None).strip() or None
    except PushError:
        return None
