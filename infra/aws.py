"""The typed AWS façade: the only module family that calls boto3.

`AWS` joins the per-service mixins (`aws_storage`, `aws_network`, `aws_functions`) and the
CloudWatch alarm methods below. Read methods return the records of `infra.state` and together
satisfy `infra.state.RemoteState`, which is all a planner may use; the other methods are the
mutations an executor runs, named after what they achieve (`block_public_access`,
`route_alias`) rather than after the API call, and each waits until AWS reports it done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infra.aws_functions import FunctionsMixin
from infra.aws_network import NetworkMixin
from infra.aws_storage import StorageMixin
from infra.resources import AlarmSpec, alarm_definition
from infra.state import AlarmState


class AWS(StorageMixin, NetworkMixin, FunctionsMixin):
    """Every AWS call `python -m infra` makes, for one region."""

    def alarms(self, names: list[str]) -> dict[str, AlarmState]:
        found: dict[str, AlarmState] = {}
        cloudwatch = self.client("cloudwatch")
        for start in range(0, len(names), 100):
            for alarm in cloudwatch.describe_alarms(AlarmNames=names[start:start + 100],
                                                    AlarmTypes=["MetricAlarm"])["MetricAlarms"]:
                found[alarm["AlarmName"]] = _alarm_state(alarm)
        return found

    def alarms_with_prefix(self, prefix: str) -> dict[str, AlarmState]:
        """Alarms whose name starts with `prefix`, with their tags (for `destroy` and `status`)."""
        cloudwatch = self.client("cloudwatch")
        found = {}
        for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix,
                                                                          AlarmTypes=["MetricAlarm"]):
            for alarm in page["MetricAlarms"]:
                tags = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"]).get("Tags", [])
                found[alarm["AlarmName"]] = _alarm_state(alarm, {t["Key"]: t["Value"] for t in tags})
        return found

    def put_alarm(self, spec: AlarmSpec) -> None:
        """Create or replace the alarm (PutMetricAlarm is an upsert), tagged for `destroy`."""
        params: dict[str, Any] = {**spec.definition, "AlarmName": spec.name,
                                  "Tags": [{"Key": k, "Value": v} for k, v in sorted(spec.tags.items())]}
        self.client("cloudwatch").put_metric_alarm(**params)

    def delete_alarms(self, names: Sequence[str]) -> None:
        self.client("cloudwatch").delete_alarms(AlarmNames=list(names))


def _alarm_state(alarm: dict[str, Any], tags: dict[str, str] | None = None) -> AlarmState:
    return AlarmState(name=alarm["AlarmName"], arn=alarm["AlarmArn"], state=alarm.get("StateValue", ""),
                      definition=alarm_definition(alarm), tags=tags or {})
