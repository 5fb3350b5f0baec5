"""The command line: help everywhere, one clear line and a non-zero exit on failure."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from infra.cli import COMMANDS, main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "infra" / "config.example.toml")


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(COMMANDS))])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN asked for help
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    # THEN it exits 0 with a usage text that names the command
    assert exited.value.code == 0
    assert f"usage: python -m infra {command[0] if command else ''}".rstrip() in capsys.readouterr().out


def test_a_missing_config_file_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN planning with a config that does not exist
    code = main(["plan", "--config", str(tmp_path / "nope.toml")])
    # THEN one line says so
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "does not exist" in err


def test_no_credentials_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN no AWS credentials at all
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    # WHEN any AWS command runs
    code = main(["status", "--config", EXAMPLE])
    # THEN it fails with one actionable line
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no AWS credentials found" in err


def test_policy_prints_both_deployer_documents_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN the deployer policy is printed for a given account (no AWS call needed)
    out = io.StringIO()
    code = main(["policy", "--config", EXAMPLE, "--account", "111122223333"], out=out)
    # THEN it is JSON naming both managed policies, scoped to that account
    documents = json.loads(out.getvalue())
    assert code == 0 and set(documents) == {"breedserve-deployer-infrastructure", "breedserve-deployer-functions"}
    assert "111122223333" in out.getvalue() and "123456789012" not in out.getvalue()
    assert "--which deployer-infrastructure" in capsys.readouterr().err


def test_policy_prints_one_role_document(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["policy", "--config", EXAMPLE, "--account", "111122223333", "--which", "inference-role"], out=out) == 0
    assert json.loads(out.getvalue())["Version"] == "2012-10-17"


def test_a_bad_account_id_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "--config", EXAMPLE, "--account", "12"]) == 1
    assert "12-digit" in capsys.readouterr().err


def test_push_needs_a_config_or_a_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["push"]) == 1
    assert "--repository" in capsys.readouterr().err
