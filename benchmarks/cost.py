"""`python -m benchmarks cost`: what a month of predictions costs on Lambda and on SageMaker.

Reads a scenario (TOML), optionally a latency.json for the figures the scenario leaves out, and
the price table; prints cost.md or the JSON form, and with --out writes cost.md, cost.json and
both plots. Pure Python + matplotlib: nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.cost_latency import load_latency
from benchmarks.cost_pricing import load_pricing
from benchmarks.cost_report import estimate, render_markdown, to_json_dict
from benchmarks.cost_scenario import load_scenario
from benchmarks.exceptions import BenchmarkError

REPORT_MD = "cost.md"
REPORT_JSON = "cost.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the `cost` subcommand."""
    parser.add_argument("--scenario", required=True, type=Path, metavar="FILE.toml",
                        help="workload and configuration, e.g. benchmarks/scenarios/default.toml")
    parser.add_argument("--latency", type=Path, metavar="latency.json",
                        help="measured latency; fills in duration_ms, init_ms and memory_mb when the "
                             "scenario omits them")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"also write {REPORT_MD}, {REPORT_JSON} and the two PNG plots into DIR")
    parser.add_argument("--format", choices=("md", "json"), default="md",
                        help="what to print on stdout (default: md)")
    parser.add_argument("--pricing", type=Path, metavar="FILE.toml",
                        help="price table to use instead of benchmarks/pricing.toml")


def run(args: argparse.Namespace) -> int:
    """Cost the scenario, write the report files if asked, print the chosen format."""
    latency = load_latency(args.latency) if args.latency else None
    scenario = load_scenario(args.scenario, latency)
    result = estimate(scenario, load_pricing(args.pricing))
    data = to_json_dict(result)
    plots = None
    if args.out is not None:
        out: Path = args.out
        try:
            out.mkdir(parents=True, exist_ok=True)
            _progress(f"drawing plots into {out}")
            from benchmarks.cost_plots import write_plots  # matplotlib only when plots are wanted

            plots = write_plots(result, latency, out)
            (out / REPORT_MD).write_text(render_markdown(result, plots), encoding="utf-8")
            (out / REPORT_JSON).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise BenchmarkError(f"cannot write the report into {out}: {exc.strerror or exc}") from exc
        _progress(f"wrote {out / REPORT_MD}, {out / REPORT_JSON} and {len(plots)} plots")
    text = json.dumps(data, indent=2) if args.format == "json" else render_markdown(result, plots)
    sys.stdout.write(text.rstrip("\n") + "\n")
    return 0


def _progress(message: str) -> None:
    print(f"cost: {message}", file=sys.stderr, flush=True)
