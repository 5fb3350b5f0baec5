"""Which Lambda memory sizes the benchmark stands for, and which one it recommends.

Lambda gives CPU in proportion to memory: 1,769 MB is one vCPU, and the vCPU counts at the other
sizes are from ../shared/FACTS.md (github rwnx/lambda-cpuinfo). A size is measured by running
with that many threads; a size whose vCPUs exceed this machine's cores cannot be measured
honestly, so it is listed as capped and left out of the results instead of being passed off as
measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Lambda memory size (MB) -> vCPUs the function sees.
LAMBDA_VCPUS: dict[int, int] = {1769: 1, 3008: 2, 5308: 3, 10240: 6}
# The recommendation rule's two knobs, printed with every recommendation.
P50_TOLERANCE = 0.10
RSS_HEADROOM = 1.5
RECOMMENDATION_RULE = (
    f"the smallest measured Lambda size whose warm p50 is within {P50_TOLERANCE:.0%} of the best "
    f"measured p50 and whose memory is at least {RSS_HEADROOM}x the peak RSS of a cold start"
)


@dataclass(frozen=True)
class SizeStep:
    """One Lambda memory size: its vCPUs and the thread count that stands for it here."""

    memory_mb: int
    vcpus: int
    threads: int  # min(vcpus, cores)
    capped: bool  # this machine has fewer cores than the size's vCPUs
    measured: bool  # the first size with this thread count: the one the results list

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_plan(cores: int, sizes: Mapping[int, int] | None = None) -> tuple[SizeStep, ...]:
    """Every Lambda size with its thread count, capped at `cores`; only uncapped sizes are measured."""
    if cores < 1:
        raise ValueError("a machine has at least one core")
    steps = []
    for memory_mb, vcpus in sorted((sizes or LAMBDA_VCPUS).items()):
        threads = min(vcpus, cores)
        capped = vcpus > cores
        steps.append(SizeStep(memory_mb, vcpus, threads, capped, measured=not capped))
    return tuple(steps)


def measured_steps(plan: tuple[SizeStep, ...]) -> tuple[SizeStep, ...]:
    return tuple(step for step in plan if step.measured)


def plan_note(plan: tuple[SizeStep, ...], cores: int) -> str:
    """One sentence for the report on what was and was not measured."""
    capped = [s for s in plan if s.capped]
    if not capped:
        return f"every size was measured with its own vCPU count ({cores} cores here)."
    listed = ", ".join(f"{s.memory_mb:,} MB ({s.vcpus} vCPUs)" for s in capped)
    return (f"This machine has {cores} core{'s' if cores != 1 else ''}, so {listed} cannot be measured: "
            f"they would run with at most {cores} threads, which says nothing about their extra vCPUs. "
            "They are left out of the results; the cost model uses the largest measured size below them.")


@dataclass(frozen=True)
class Recommendation:
    """The recommended memory size and why (or why there is none)."""

    memory_mb: int | None
    reason: str
    rule: str = RECOMMENDATION_RULE


def recommend_memory(p50_by_memory: Mapping[int, float], peak_rss_mb: float | None) -> Recommendation:
    """Apply `RECOMMENDATION_RULE` to the measured p50 per memory size and the peak RSS."""
    if not p50_by_memory:
        return Recommendation(None, "no size was measured")
    best = min(p50_by_memory.values())
    fast_enough = {m: p for m, p in p50_by_memory.items() if p <= best * (1 + P50_TOLERANCE)}
    need_mb = RSS_HEADROOM * peak_rss_mb if peak_rss_mb is not None else 0.0
    fitting = sorted(m for m in fast_enough if m >= need_mb)
    if fitting:
        chosen = fitting[0]
        rss = f"{need_mb:,.0f} MB needed for {peak_rss_mb:,.0f} MB peak RSS" if peak_rss_mb else "peak RSS unknown"
        return Recommendation(chosen, f"p50 {p50_by_memory[chosen]:,.1f} ms against the best {best:,.1f} ms; {rss}")
    larger = sorted(m for m in p50_by_memory if m >= need_mb)
    if larger:
        chosen = larger[0]
        return Recommendation(chosen, f"the sizes within {P50_TOLERANCE:.0%} of the best p50 have less than "
                                      f"the {need_mb:,.0f} MB the peak RSS needs")
    return Recommendation(None, f"no measured size has the {need_mb:,.0f} MB the peak RSS of "
                                f"{peak_rss_mb:,.0f} MB needs")
