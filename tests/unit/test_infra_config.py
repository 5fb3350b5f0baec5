"""The TOML configuration: the example documents every key, and bad values name their key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from infra.config import (
    AlarmsConfig,
    CorsConfig,
    EfsConfig,
    FunctionConfig,
    ImageConfig,
    ModelConfig,
    NetworkConfig,
    ProvisionedConfig,
    SyncConfig,
    UrlConfig,
    load_config,
    parse_config,
)
from infra.exceptions import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "config.example.toml"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/breedserve:0.1.0"


def minimal(**tables: Any) -> dict[str, Any]:
    return {"name": "demo", "image": {"uri": IMAGE}, **tables}


def test_the_example_config_loads_with_the_documented_values() -> None:
    # GIVEN the shipped example
    # WHEN loaded
    config = load_config(EXAMPLE)
    # THEN it describes a private, IAM-authenticated stack with provisioned concurrency off
    assert (config.name, config.region, config.url.auth) == ("breedserve", "us-east-1", "AWS_IAM")
    assert config.provisioned.enabled is False and config.function.reserved_concurrency == 10
    assert config.network.create and config.efs.create and config.efs.mount_path == "/mnt/models"


def test_the_example_documents_every_key_of_every_table() -> None:
    # GIVEN the example parsed as plain TOML, and the dataclass behind each table
    example = tomllib.loads(EXAMPLE.read_text())
    tables = {"image": ImageConfig, "model": ModelConfig, "function": FunctionConfig, "sync": SyncConfig,
              "network": NetworkConfig, "efs": EfsConfig, "url": UrlConfig, "provisioned_concurrency": ProvisionedConfig,
              "alarms": AlarmsConfig}
    # WHEN comparing each table's keys with the dataclass fields
    for table, cls in tables.items():
        expected = {f.name for f in dataclasses.fields(cls)}
        # THEN the example lists exactly the settings the code knows
        assert set(example[table]) == expected, table
    assert set(example["url"]["cors"]) == {f.name for f in dataclasses.fields(CorsConfig)}
    assert set(example["logs"]) == {"retention_days"} and {"name", "region", "tags"} <= set(example)


def test_defaults_apply_to_a_minimal_config() -> None:
    # GIVEN only the required keys
    config = parse_config(minimal())
    # THEN every other setting has its safe default
    assert config.function.reserved_concurrency == 0 and config.url.cors.allow_origins == ()
    assert config.log_retention_days == 14 and config.repository_name == "demo"


@pytest.mark.parametrize("data, message", [
    ({"image": {"uri": IMAGE}}, "name is required"),
    (minimal(name="Bad_Name"), "name = 'Bad_Name' is invalid"),
    ({"name": "demo"}, "image.uri is required"),
    (minimal(image={"uri": "docker.io/library/python:3.12"}), "image.uri = 'docker.io/library/python:3.12' is invalid"),
    (minimal(function={"memory_mb": 64}), "function.memory_mb must be an integer from 128 to 10240, not 64"),
    (minimal(function={"memory_mb": "3008"}), "function.memory_mb must be an integer"),
    (minimal(function={"reserverd_concurrency": 5}),
     "function.reserverd_concurrency is not a known key (did you mean 'reserved_concurrency'?)"),
    (minimal(function={"environment": {"MODEL_VERSION": "x"}}), "must not set ['MODEL_VERSION']"),
    (minimal(url={"auth": "PUBLIC"}), "url.auth must be one of AWS_IAM, NONE, not 'PUBLIC'"),
    (minimal(url={"cors": {"allow_methods": ["FETCH"]}}), "url.cors.allow_methods has an invalid entry 'FETCH'"),
    (minimal(provisioned_concurrency={"min": 5, "max": 2}), "provisioned_concurrency.min (5) must not exceed max"),
    (minimal(network={"create": False}), "give at least two subnet_ids"),
    (minimal(network={"subnet_ids": ["subnet-0a", "subnet-0b"]}), "network.create is true"),
    (minimal(network={"cidr": "10.0.0.0/8"}), "from /16 to /24"),
    (minimal(efs={"mount_path": "/models"}), "directly under /mnt/"),
    (minimal(logs={"retention_days": 10}), "logs.retention_days must be one of"),
    (minimal(tags={"aws:owner": "me"}), "reserved"),
    (minimal(colour="blue"), "colour is not a known key"),
])
def test_invalid_settings_are_refused_naming_the_key(data: dict[str, Any], message: str) -> None:
    # WHEN an invalid configuration is parsed
    with pytest.raises(ConfigError) as raised:
        parse_config(data, source="test.toml")
    # THEN the one-line message names the file, the key and what is expected
    assert message in str(raised.value)
    assert str(raised.value).startswith("test.toml") and "\n" not in str(raised.value)


def test_missing_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    # GIVEN no file, and a file that is not TOML
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [unclosed\n")
    # THEN each is a ConfigError naming the file
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        load_config(broken)
