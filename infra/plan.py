"""A plan is data: an ordered tuple of steps, each one façade call with a human message.

Planners (`infra.planner`, `infra.release`, `infra.destroy`) only *read* AWS and return a `Plan`;
executors (`infra.executor`) either carry it out or print it. Because both executors walk the
same steps, `plan` and `deploy` cannot disagree about what will happen.

Values that exist only after an earlier step has run (the id of a VPC being created, the number
of a version being published) are written as `Ref("name")`; the step that produces them names its
`output`, and the executor substitutes the result into later steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ref:
    """A value produced by an earlier step (`output=name`), optionally one attribute of it."""

    name: str
    attribute: str | None = None

    def __str__(self) -> str:
        return f"<{self.name}{'.' + self.attribute if self.attribute else ''}>"


@dataclass(frozen=True)
class Call:
    """One façade method call. `resource` groups the progress output; `output` names the result."""

    resource: str
    message: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    output: str | None = None


@dataclass(frozen=True)
class Unchanged:
    """A resource that already matches the configuration: shown by `plan`, nothing to execute."""

    resource: str
    message: str


Step = Call | Unchanged


@dataclass(frozen=True)
class Plan:
    """The ordered steps of one command, plus notes (warnings) to show before running them."""

    steps: tuple[Step, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def calls(self) -> tuple[Call, ...]:
        return tuple(step for step in self.steps if isinstance(step, Call))

    @property
    def is_empty(self) -> bool:
        """True when executing the plan would change nothing (every step is `Unchanged`)."""
        return not self.calls

    def __add__(self, other: Plan) -> Plan:
        return Plan(self.steps + other.steps, self.notes + other.notes)


class PlanBuilder:
    """Collects steps while a planner walks the resources; `build()` freezes them."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.notes: list[str] = []

    def call(self, resource: str, message: str, method: str, **params: Any) -> None:
        self.steps.append(Call(resource, message, method, dict(params)))

    def produce(self, resource: str, message: str, method: str, output: str, **params: Any) -> Ref:
        """A call whose result later steps use: returns the `Ref` that stands for it."""
        self.steps.append(Call(resource, message, method, dict(params), output))
        return Ref(output)

    def unchanged(self, resource: str, message: str) -> None:
        self.steps.append(Unchanged(resource, message))

    def note(self, message: str) -> None:
        self.notes.append(message)

    def build(self) -> Plan:
        return Plan(tuple(self.steps), tuple(self.notes))


def fill_in(message: str, variables: Mapping[str, Any]) -> str:
    """A step message with the `<name>` / `<name.attribute>` placeholders of known results filled in."""
    if "<" not in message:
        return message
    for name, result in variables.items():
        for field_name in ("id", "arn"):
            if hasattr(result, field_name):
                message = message.replace(str(Ref(name, field_name)), str(getattr(result, field_name)))
        message = message.replace(str(Ref(name)), str(result))
    return message


def has_refs(value: Any) -> bool:
    """True when `value` (or anything inside it) is still waiting for an earlier step's result."""
    if isinstance(value, Ref):
        return True
    if isinstance(value, Mapping):
        return any(has_refs(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(has_refs(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(has_refs(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def resolve(value: Any, variables: Mapping[str, Any]) -> Any:
    """Replace every `Ref` inside `value` by the result recorded under its name."""
    if isinstance(value, Ref):
        if value.name not in variables:
            raise KeyError(f"step output {value.name!r} is used before it is produced")
        result = variables[value.name]
        return getattr(result, value.attribute) if value.attribute else result
    if isinstance(value, Mapping):
        return {resolve(k, variables): resolve(v, variables) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(resolve(v, variables) for v in value)
    if isinstance(value, list):
        return [resolve(v, variables) for v in value]
    if isinstance(value, frozenset):
        return frozenset(resolve(v, variables) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: resolve(getattr(value, f.name), variables) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value
