"""The cold-start child: a fresh interpreter does what a Lambda runtime does at init, part by part.

Run by the latency benchmark as `python -m benchmarks.latency_cold ...`; prints one JSON object as
the last line on stdout. Nothing beyond the standard library is imported before the clock starts,
so the import figures are what a fresh runtime pays. The parts, in `handler.app`'s order:

1. `prefetch_start`: what `handler.app` does first, importing the loader (and numpy with it) and
   starting the thread that reads (for fp32 also hashes) the weights file while the rest of init
   runs (`model_store.loader.prefetch`);
2. `import_<engine>`: the engine the served variant needs, and only that one (`onnxruntime` for
   the ONNX variants, `torch` for `fp32`), so its import is timed on its own; the handler itself
   imports it during the load;
3. `import_handler`: `handler.service`, everything else `handler.app` imports;
4. `model_load`: `Service.from_env()`, the handler's init (settings, the model load with
   checksums and session creation, the warm-up run) from environment variables, as on Lambda;
5. `first_prediction`: one direct invocation with the ~1 MP photo through `Service.handle`.

Then a prediction on the largest photo, and the peak RSS: this process's own high-water mark
(`VmHWM`), not `ru_maxrss`, because Linux carries `ru_maxrss` over fork and exec, so a child of
the benchmark (which holds the models it measures) would report the parent's peak. Whether torch
or torchvision got imported is read from `sys.modules` at the very end.
"""

from __future__ import annotations

import time

STARTED_EPOCH = time.time()  # first thing: the parent subtracts its spawn time to get interpreter start

# The rest of the imports come after the clock on purpose (all standard library, all cheap).
import argparse
import base64
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

ENGINES = ("onnxruntime", "torch")


class ColdChildError(Exception):
    """The handler could not serve in this fresh process (its reason is the message)."""


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _direct_event(photo: Path) -> dict[str, str]:
    return {"image": base64.b64encode(photo.read_bytes()).decode("ascii")}


def measure(root: str, name: str, version: str, variant: str | None, threads: int, engine: str,
            photo: Path, largest: Path | None) -> dict[str, Any]:
    """Import, init, predict once, each timed as the handler does it; then the peak RSS."""
    os.environ.update({"MODEL_ROOT": root, "MODEL_NAME": name, "MODEL_VERSION": version,
                       "MODEL_VARIANT": variant or "", "OMP_NUM_THREADS": str(threads)})
    os.environ.pop("MODEL_ALIAS", None)
    first_event = _direct_event(photo)
    parts: dict[str, float] = {}
    start = time.perf_counter()
    from model_store.loader import prefetch

    prefetch(root, name, version=version, variant=variant)
    parts["prefetch_start"] = _ms(start)
    start = time.perf_counter()
    if engine == "onnxruntime":
        import onnxruntime  # noqa: F401 - timed on its own; the loader imports it again for free
    else:
        import torch  # noqa: F401
    parts[f"import_{engine}"] = _ms(start)
    start = time.perf_counter()
    from handler.service import Service

    parts["import_handler"] = _ms(start)
    start = time.perf_counter()
    service = Service.from_env()
    parts["model_load"] = _ms(start)
    classifier = service.holder.classifier
    if classifier is None:
        raise ColdChildError(f"the handler did not load the model: {service.holder.reason}")
    start = time.perf_counter()
    answer = service.handle(first_event, None)
    parts["first_prediction"] = _ms(start)
    _check_answer(answer)
    if largest is not None:
        _check_answer(service.handle(_direct_event(largest), None))
    predictor = classifier.predictor
    return {
        "started_epoch": STARTED_EPOCH,
        "parts_ms": parts,
        "first_timing_ms": answer.get("timing_ms", {}),
        "peak_rss_mb": round(_peak_rss_kb() / 1024.0, 1),
        "variant": classifier.variant,
        "engine": predictor.engine,
        "engine_imported_first": engine,
        "threads": predictor.threads,
        "torch_imported": "torch" in sys.modules,
        "torchvision_imported": "torchvision" in sys.modules,
    }


def _check_answer(answer: dict[str, Any]) -> None:
    if "predictions" not in answer:
        raise ColdChildError(f"the handler answered without predictions: {json.dumps(answer)[:300]}")


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
    parser.add_argument("--variant", help="MODEL_VARIANT (default: unset, the handler's choice)")
    parser.add_argument("--threads", type=int, required=True, help="OMP_NUM_THREADS, as the handler reads it")
    parser.add_argument("--engine", choices=ENGINES, required=True,
                        help="the engine the variant served needs: imported first and timed on its own")
    parser.add_argument("--photo", type=Path, required=True, help="the photo of the first prediction")
    parser.add_argument("--largest", type=Path, help="a larger photo predicted after, for peak RSS")
    args = parser.parse_args(argv)
    try:
        result = measure(args.root, args.name, args.version, args.variant, args.threads, args.engine,
                         args.photo, args.largest)
    except ColdChildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
