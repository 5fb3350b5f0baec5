"""Break-even volumes: where Lambda (+ supporting) costs the same as a SageMaker option.

Both bills are piecewise linear in requests per month, with kinks only where
`lambda_breakpoints` says (free tier used up, a volume tier reached, provisioned concurrency
full). Within each piece the difference is a straight line, so its zero is found exactly;
past the last kink the line runs on to infinity and is extended analytically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.cost_format import format_requests
from benchmarks.cost_model import lambda_breakpoints, lambda_side_usd
from benchmarks.cost_pricing import Pricing
from benchmarks.cost_scenario import Scenario

NEVER = "never"
IMPOSSIBLE = "impossible"


@dataclass(frozen=True)
class BreakEven:
    """Where Lambda and one other option cost the same.

    `lambda_cheaper` is "above" / "below" the single crossing, "always" / "never" when the costs
    never cross, "mixed" for several crossings, and "impossible" when the option cannot run.
    """

    option: str
    crossings: tuple[float, ...]
    lambda_cheaper: str
    note: str

    @property
    def requests_per_month(self) -> float | str:
        """The first crossing, or "never" / "impossible"."""
        if self.crossings:
            return self.crossings[0]
        return IMPOSSIBLE if self.lambda_cheaper == IMPOSSIBLE else NEVER


def solve_break_even(
    scenario: Scenario,
    pricing: Pricing,
    option: str,
    option_usd: Callable[[Scenario], float],
) -> BreakEven:
    """Every volume at which `lambda_side_usd` equals `option_usd`, with a one-line reading."""
    def gap(requests: float) -> float:
        at = scenario.with_requests(requests)
        return lambda_side_usd(at, pricing) - option_usd(at)

    points = [0.0, *lambda_breakpoints(scenario, pricing)]
    gaps = [gap(p) for p in points]
    crossings: list[float] = []
    for (a, gap_a), (b, gap_b) in zip(zip(points, gaps), zip(points[1:], gaps[1:])):
        if gap_a == 0 and a > 0:
            crossings.append(a)
        elif gap_a * gap_b < 0:
            crossings.append(a + (b - a) * gap_a / (gap_a - gap_b))
    last, gap_last = points[-1], gaps[-1]
    if gap_last == 0 and last > 0:
        crossings.append(last)
    step = max(last, 1e6)
    slope = (gap(last + step) - gap_last) / step
    if slope != 0 and gap_last != 0 and (gap_last > 0) != (slope > 0):
        crossings.append(last - gap_last / slope)
    return _read(option, tuple(crossings), gap_at_zero=gaps[0], gap_far=gap_last + slope * step)


def _read(option: str, crossings: tuple[float, ...], gap_at_zero: float, gap_far: float) -> BreakEven:
    if not crossings:
        if gap_far < 0 or (gap_far == 0 and gap_at_zero < 0):
            return BreakEven(option, (), "always", f"Lambda is always cheaper than {option} (no break-even)")
        return BreakEven(option, (), NEVER, f"Lambda is always dearer than {option} (no break-even)")
    if len(crossings) == 1:
        where = "above" if gap_at_zero > 0 else "below"
        return BreakEven(option, crossings, where, f"Lambda is cheaper than {option} {where} "
                                                   f"{format_requests(crossings[0])} requests/month")
    listed = ", ".join(format_requests(c) for c in crossings)
    return BreakEven(option, crossings, "mixed", f"Lambda and {option} cost the same at {listed} "
                                                 "requests/month")


def impossible(option: str) -> BreakEven:
    """The break-even entry for an option that cannot run the workload."""
    return BreakEven(option, (), IMPOSSIBLE, f"no break-even: {option} cannot run this workload")
