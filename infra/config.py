"""The deployment configuration: one TOML file, validated into frozen dataclasses.

Every key is optional except where noted in `infra/config.example.toml`, which documents them
all. Validation happens once, here, and names the offending key (`function.memory_mb must be an
integer from 128 to 10240, not 64`), so nothing later has to guess what a value means. Unknown
keys are errors too: a typo such as `reserverd_concurrency` must not silently deploy defaults.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.exceptions import ConfigError

STACK_TAG = "breedserve:stack"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
IMAGE_URI_RE = re.compile(r"^[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9._/-]+(:[\w.-]{1,128}|@sha256:[0-9a-f]{64})$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)


@dataclass(frozen=True)
class ImageConfig:
    """The container image both functions run, and the ECR repository `deploy` creates for it."""

    uri: str
    architecture: str = "x86_64"
    repository: str = ""
    keep_images: int = 20


@dataclass(frozen=True)
class ModelConfig:
    """Where published model versions live (S3) and which version the inference function serves."""

    name: str = "dogbreeds"
    version: str = "demo-1"
    bucket: str = ""
    prefix: str = "models"


@dataclass(frozen=True)
class FunctionConfig:
    """The inference function's size and limits."""

    memory_mb: int = 3008
    timeout_s: int = 30
    ephemeral_storage_mb: int = 512
    reserved_concurrency: int = 0
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncConfig:
    """The model-sync function's size (it copies a version from S3 to EFS)."""

    memory_mb: int = 1024
    timeout_s: int = 300


@dataclass(frozen=True)
class NetworkConfig:
    """Create a VPC (two private subnets, no NAT) or reuse subnets and security groups."""

    create: bool = True
    cidr: str = "10.42.0.0/16"
    availability_zones: tuple[str, ...] = ()
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    efs_security_group_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class EfsConfig:
    """Create an EFS file system with an access point, or reuse existing ones."""

    create: bool = True
    file_system_id: str = ""
    access_point_id: str = ""
    mount_path: str = "/mnt/models"
    root_directory: str = "/breedserve"
    uid: int = 1000
    gid: int = 1000


