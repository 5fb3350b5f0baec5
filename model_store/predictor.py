"""What serving runs: float32 images `[N, 3, H, W]` in, logits `[N, classes]` out, as numpy arrays.

The engine underneath depends on the variant: ONNX Runtime for the graphs exported at publish
time (`int8`, `fp32-graph`), torch for the `fp32` safetensors weights. Serving talks numpy to
both, so a process that serves an ONNX variant never imports torch (over a second of cold start)
and the handler has one code path whatever the engine.

Importing this module imports neither engine; each predictor imports its own when it is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from torch import nn

ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
"""The names `model_store.onnx_export` gives the graph's input and output."""


class Predictor(Protocol):
    """A loaded model, ready to run. `engine` says what runs it (`onnxruntime` or `torch`)."""

    engine: str
    threads: int

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 `[N, 3, H, W]` (C-contiguous) -> float32 logits `[N, classes]`."""


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which a container or `taskset` narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class TorchPredictor:
    """An eager `nn.Module` (the `fp32` variant) behind the numpy interface.

    Sets torch's intra-op thread count once, here: torch has one process-wide pool.
    """

    engine = "torch"

    def __init__(self, module: nn.Module, threads: int | None = None) -> None:
        import torch

        self.threads = threads or available_cpus()
        torch.set_num_threads(self.threads)
        self.module = module.eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


class OnnxPredictor:
    """An ONNX Runtime session on the CPU, built from model bytes the caller has already verified.

    `model` is the serialized graph (bytes, never a path: the bytes that were hashed are the bytes
    that run). The session uses `threads` intra-op threads and no inter-op parallelism: a ResNet is
    one chain of operators, and Lambda gives at most a few vCPUs.
    """

    engine = "onnxruntime"

    def __init__(self, model: bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.threads = threads or available_cpus()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not to our logs
        # The pool's threads spin between operators (that keeps a run fast) but stop as soon as a
        # run returns: a spinning thread holds a vCPU that the next request's decoding, or a
        # batch's second decode worker, needs (8 x 1 MP batch through the emulator: 1.41-1.55x
        # faster per image than single requests with this, 1.11-1.24x without).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session: Any = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        feed = {ONNX_INPUT: np.ascontiguousarray(batch, dtype=np.float32)}
        logits: np.ndarray = self.session.run([ONNX_OUTPUT], feed)[0]
        return logits
