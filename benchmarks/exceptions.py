"""Errors raised by the benchmarks.

The CLI turns any `BenchmarkError` into one line on stderr and a non-zero exit, so each message
says what was wrong and where (file, key) in words a user can act on.
"""

from __future__ import annotations


class BenchmarkError(Exception):
    """Base class for every benchmark failure the CLI reports as one line."""


class PricingError(BenchmarkError):
    """The price table (benchmarks/pricing.toml) is missing, unreadable or lacks a price."""


class ScenarioError(BenchmarkError):
    """A cost scenario file is unreadable, has an unknown key, or a value out of range."""


class LatencyFileError(BenchmarkError):
    """A latency.json file is unreadable, of an unknown schema, or lacks the figure asked for."""


class LatencyBenchmarkError(BenchmarkError):
    """The latency benchmark cannot measure: no model, a failed child process, or a failed request."""


class LoadBenchmarkError(BenchmarkError):
    """The load benchmark cannot run (no model, emulator failure) or a load criterion was not met."""