@dataclass(frozen=True)
class CorsConfig:
    """The Function URL's CORS answer; empty `allow_origins` disables CORS."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("POST",)
    allow_headers: tuple[str, ...] = ("content-type",)
    expose_headers: tuple[str, ...] = ()
    max_age: int = 300
    allow_credentials: bool = False


@dataclass(frozen=True)
class UrlConfig:
    """The Function URL on the `live` alias."""

    auth: str = "AWS_IAM"
    invoke_mode: str = "BUFFERED"
    cors: CorsConfig = field(default_factory=CorsConfig)


@dataclass(frozen=True)
class ProvisionedConfig:
    """Provisioned concurrency on the alias, scaled by target tracking. Off by default: it bills hourly."""

    enabled: bool = False
    min: int = 1
    max: int = 5
    target_utilization: float = 0.7


@dataclass(frozen=True)
class AlarmsConfig:
    """CloudWatch alarm thresholds (per minute unless named otherwise)."""

    errors: int = 5
    throttles: int = 1
    p99_duration_ms: int = 10000
    canary_error_rate_percent: float = 5.0
    evaluation_periods: int = 3
    topic_arn: str = ""


@dataclass(frozen=True)
class Config:
    """Everything `python -m infra` needs to know about one deployment (a "stack")."""

    name: str
    region: str
    image: ImageConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    function: FunctionConfig = field(default_factory=FunctionConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    efs: EfsConfig = field(default_factory=EfsConfig)
    url: UrlConfig = field(default_factory=UrlConfig)
    provisioned: ProvisionedConfig = field(default_factory=ProvisionedConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    log_retention_days: int = 14
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def repository_name(self) -> str:
        return self.image.repository or self.name


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (start from infra/config.example.toml)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))


def parse_config(data: Mapping[str, Any], source: str = "config") -> Config:
    """Validate an already-parsed TOML document; errors name the key as `table.key`."""
    top = _Table(data, "", source)
    name = top.string("name", pattern=NAME_RE, hint="3-32 characters: lower-case letters, digits, '-'")
    region = top.string("region", default="us-east-1", pattern=re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$"),
                        hint="an AWS region such as us-east-1")
    image, model = top.table("image"), top.table("model")
    function, sync = top.table("function"), top.table("sync")
    network, efs, url = top.table("network"), top.table("efs"), top.table("url")
    provisioned, alarms, logs = top.table("provisioned_concurrency"), top.table("alarms"), top.table("logs")
    tags_table = top.table("tags")
    config = Config(
        name=name,
        region=region,
        image=_image(image),
        model=_model(model),
        function=_function(function),
        sync=SyncConfig(memory_mb=sync.integer("memory_mb", 1024, 128, 10240),
                        timeout_s=sync.integer("timeout_s", 300, 1, 900)),
        network=_network(network),
        efs=_efs(efs),
        url=_url(url),
        provisioned=_provisioned(provisioned),
        alarms=_alarms(alarms),
        log_retention_days=logs.integer("retention_days", 14, 1, 3653),
        tags=_tags(tags_table),
    )
    if config.log_retention_days not in LOG_RETENTION_DAYS:
        raise ConfigError(f"{source}: logs.retention_days must be one of {LOG_RETENTION_DAYS}, "
                          f"not {config.log_retention_days}")
    for table in (top, image, model, function, sync, network, efs, url, provisioned, alarms, logs):
        table.reject_unknown()
    return config


def _image(t: _Table) -> ImageConfig:
    return ImageConfig(
        uri=t.string("uri", pattern=IMAGE_URI_RE,
                     hint="an ECR image URI with a tag or digest, as printed by `python -m infra push`"),
        architecture=t.choice("architecture", "x86_64", ("x86_64", "arm64")),
        repository=t.string("repository", default="", pattern=re.compile(r"^([a-z0-9][a-z0-9._/-]{1,254})?$"),
                            hint="an ECR repository name"),
        keep_images=t.integer("keep_images", 20, 1, 1000),
    )


def _model(t: _Table) -> ModelConfig:
    return ModelConfig(
        name=t.string("name", default="dogbreeds", pattern=MODEL_NAME_RE, hint="a model name"),
        version=t.string("version", default="demo-1", pattern=MODEL_NAME_RE, hint="a model version"),
        bucket=t.string("bucket", default="", pattern=re.compile(r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$"),
                        hint="an S3 bucket name, or empty for <name>-models-<account>-<region>"),
        prefix=t.string("prefix", default="models", pattern=re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"),
                        hint="a key prefix without leading or trailing '/'"),
    )


def _function(t: _Table) -> FunctionConfig:
    environment = t.string_map("environment")
    reserved = {"MODEL_ROOT", "MODEL_NAME", "MODEL_VERSION", "MODEL_ALIAS"} & set(environment)
    if reserved:
        raise ConfigError(f"{t.where('environment')} must not set {sorted(reserved)}: they come from [model] and [efs]")
    return FunctionConfig(
        memory_mb=t.integer("memory_mb", 3008, 128, 10240),
        timeout_s=t.integer("timeout_s", 30, 1, 900),
        ephemeral_storage_mb=t.integer("ephemeral_storage_mb", 512, 512, 10240),
        reserved_concurrency=t.integer("reserved_concurrency", 0, 0, 100000),
        environment=environment,
    )


def _network(t: _Table) -> NetworkConfig:
    create = t.boolean("create", True)
    cidr = t.string("cidr", default="10.42.0.0/16")
    try:
        net = ipaddress.ip_network(cidr)
    except ValueError:
        raise ConfigError(f"{t.where('cidr')} must be an IPv4 CIDR block such as 10.42.0.0/16, not {cidr!r}") from None
    if net.version != 4 or not 16 <= net.prefixlen <= 24:
        raise ConfigError(f"{t.where('cidr')} must be an IPv4 block from /16 to /24, not {cidr!r}")
    config = NetworkConfig(
        create=create,
        cidr=cidr,
        availability_zones=t.strings("availability_zones"),
        subnet_ids=t.strings("subnet_ids", pattern=re.compile(r"^subnet-[0-9a-f]+$")),
        security_group_ids=t.strings("security_group_ids", pattern=re.compile(r"^sg-[0-9a-f]+$")),
        efs_security_group_ids=t.strings("efs_security_group_ids", pattern=re.compile(r"^sg-[0-9a-f]+$")),
    )
    if create and (config.subnet_ids or config.security_group_ids or config.efs_security_group_ids):
        raise ConfigError(f"{t.where('create')} is true: remove subnet_ids/security_group_ids, or set create = false to reuse them")
    if not create and (len(config.subnet_ids) < 2 or not config.security_group_ids):
        raise ConfigError(f"{t.where('create')} is false: give at least two subnet_ids (two AZs) and security_group_ids")
    if create and config.availability_zones and len(config.availability_zones) != 2:
        raise ConfigError(f"{t.where('availability_zones')} must name exactly two zones, or be empty for the first two")
    return config


def _efs(t: _Table) -> EfsConfig:
    config = EfsConfig(
        create=t.boolean("create", True),
        file_system_id=t.string("file_system_id", default="", pattern=re.compile(r"^(fs-[0-9a-f]+)?$"),
                                hint="an EFS id such as fs-0123abcd"),
        access_point_id=t.string("access_point_id", default="", pattern=re.compile(r"^(fsap-[0-9a-f]+)?$"),
                                 hint="an access point id such as fsap-0123abcd"),
        mount_path=t.string("mount_path", default="/mnt/models", pattern=re.compile(r"^/mnt/[A-Za-z0-9._-]+$"),
                            hint="a directory directly under /mnt/ (Lambda's rule)"),
        root_directory=t.string("root_directory", default="/breedserve", pattern=re.compile(r"^(/[A-Za-z0-9._-]+)+$"),
                                hint="an absolute path on the file system"),
        uid=t.integer("uid", 1000, 1, 4294967295),
        gid=t.integer("gid", 1000, 1, 4294967295),
    )
    if config.create and (config.file_system_id or config.access_point_id):
        raise ConfigError(f"{t.where('create')} is true: remove file_system_id/access_point_id, or set create = false")
    if not config.create and not (config.file_system_id and config.access_point_id):
        raise ConfigError(f"{t.where('create')} is false: give file_system_id and access_point_id to reuse")
    return config


def _url(t: _Table) -> UrlConfig:
    cors = t.table("cors")
    config = UrlConfig(
        auth=t.choice("auth", "AWS_IAM", ("AWS_IAM", "NONE")),
        invoke_mode=t.choice("invoke_mode", "BUFFERED", ("BUFFERED", "RESPONSE_STREAM")),
        cors=CorsConfig(
            allow_origins=cors.strings("allow_origins"),
            allow_methods=cors.strings("allow_methods", default=("POST",),
                                       pattern=re.compile(r"^(GET|PUT|HEAD|POST|PATCH|DELETE|\*)$")),
            allow_headers=cors.strings("allow_headers", default=("content-type",)),
            expose_headers=cors.strings("expose_headers"),
            max_age=cors.integer("max_age", 300, 0, 86400),
            allow_credentials=cors.boolean("allow_credentials", False),
        ),
    )
    cors.reject_unknown()
    return config


def _provisioned(t: _Table) -> ProvisionedConfig:
    config = ProvisionedConfig(
        enabled=t.boolean("enabled", False),
        min=t.integer("min", 1, 1, 10000),
        max=t.integer("max", 5, 1, 10000),
        target_utilization=t.number("target_utilization", 0.7, 0.1, 0.9),
    )
    if config.min > config.max:
        raise ConfigError(f"{t.where('min')} ({config.min}) must not exceed max ({config.max})")
    return config


def _alarms(t: _Table) -> AlarmsConfig:
    return AlarmsConfig(
        errors=t.integer("errors", 5, 1, 1_000_000),
        throttles=t.integer("throttles", 1, 1, 1_000_000),
        p99_duration_ms=t.integer("p99_duration_ms", 10000, 1, 900_000),
        canary_error_rate_percent=t.number("canary_error_rate_percent", 5.0, 0.1, 100.0),
        evaluation_periods=t.integer("evaluation_periods", 3, 1, 60),
        topic_arn=t.string("topic_arn", default="", pattern=re.compile(r"^(arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[\w-]+)?$"),
                           hint="an SNS topic ARN, or empty"),
    )


def _tags(t: _Table) -> dict[str, str]:
    tags = t.string_map(None)
    for key in tags:
        if key.startswith(("aws:", "breedserve:")):
            raise ConfigError(f"{t.where(key)}: tag keys starting with 'aws:' or 'breedserve:' are reserved")
    return tags


class _Table:
    """One TOML table, read key by key; remembers what was read so typos can be reported."""

    def __init__(self, data: Any, path: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: [{path}] must be a table")
        self.data, self.path, self.source = data, path, source
        self.seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.source}: {self.path + '.' if self.path else ''}{key}"

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def table(self, key: str) -> _Table:
        value = self._get(key)
        path = f"{self.path}.{key}" if self.path else key
        return _Table({} if value is None else value, path, self.source)

    def string(self, key: str, default: str | None = None, pattern: re.Pattern[str] | None = None,
               hint: str = "") -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.where(key)} is required" + (f": {hint}" if hint else ""))
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.where(key)} must be a string, not {type(value).__name__}")
        if pattern is not None and not pattern.match(value):
            raise ConfigError(f"{self.where(key)} = {value!r} is invalid" + (f": expected {hint}" if hint else ""))
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise ConfigError(f"{self.where(key)} must be one of {', '.join(choices)}, not {value!r}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{self.where(key)} must be an integer from {low} to {high}, not {value!r}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{self.where(key)} must be a number from {low} to {high}, not {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)} must be true or false, not {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] = (), pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.where(key)} must be a list of strings")
        for item in value:
            if pattern is not None and not pattern.match(item):
                raise ConfigError(f"{self.where(key)} has an invalid entry {item!r}")
        return tuple(value)

    def string_map(self, key: str | None) -> dict[str, str]:
        """A table of string values; `key=None` means this whole table is the map."""
        value = self.data if key is None else self._get(key)
        if key is None:
            self.seen.update(self.data)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where(key or '')} must be a table of strings")
        for k, v in value.items():
            if not isinstance(v, str):
                raise ConfigError(f"{self.where(f'{key}.{k}' if key else k)} must be a string, not {type(v).__name__}")
        return dict(value)

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(self.seen), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{self.where(key)} is not a known key{hint}")
