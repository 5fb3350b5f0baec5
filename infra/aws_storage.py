"""Façade methods for the model bucket (S3) and the image repository (ECR)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from infra.aws_base import AWSBase, error_code
from infra.exceptions import DeployError
from infra.state import BucketState, RepositoryState

PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                       "RestrictPublicBuckets": True}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


class StorageMixin(AWSBase):
    # -- S3: reads ------------------------------------------------------------------------------
    def bucket(self, name: str) -> BucketState | None:
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=name, ExpectedBucketOwner=self.account_id())
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                return None
            if error_code(exc) in ("403", "AccessDenied"):
                raise DeployError(f"bucket {name} exists but is not this account's: set model.bucket to another name") from None
            raise
        return BucketState(
            name=name,
            public_access_block=self._optional(lambda: s3.get_public_access_block(Bucket=name)[
                "PublicAccessBlockConfiguration"], "NoSuchPublicAccessBlockConfiguration"),
            encryption=self._optional(lambda: s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"][
                "Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"],
                "ServerSideEncryptionConfigurationNotFoundError"),
            versioning=s3.get_bucket_versioning(Bucket=name).get("Status"),
            policy=self._optional(lambda: json.loads(s3.get_bucket_policy(Bucket=name)["Policy"]), "NoSuchBucketPolicy"),
            tags={t["Key"]: t["Value"] for t in self._optional(
                lambda: s3.get_bucket_tagging(Bucket=name)["TagSet"], "NoSuchTagSet") or []},
            notifications=tuple(s3.get_bucket_notification_configuration(Bucket=name).get(
                "LambdaFunctionConfigurations", [])),
        )

    def object_exists(self, bucket: str, key: str) -> bool:
        """Is `key` in `bucket`? A listing (s3:ListBucket), so the deployer needs no s3:GetObject."""
        found = self.client("s3").list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1,
                                                  ExpectedBucketOwner=self.account_id())
        return any(item.get("Key") == key for item in found.get("Contents", []))

    @staticmethod
    def _optional(read: Any, missing_code: str) -> Any:
        try:
            return read()
        except ClientError as exc:
            if error_code(exc) == missing_code:
                return None
            raise

    # -- S3: changes ----------------------------------------------------------------------------
    def create_bucket(self, name: str, tags: Mapping[str, str]) -> None:
        """Create the bucket with ACLs disabled (bucket owner enforced), then tag it."""
        s3 = self.client("s3")
        params: dict[str, Any] = {"Bucket": name, "ObjectOwnership": "BucketOwnerEnforced"}
        if self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        s3.create_bucket(**params)
        s3.get_waiter("bucket_exists").wait(Bucket=name, WaiterConfig={"Delay": 2, "MaxAttempts": 30})
        self.tag_bucket(name, tags)

    def tag_bucket(self, name: str, tags: Mapping[str, str]) -> None:
        self.client("s3").put_bucket_tagging(Bucket=name, Tagging={"TagSet": _tag_list(tags)})

    def block_public_access(self, name: str) -> None:
        self.client("s3").put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)

    def encrypt_bucket(self, name: str) -> None:
        """SSE-S3 by default with a bucket key: no KMS permissions needed by the sync role."""
        self.client("s3").put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]})

    def enable_versioning(self, name: str) -> None:
        self.client("s3").put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def put_bucket_policy(self, name: str, policy: Mapping[str, Any]) -> None:
        self.client("s3").put_bucket_policy(Bucket=name, Policy=json.dumps(policy))

    def set_model_notification(self, bucket: str, notification_id: str, function_arn: str, prefix: str,
                               suffix: str) -> None:
        """Replace only our entry: other notifications someone added to the bucket are kept."""
        s3 = self.client("s3")
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        current.pop("ResponseMetadata", None)
        others = [c for c in current.get("LambdaFunctionConfigurations", []) if c.get("Id") != notification_id]
        current["LambdaFunctionConfigurations"] = [*others, model_notification(notification_id, function_arn,
                                                                                prefix, suffix)]
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)

    def remove_model_notification(self, bucket: str, notification_id: str) -> None:
        s3 = self.client("s3")
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        current.pop("ResponseMetadata", None)
        current["LambdaFunctionConfigurations"] = [
            c for c in current.get("LambdaFunctionConfigurations", []) if c.get("Id") != notification_id]
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)

    def empty_and_delete_bucket(self, name: str) -> None:
        """Delete every object version and delete marker, then the bucket (only with --delete-data)."""
        s3 = self.client("s3")
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                      for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]
            for start in range(0, len(doomed), 1000):
                s3.delete_objects(Bucket=name, Delete={"Objects": doomed[start:start + 1000], "Quiet": True})
        s3.delete_bucket(Bucket=name)

    # -- ECR ------------------------------------------------------------------------------------
    def repository(self, name: str) -> RepositoryState | None:
        ecr = self.client("ecr")
        try:
            repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        except ClientError as exc:
            if error_code(exc) == "RepositoryNotFoundException":
                return None
            raise
        lifecycle = self._optional(lambda: json.loads(ecr.get_lifecycle_policy(repositoryName=name)[
            "lifecyclePolicyText"]), "LifecyclePolicyNotFoundException")
        tags = ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"]).get("tags", [])
        return RepositoryState(
            name=name, uri=repo["repositoryUri"], arn=repo["repositoryArn"],
            tag_mutability=repo.get("imageTagMutability", "MUTABLE"),
            scan_on_push=bool(repo.get("imageScanningConfiguration", {}).get("scanOnPush")),
            lifecycle_policy=lifecycle, tags={t["Key"]: t["Value"] for t in tags},
        )

    def create_repository(self, name: str, tags: Mapping[str, str]) -> str:
        """Immutable tags (a tag names one image forever), scan on push, AES256 at rest."""
        repo = self.client("ecr").create_repository(
            repositoryName=name, imageTagMutability="IMMUTABLE", imageScanningConfiguration={"scanOnPush": True},
            encryptionConfiguration={"encryptionType": "AES256"}, tags=_tag_list(tags))["repository"]
        return str(repo["repositoryUri"])

    def make_tags_immutable(self, name: str) -> None:
        self.client("ecr").put_image_tag_mutability(repositoryName=name, imageTagMutability="IMMUTABLE")

    def enable_scan_on_push(self, name: str) -> None:
        self.client("ecr").put_image_scanning_configuration(repositoryName=name,
                                                            imageScanningConfiguration={"scanOnPush": True})

    def put_lifecycle_policy(self, name: str, policy: Mapping[str, Any]) -> None:
        self.client("ecr").put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(policy))

    def tag_repository(self, arn: str, tags: Mapping[str, str]) -> None:
        self.client("ecr").tag_resource(resourceArn=arn, tags=_tag_list(tags))

    def delete_repository(self, name: str) -> None:
        """Deletes the images too (only with --delete-data)."""
        self.client("ecr").delete_repository(repositoryName=name, force=True)

    def registry_login(self) -> tuple[str, str, str]:
        """(user, password, registry URL) for `docker login`, from ecr.get_authorization_token."""
        data = self.client("ecr").get_authorization_token()["authorizationData"][0]
        user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        return user, password, str(data["proxyEndpoint"])


def model_notification(notification_id: str, function_arn: str, prefix: str, suffix: str) -> dict[str, Any]:
    """S3 -> model-sync: every new `manifest.json` under the model's prefix (written last by publish)."""
    return {"Id": notification_id, "LambdaFunctionArn": function_arn, "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix},
                                               {"Name": "suffix", "Value": suffix}]}}}
