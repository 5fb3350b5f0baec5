"""The roofline: how fast this machine could run the model if it ran at its matmul peak.

A latency figure alone cannot say whether it is good; a ratio to what the hardware can do can.
The peak is measured, not looked up: fp32 `torch.matmul` on 2048x2048 (2 n^3 FLOPs), best of a
few runs per thread count. The model's work is counted from its own conv and linear layers
(2 FLOPs per multiply-add; batch norm, ReLU, pooling and additions are left out, as they are a
fraction of a percent), so a ResNet-18 or a different head gets its own figure. Roofline time
= FLOPs / peak; a variant's ratio = its inference p50 / that time (below 1 means faster than
fp32 matmul could be, as int8 kernels can be). This is the one place the benchmark's parent
process uses torch for arithmetic: the variants themselves run through the serving `Predictor`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from model_store.manifest import Architecture
from model_store.variants import torch_threads

MATMUL_SIZE = 2048


def matmul_gflops(threads: int, size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """fp32 matmul throughput in GFLOP/s at `threads`, best of `repeats` timed runs (after one warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand((size, size), generator=generator, dtype=torch.float32)
    b = torch.rand((size, size), generator=generator, dtype=torch.float32)
    out = torch.empty((size, size), dtype=torch.float32)
    best = float("inf")
    with torch_threads(threads), torch.inference_mode():
        torch.matmul(a, b, out=out)
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def count_flops(model: nn.Module, input_hw: tuple[int, int]) -> int:
    """FLOPs of one forward pass at batch 1, from each Conv2d's and Linear's output shape.

    Runs one forward pass of zeros on the model's own device (a loaded fp32 model: about one
    inference). The `meta` device would skip the arithmetic, but its first use imports torch's
    Python decompositions, which costs several seconds more than the pass itself.
    """
    total = 0

    def conv_hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        total += 2 * output.numel() * per_output

    def linear_hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += 2 * output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device
            model(torch.zeros((1, 3, *input_hw), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def network_flops(arch: Architecture, num_classes: int, input_hw: tuple[int, int]) -> int:
    """FLOPs of the fp32 network a manifest describes, whatever variant serves it.

    Counted on a freshly built torch network (the weights do not change the work): the ONNX
    variants run the same layers, and an int8 graph's operators are not `nn.Conv2d`.
    """
    from model_store.resnet import build_model

    return count_flops(build_model(arch, num_classes).eval(), input_hw)


def monotone_peaks(measured: dict[int, float]) -> dict[int, float]:
    """Each thread count's peak, never below a smaller thread count's.

    More threads cannot lower what the hardware can do; a lower figure means other work took the
    extra cores during the timing. Taken as measured, it would lengthen the roofline time and
    make every ratio look better than it is, so the best figure at up to that many threads counts.
    """
    peaks: dict[int, float] = {}
    best = 0.0
    for threads in sorted(measured):
        best = max(best, measured[threads])
        peaks[threads] = best
    return peaks


@dataclass(frozen=True)
class Roofline:
    """Peak per thread count and the model's work; turns an inference time into a ratio.

    `gflops_by_threads` is what the ratios use (`monotone_peaks` of the measurement);
    `measured_gflops_by_threads` is the raw measurement, kept for the report.
    """

    flops: int
    gflops_by_threads: dict[int, float]
    matmul_size: int = MATMUL_SIZE
    measured_gflops_by_threads: dict[int, float] | None = None

    @classmethod
    def from_measured(cls, flops: int, measured: dict[int, float]) -> Roofline:
        return cls(flops, monotone_peaks(measured), measured_gflops_by_threads=dict(measured))

    def time_ms(self, threads: int) -> float:
        """What one forward pass would take at this thread count's fp32 matmul peak."""
        return self.flops / (self.gflops_by_threads[threads] * 1e9) * 1000.0

    def ratio(self, inference_ms: float, threads: int) -> float:
        return inference_ms / self.time_ms(threads)

    def to_dict(self) -> dict[str, object]:
        return {
            "model_gflop": round(self.flops / 1e9, 3),
            "matmul": f"fp32 torch.matmul {self.matmul_size}x{self.matmul_size}, best of several runs before and between the rounds of warm requests",
            "peak_gflops_by_threads": {str(t): round(g, 1) for t, g in sorted(self.gflops_by_threads.items())},
            "measured_gflops_by_threads": {str(t): round(g, 1) for t, g in
                                           sorted((self.measured_gflops_by_threads or self.gflops_by_threads).items())},
            "peak_rule": "the best matmul figure at up to that many threads (more threads cannot lower the peak; "
                         "a lower measurement means other work took the cores)",
            "roofline_ms_by_threads": {str(t): round(self.time_ms(t), 2) for t in sorted(self.gflops_by_threads)},
        }
