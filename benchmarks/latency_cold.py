"""The cold-start child: a fresh interpreter times its imports, the model load and a first prediction.

Run by the latency benchmark as `python -m benchmarks.latency_cold ...`; prints one JSON object
on stdout. Nothing beyond the standard library is imported before the clock starts, so the
import figures are what a fresh Lambda runtime pays. Peak RSS is read after a prediction on the
largest photo too, so it covers the worst request the benchmark sends. It is this process's own
high-water mark (`VmHWM`), not `ru_maxrss`: Linux carries `ru_maxrss` over fork and exec, so a
child of the benchmark (which holds a ResNet-50 and its variants) would report the parent's peak.
"""

from __future__ import annotations

import time

STARTED_EPOCH = time.time()  # first thing: the parent subtracts its spawn time to get interpreter start

# The rest of the imports come after the clock on purpose (all standard library, all cheap).
import argparse
import json
import resource
import sys
from pathlib import Path


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def measure(root: str, name: str, version: str, variant: str | None, threads: int,
            photo: Path, largest: Path | None) -> dict[str, object]:
    """Import, load, predict once, each timed; then the peak RSS."""
    parts: dict[str, float] = {}
    start = time.perf_counter()
    import torch

    torch.set_num_threads(threads)  # what the handler does at init
    parts["import_torch"] = _ms(start)
    start = time.perf_counter()
    from handler.classifier import Classifier

    parts["import_handler"] = _ms(start)
    start = time.perf_counter()
    classifier = Classifier.from_root(root, name, version=version, variant=variant)
    parts["model_load"] = _ms(start)
    data = photo.read_bytes()
    start = time.perf_counter()
    body = classifier.classify(data)
    parts["first_prediction"] = _ms(start)
    if largest is not None:
        classifier.classify(largest.read_bytes())
    peak_kb = _peak_rss_kb()
    return {
        "started_epoch": STARTED_EPOCH,
        "parts_ms": parts,
        "first_timing_ms": body.get("timing_ms", {}),
        "peak_rss_mb": round(peak_kb / 1024.0, 1),
        "variant": classifier.variant,
        "threads": torch.get_num_threads(),
        "torchvision_imported": "torchvision" in sys.modules,
    }


def _peak_rss_kb() -> int:
    """This process's peak resident set since exec (`VmHWM`), or `ru_maxrss` where /proc has none."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_cold",
                                     description="Time a cold start in this fresh process; print JSON.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--variant")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--photo", type=Path, required=True, help="the photo of the first prediction")
    parser.add_argument("--largest", type=Path, help="a larger photo predicted after, for peak RSS")
    args = parser.parse_args(argv)
    result = measure(args.root, args.name, args.version, args.variant, args.threads, args.photo, args.largest)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
