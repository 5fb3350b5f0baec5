"""`python -m infra push` against a real registry on 127.0.0.1 (Debian's docker-registry), with
podman: the printed digest URI pulls back the very image that was pushed.

The image is a one-file image made with `podman import` (the real Lambda image is built and
tested by the image tests; what matters here is tag, push and digest).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.cli import main
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(not (shutil.which("podman") and shutil.which("docker-registry")),
                                reason="needs podman and docker-registry (infra/image_setup.sh installs them)")


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True, timeout=120).stdout.strip()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A plain-HTTP registry on 127.0.0.1 storing into tmp_path; yields its host:port."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("docker-registry did not start")
            time.sleep(0.2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def local_image(tmp_path: Path) -> Iterator[str]:
    """A tiny local image with a unique name; removed afterwards with everything tagged from it."""
    payload = tmp_path / "hello.txt"
    payload.write_text(f"breedserve push test {uuid.uuid4()}\n")
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(payload, arcname="hello.txt")
    tag = f"localhost/breedserve-push-test:{uuid.uuid4().hex[:12]}"
    image_id = podman("import", "-q", str(archive), tag)
    try:
        yield tag
    finally:
        subprocess.run(["podman", "rmi", "-f", image_id], capture_output=True, timeout=120, check=False)


def test_push_prints_a_digest_uri_that_pulls_back_the_same_image(registry: str, local_image: str) -> None:
    # GIVEN a local image and an empty registry
    image_id = podman("image", "inspect", "--format", "{{.Id}}", local_image)
    out = io.StringIO()
    # WHEN pushed
    code = main(["push", "--repository", f"{registry}/breedserve", "--image", local_image, "--engine", "podman",
                 "--insecure-registry"], out=out)
    # THEN it printed repository@sha256:<digest>
    assert code == 0
    uri = out.getvalue().strip()
    repository, _, digest = uri.partition("@")
    assert repository == f"{registry}/breedserve" and digest.startswith("sha256:") and len(digest) == 71
    # AND the registry serves that manifest under that digest
    request = urllib.request.Request(f"http://{registry}/v2/breedserve/manifests/{digest}", method="HEAD", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Docker-Content-Digest"] == digest
    # AND pulling the digest URI, with every local tag of the image gone, gives the same image back
    podman("rmi", "-f", local_image, f"{registry}/breedserve:img-{image_id[:12]}")
    podman("pull", "-q", "--tls-verify=false", uri)
    assert podman("image", "inspect", "--format", "{{.Id}}", uri) == image_id


def test_pushing_the_same_image_again_reuses_its_tag_and_digest(registry: str, local_image: str) -> None:
    # GIVEN an image already pushed
    first, second = io.StringIO(), io.StringIO()
    args = ["push", "--repository", f"{registry}/breedserve", "--image", local_image, "--engine", "podman",
            "--insecure-registry"]
    assert main(args, out=first) == 0
    # WHEN pushed again
    assert main(args, out=second) == 0
    # THEN the same digest URI is printed (tags are derived from the image id)
    assert first.getvalue() == second.getvalue()
