"""The optimized fp32 graph variant: a traced, frozen TorchScript module.

Freezing inlines the weights as constants and folds each BatchNorm into its convolution, so the
graph runs fewer kernels than eager mode with no Python between layers; tracing it in channels-last
memory format (weights and activations NHWC, the layout oneDNN's CPU convolutions prefer) saves
the layout reorders around every convolution. On a 2-core AVX-512 Xeon that is about 1.3x eager
for ResNet-50. It is made at publish time and kept only when it measures faster there
(`model_store.variants`); nothing is compiled at cold start (`torch.compile` takes 10-25 s here,
`torch.jit.optimize_for_inference` seconds, and its result cannot be saved).

A TorchScript file is code, not data: `torch.jit.load` runs the graph it contains. So it is read
into memory once, its size and sha256 are checked against the manifest, and only those verified
bytes are handed to `torch.jit.load` (no second read of the file that could differ). Who can
write the manifest can choose the code; the manifest comes from our own `publish`, and sync
verifies every file against it again.

`torch.jit.trace` and `torch.jit.freeze` are deprecated in torch 2.14 in favour of
`torch.compile`/`torch.export`, which need inductor (and its import and compile time) at load; the
warnings are silenced here, and the fp32 safetensors variant stays the fallback should a later
torch drop TorchScript.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from model_store.exceptions import ChecksumError, VariantError
from model_store.manifest import WeightsFile

GRAPH_FORMAT = "torchscript"


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated.*", category=FutureWarning)
        yield


class ChannelsLast(nn.Module):
    """Runs the wrapped network in channels-last memory format, whatever layout the input has."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


def trace_frozen(model: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """Trace a channels-last copy of `model` on `example` and freeze it (BN folded, weights inlined).

    `model` itself is left as it was.
    """
    import copy

    wrapped = ChannelsLast(copy.deepcopy(model).eval().to(memory_format=torch.channels_last)).eval()
    with _quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        return torch.jit.freeze(traced)


def save_graph(graph: torch.jit.ScriptModule, path: Path) -> None:
    """Write the TorchScript archive (atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with _quiet_deprecations():
        torch.jit.save(graph, str(tmp))
    tmp.replace(path)


def load_graph(path: Path, expected: WeightsFile) -> torch.jit.ScriptModule:
    """Read, verify (size and sha256 against the manifest), then load: unverified bytes never run."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ChecksumError(f"{path} is missing ({expected.size} bytes expected)") from None
    if len(data) != expected.size:
        raise ChecksumError(f"{path} is {len(data)} bytes but the manifest records {expected.size}; "
                            "nothing from it was loaded")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256:
        raise ChecksumError(f"{path} has sha256 {digest} but the manifest records {expected.sha256}; "
                            "the graph was not loaded (a TorchScript file is code)")
    try:
        with _quiet_deprecations():
            graph = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VariantError(f"{path} is not a TorchScript archive this torch can load: {reason}") from exc
    return graph.eval()
