"""int8 post-training static quantization of the exported fp32 ONNX graph, with ONNX Runtime's tools.

Publishing calibrates activation ranges on real images and writes an ONNX graph in QDQ form:
every convolution's input and weight pass through QuantizeLinear/DequantizeLinear pairs, which
ONNX Runtime fuses into int8 kernels (QLinearConv, with VNNI/AMX on x86 and dot-product
instructions on arm64) when it builds the session. The choices:

- activations `QUInt8` (asymmetric: after a ReLU every value is >= 0, so all 256 steps are used),
  weights `QInt8` per output channel (symmetric; one scale per filter keeps small filters
  precise);
- `reduce_range` off: 8-bit weights. On an x86 CPU *without* VNNI, ORT's u8s8 kernels can
  saturate the 16-bit intermediate sums (the reason `reduce_range` exists); every Lambda x86
  CPU and this machine have VNNI, and arm64 runs the same file. The agreement gate would refuse
  a file that saturates on the publishing machine;
- calibration `MinMax` (the range each activation takes on the calibration images); see
  `CALIBRATION_METHOD` for why not the histogram methods;
- `quant_pre_process` first (symbolic shape inference and ORT's graph optimizations, which fold
  BatchNorm into the convolutions), as ONNX Runtime recommends before static quantization.

The tools work on files, so everything happens in a temporary directory; the result is returned
as bytes (the caller hashes and stores exactly those bytes). Importing this module imports
neither onnxruntime nor onnx: only `quantize_int8` does, at publish time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from model_store.exceptions import VariantError
from model_store.predictor import ONNX_INPUT

CALIBRATION_METHOD = "MinMax"
"""Why MinMax: it agreed with fp32 as well as the histogram methods where we measured
(docs/design.md, "Variants": the demo ResNet-50, 100% top-1 and top-5 for all three; the
functional tests' trained ResNet-18, top-1 100% for all three, top-5 97.9% MinMax, 98.0% Entropy,
97.2% Percentile), and it calibrates in half their time without needing batches of one."""
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
_BATCH = 16


def quantize_int8(fp32_onnx: bytes, calibration: Sequence[np.ndarray], *,
                  method: str = CALIBRATION_METHOD) -> bytes:
    """The int8 QDQ graph of `fp32_onnx`, its activation ranges calibrated on `calibration`.

    `calibration`: model inputs `[3, H, W]` float32, preprocessed as serving does. Raises
    VariantError when there is nothing to calibrate on or the tools refuse the graph.
    """
    if not calibration:
        raise VariantError("int8 calibration needs at least one image")
    if method not in CALIBRATION_METHODS:
        raise VariantError(f"unknown calibration method {method!r}: expected one of {CALIBRATION_METHODS}")
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="breedserve-int8-") as workdir, _quiet_tools():
        source, prepared, output = (Path(workdir) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32_onnx)
        try:
            quant_pre_process(str(source), str(prepared))
            quantize_static(
                str(prepared), str(output), _Batches(calibration, _BATCH if method == "MinMax" else 1),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
            )
        except (RuntimeError, ValueError, KeyError) as exc:
            raise VariantError(f"ONNX Runtime could not quantize the graph: {exc}") from exc
        return output.read_bytes()


class _Batches:
    """ONNX Runtime's CalibrationDataReader over our inputs: `{input: [B, 3, H, W]}` batches, then None."""

    def __init__(self, inputs: Sequence[np.ndarray], size: int) -> None:
        self.inputs, self.size = inputs, size
        self.batches: Iterator[dict[str, np.ndarray]] = self._make()

    def _make(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.inputs), self.size):
            batch = np.stack([np.asarray(x, dtype=np.float32) for x in self.inputs[start:start + self.size]])
            yield {ONNX_INPUT: np.ascontiguousarray(batch)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:
        self.batches = self._make()


@contextlib.contextmanager
def _quiet_tools() -> Iterator[None]:
    """The quantization tools log every step at INFO and the histogram calibrators print(); keep our output ours."""
    loggers = [logging.getLogger(name) for name in ("onnxruntime", "onnxruntime.quantization")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
