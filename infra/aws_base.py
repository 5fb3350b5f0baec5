"""Shared plumbing of the AWS façade: clients, bounded waits, and IAM-propagation retries.

Clients use botocore's "standard" retry mode, which already retries throttling and transient
5xx answers; what botocore cannot know is *eventual consistency*, so the two helpers here wait
for a state (`wait_until`) or retry a known propagation error (`retry_while`) within a fixed
time budget and then fail with a clear message instead of hanging.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

from infra.exceptions import CredentialsError, WaitTimeoutError

T = TypeVar("T")

CLIENT_CONFIG = BotoConfig(retries={"mode": "standard", "max_attempts": 8}, user_agent_extra="breedserve-infra",
                           connect_timeout=10, read_timeout=60)


_MODEL_LOADER: botocore.loaders.Loader | None = None


def new_session(region: str) -> boto3.Session:
    """A fresh session (credentials resolved anew) sharing one loader of service models.

    Parsing the service JSON (EC2's is megabytes) dominates client creation; the loader only
    caches those models, so sharing it across sessions in one process is safe and saves seconds
    per command when commands run in-process (the tests, `canary --watch`).
    """
    global _MODEL_LOADER
    if _MODEL_LOADER is None:
        _MODEL_LOADER = botocore.loaders.create_loader()
    core = botocore.session.get_session()
    core.register_component("data_loader", _MODEL_LOADER)
    return boto3.Session(botocore_session=core, region_name=region)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a `ClientError` ("" for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)


class AWSBase:
    """Client cache, clock and the two bounded-wait helpers every service mixin uses.

    `sleep` and `clock` are injectable so tests of the retry logic run instantly; `wait_scale`
    shortens every time budget (tests against moto use 0, where nothing is ever pending).
    """

    def __init__(self, region: str, session: boto3.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 progress: Callable[[str], None] | None = None) -> None:
        self.region = region
        self.session = session or new_session(region)
        self.sleep = sleep
        self.clock = clock
        self.progress = progress or (lambda _message: None)
        self._clients: dict[str, Any] = {}
        self._account: str | None = None

    def client(self, service: str, *, slot: str | None = None, config: BotoConfig = CLIENT_CONFIG) -> Any:
        """One client per `slot` (default: the service), made on first use; `config` for a client
        that must behave differently (the model-sync invoke's long read timeout)."""
        key = slot or service
        if key not in self._clients:
            self._clients[key] = self.session.client(service, region_name=self.region, config=config)
        return self._clients[key]

    def account_id(self) -> str:
        """The caller's account (needed for ARNs and the default bucket name)."""
        if self._account is None:
            try:
                self._account = str(self.client("sts").get_caller_identity()["Account"])
            except (NoCredentialsError, PartialCredentialsError):
                raise CredentialsError("no AWS credentials found: configure a profile (aws configure) "
                                       "or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from None
            except ClientError as exc:
                if error_code(exc) in ("InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
                                       "AccessDenied", "UnrecognizedClientException"):
                    raise CredentialsError(f"AWS refused the credentials: {error_message(exc)}") from None
                raise
        return self._account

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float, interval: float = 5.0) -> None:
        """Poll `ready()` until True, or raise `WaitTimeoutError` naming `what` after `timeout` s."""
        deadline = self.clock() + timeout
        waited = False
        while not ready():
            if self.clock() >= deadline:
                raise WaitTimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
            if not waited:
                self.progress(f"waiting for {what}")
                waited = True
            self.sleep(interval)

    def retry_while(self, what: str, action: Callable[[], T], retryable: Callable[[ClientError], bool],
                    timeout: float, first_delay: float = 2.0, max_delay: float = 15.0) -> T:
        """Run `action`, retrying with exponential backoff while AWS answers a retryable error."""
        deadline = self.clock() + timeout
        delay = first_delay
        while True:
            try:
                return action()
            except ClientError as exc:
                if not retryable(exc) or self.clock() + delay > deadline:
                    raise
                self.progress(f"{what}: {error_message(exc)[:100]}; retrying in {delay:.0f} s")
                self.sleep(delay)
                delay = min(delay * 2, max_delay)


def iam_not_propagated(exc: ClientError) -> bool:
    """The errors Lambda answers while a new role or its policy has not reached every region yet."""
    message = error_message(exc)
    return error_code(exc) == "InvalidParameterValueException" and (
        "cannot be assumed by Lambda" in message
        or "does not have permissions to call" in message
        or "execution role does not have permissions" in message
    )


def dependency_violation(exc: ClientError) -> bool:
    """EC2 refuses to delete a subnet or group while Lambda's network interfaces still use it."""
    return error_code(exc) in ("DependencyViolation", "InvalidNetworkInterface.InUse")


def resource_conflict(exc: ClientError) -> bool:
    """Lambda is still applying a previous change to the function."""
    return error_code(exc) in ("ResourceConflictException", "TooManyRequestsException")
