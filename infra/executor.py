"""Run a plan, or print it: the two executors share the plan, so they cannot disagree.

`Executor` calls the façade method each `Call` names, substituting earlier results for `Ref`s,
and prints one progress line per step with its duration. `DryRunExecutor` prints the same
steps grouped by resource, which is what `python -m infra plan` shows. Unknown method names are
refused before anything runs, so a typo can never leave a half-applied plan.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from botocore.exceptions import ClientError

from infra.aws_base import error_code, error_message
from infra.exceptions import AWSCallError
from infra.plan import Call, Plan, Unchanged, fill_in, resolve


def render_plan(plan: Plan, title: str) -> str:
    """The plan as text: resources in order, `+` for a change, `=` for left alone."""
    lines = [title]
    current = None
    for step in plan.steps:
        if step.resource != current:
            current = step.resource
            lines.append(f"  {current}")
        marker = "+" if isinstance(step, Call) else "="
        lines.append(f"    {marker} {step.message}")
    for note in plan.notes:
        lines.append(f"  ! {note}")
    changes, unchanged = len(plan.calls), len(plan.steps) - len(plan.calls)
    lines.append(f"{changes} change{'s' if changes != 1 else ''}, {unchanged} unchanged." if changes
                 else f"Nothing to do: {unchanged} resources match the configuration.")
    return "\n".join(lines)


class DryRunExecutor:
    """Prints what `Executor` would do; makes no AWS call."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def execute(self, plan: Plan, title: str = "Plan:") -> dict[str, Any]:
        print(render_plan(plan, title), file=self.out)
        return {}


class Executor:
    """Carries out a plan against the façade, one step at a time, in order."""

    def __init__(self, facade: Any, out: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.facade = facade
        self.out = out or sys.stdout
        self.clock = clock

    def check(self, plan: Plan) -> None:
        unknown = sorted({c.method for c in plan.calls if not callable(getattr(self.facade, c.method, None))})
        if unknown:
            raise TypeError(f"the plan calls unknown façade methods: {', '.join(unknown)}")

    def execute(self, plan: Plan, title: str = "") -> dict[str, Any]:
        """Run every `Call`; returns the outputs by name. Stops at the first failure."""
        self.check(plan)
        if title:
            print(title, file=self.out)
        for note in plan.notes:
            print(f"  ! {note}", file=self.out)
        variables: dict[str, Any] = {}
        total = len(plan.calls)
        done = 0
        for step in plan.steps:
            if isinstance(step, Unchanged):
                continue
            done += 1
            print(f"  [{done}/{total}] {step.resource}: {fill_in(step.message, variables)} ...", file=self.out,
                  flush=True)
            started = self.clock()
            try:
                result = getattr(self.facade, step.method)(**resolve(step.params, variables))
            except ClientError as exc:
                raise AWSCallError(f"{step.resource}: {step.message}: {error_code(exc)}: {error_message(exc)}") from exc
            if step.output:
                variables[step.output] = result
            print(f"        done in {self.clock() - started:.1f} s", file=self.out, flush=True)
        return variables
