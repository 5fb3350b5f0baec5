"""Errors raised by the deployment tooling.

Each message says what went wrong and what to do about it; the CLI prints it as one line and
exits non-zero, so nothing here should need a traceback to be understood.
"""

from __future__ import annotations


class InfraError(Exception):
    """Base class for every deployment failure."""


class ConfigError(InfraError):
    """The TOML configuration is missing, unreadable, or has an invalid key (the message names it)."""


class CredentialsError(InfraError):
    """No AWS credentials were found, or they were refused."""


class AWSCallError(InfraError):
    """An AWS API call failed; the message names the call and AWS's own error."""


class WaitTimeoutError(InfraError):
    """A resource did not reach the expected state within the bounded wait."""


class DeployError(InfraError):
    """The plan cannot be carried out as configured (e.g. a canary is in progress)."""


class ModelSyncError(DeployError):
    """The model-sync function could not copy the configured model version to EFS (the message
    names the version, the function and the function's own error)."""


class ReleaseError(InfraError):
    """A canary, promote or rollback request does not fit the alias's current routing."""


class CanaryRolledBackError(ReleaseError):
    """The canary's error alarm fired while watching, and traffic was returned to the old version."""


class InvokeError(InfraError):
    """Calling the Function URL failed (network, auth, or an error answer)."""


class PushError(InfraError):
    """Building, tagging, logging in or pushing the image failed."""


class PolicyLintError(InfraError):
    """An IAM policy breaks the least-privilege rules (see `infra.policies.lint_policy`)."""
