"""`python -m benchmarks COMMAND ...`: the benchmark commands behind one entry point.

Each command is a module with `add_arguments(parser)` and `run(args) -> int`. Only the module of
the command being run is imported, so `cost` never pays for (or needs) what `latency` imports,
such as torch. To add a command, add one line to `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from benchmarks.exceptions import BenchmarkError


@dataclass(frozen=True)
class Subcommand:
    """Where a command lives and the one line `--help` shows for it (without importing it)."""

    module: str
    summary: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


SUBCOMMANDS: dict[str, Subcommand] = {
    "cost": Subcommand("benchmarks.cost",
                       "monthly cost and cost per 1M requests: Lambda vs SageMaker for one scenario"),
    "latency": Subcommand("benchmarks.latency",
                          "cold start, warm p50/p90/p99 per step, roofline and targets: latency.json + .md"),
    "load": Subcommand("benchmarks.load",
                       "mixed photos with 5%% hostile inputs through 2 emulated runtimes: 5xx, restarts, RSS, p99/p50"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser, with full options only for the `selected` command (the one being run)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="breedserve benchmarks: measured latency and cost against SageMaker.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=command.summary, description=command.summary)
        if name == selected:
            command.load().add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the command, and turn a BenchmarkError into one line and exit status 1."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_in if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(args_in)
    try:
        return int(SUBCOMMANDS[args.command].load().run(args))
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
