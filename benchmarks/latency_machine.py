"""What the latency figures were measured on: CPU, cores, the engines (ONNX Runtime; torch and its
math libraries), load.

Latency means nothing without the machine, and on a shared machine without its load: the load
average at the start of the run is recorded so a reader can tell a quiet run from a noisy one.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "cpu model", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The CPUs this process may run on (what a thread count is capped at)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def torch_build() -> dict[str, str]:
    """The BLAS and the CPU instruction set torch uses here (from `torch.__config__.show()`)."""
    shown = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", shown)
    capability = re.search(r"CPU capability usage:\s*(\S+)", shown)
    return {"blas": blas.group(1) if blas else "unknown",
            "cpu_capability": capability.group(1) if capability else "unknown",
            "parallel_backend": "OpenMP" if "OpenMP" in torch.__config__.parallel_info() else "native"}


def onnxruntime_version() -> str:
    """The installed ONNX Runtime's version, read from its metadata (importing it is not needed)."""
    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """The `machine` object of latency.json."""
    build = torch_build()
    env = {name: os.environ.get(name, "unset") for name in THREAD_VARIABLES}
    return {
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "architecture": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime_version": onnxruntime_version(),
        "torch_version": torch.__version__,
        "torch_blas": build["blas"],
        "torch_cpu_capability": build["cpu_capability"],
        "torch_parallel_backend": build["parallel_backend"],
        "thread_env": env,
        "thread_env_note": (
            "ONNX Runtime (int8, fp32-graph) runs its own thread pool, sized when a session is made; torch "
            f"(fp32, and the roofline's matmul) computes with {build['blas']} and oneDNN under "
            f"{build['parallel_backend']}. The benchmark sets thread counts itself (the loader's threads=, "
            "OMP_NUM_THREADS for the runtime, which the handler passes on), so OMP_NUM_THREADS/MKL_NUM_THREADS "
            "in the shell do not change its figures. OPENBLAS_NUM_THREADS only reaches numpy's OpenBLAS "
            "(photo generation, preprocessing arithmetic), never inference."
        ),
        "load_average_at_start": load_average(),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS does not say)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def busy_note(machine: dict[str, Any], cores: int) -> str:
    """A warning when other work competed for the CPUs during the run (1-minute load above the cores)."""
    loads = [load[0] for load in (machine.get("load_average_at_start") or [], load_average()) if load]
    if not loads or max(loads) <= cores:
        return ""
    return (f"the machine was busy (1-minute load average up to {max(loads):.1f} on {cores} cores): other "
            "processes competed for the CPUs, so these figures are slower than on a quiet machine, the "
            "multi-threaded ones most (their threads wait for each other)")
