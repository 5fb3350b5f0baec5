"""`push` as a sequence of engine commands, recorded instead of run (the real push to a registry
on 127.0.0.1 is in tests/functional/test_infra_push_registry.py)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from infra.exceptions import PushError
from infra.push import PushRequest, ecr_region, push_image

ECR = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/breedserve"
DIGEST = "sha256:" + "ab" * 32
IMAGE_ID = "sha256:0123456789abcdef" + "0" * 48


class Engine:
    """Answers like podman/docker would; records every command and what went to stdin."""

    def __init__(self, *, has_image: bool = True) -> None:
        self.has_image = has_image
        self.commands: list[list[str]] = []
        self.stdin: list[str | None] = []

    def __call__(self, command: Sequence[str], stdin: str | None) -> str:
        self.commands.append(list(command))
        self.stdin.append(stdin)
        if command[1:3] == ["image", "inspect"]:
            if not self.has_image:
                raise PushError("no such image")
            return IMAGE_ID + "\n"
        if command[1] == "push":
            if "--digestfile" in command:
                Path(command[command.index("--digestfile") + 1]).write_text(DIGEST)
                return ""
            return f"latest: digest: {DIGEST} size: 1234\n"
        return ""

    def build(self, tag: str, **options: object) -> None:
        self.commands.append(["build", tag])
        self.has_image = True


def test_an_ecr_push_logs_in_with_the_token_on_stdin_and_returns_the_digest_uri() -> None:
    # GIVEN a local image and an ECR repository
    engine = Engine()
    request = PushRequest(repository=ECR, local_tag="breedserve:latest", engine="podman")
    # WHEN pushed
    uri = push_image(request, login=lambda: ("AWS", "s3cret-token", f"https://{ECR.split('/')[0]}"), out=io.StringIO(),
                     run=engine)
    # THEN it tagged by image id, logged in with the password on stdin only, pushed, and read the digest
    assert uri == f"{ECR}@{DIGEST}"
    tag, login, push = engine.commands[1], engine.commands[2], engine.commands[3]
    assert tag == ["podman", "tag", "breedserve:latest", f"{ECR}:img-0123456789ab"]
    assert login == ["podman", "login", "--username", "AWS", "--password-stdin", ECR.split("/")[0]]
    assert not any("s3cret-token" in part for command in engine.commands for part in command)
    assert engine.stdin[2] == "s3cret-token"
    assert push[:2] == ["podman", "push"] and push[-1] == f"{ECR}:img-0123456789ab"


def test_docker_push_reads_the_digest_from_its_output() -> None:
    # GIVEN docker as the engine and an explicit tag
    engine = Engine()
    request = PushRequest(repository=ECR, tag="v1", engine="docker")
    # WHEN pushed
    uri = push_image(request, login=None, out=io.StringIO(), run=engine)
    # THEN the digest printed by docker push is used
    assert uri == f"{ECR}@{DIGEST}" and engine.commands[-1] == ["docker", "push", f"{ECR}:v1"]


def test_a_missing_image_is_built_first() -> None:
    # GIVEN no local image
    engine = Engine(has_image=False)
    request = PushRequest(repository="127.0.0.1:5000/breedserve", engine="podman", tls_verify=False,
                          platform="linux/arm64")
    # WHEN pushed to a plain-HTTP registry
    uri = push_image(request, login=None, out=io.StringIO(), run=engine, build=engine.build)
    # THEN it was built, then pushed without TLS verification and without login
    assert ["build", "breedserve:latest"] in engine.commands
    assert not any(c[1] == "login" for c in engine.commands if c[0] == "podman")
    assert "--tls-verify=false" in engine.commands[-1]
    assert re.fullmatch(r"127\.0\.0\.1:5000/breedserve@sha256:[0-9a-f]{64}", uri)


@pytest.mark.parametrize("repository, region", [(ECR, "eu-west-1"), ("127.0.0.1:5000/x", None),
                                                ("ghcr.io/org/breedserve", None)])
def test_only_ecr_hosts_need_an_ecr_login(repository: str, region: str | None) -> None:
    assert ecr_region(repository) == region


def test_a_repository_without_a_host_is_refused() -> None:
    with pytest.raises(PushError, match="HOST/NAME"):
        push_image(PushRequest(repository="breedserve", engine="podman"), login=None, out=io.StringIO(), run=Engine())
