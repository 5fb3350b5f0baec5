"""Our fp32 ResNet as an ONNX graph: what ONNX Runtime runs for the `fp32-graph` and `int8` variants.

The graph takes float32 `input` `[N, 3, H, W]` (the serving preprocessing's output; the batch
axis is dynamic, height and width are the model's fixed input size) and returns float32
`logits` `[N, classes]` (`model_store.predictor.ONNX_INPUT`/`ONNX_OUTPUT`). It is made once, at
publish time, with torch's TorchScript-based exporter (`dynamo=False`): the dynamo exporter
needs `onnxscript`, which we do not ship, and the TorchScript one gives the same graph for a
plain convolutional network. Opset 17 is read by every ONNX Runtime from 1.14 on.

Exporting the same weights twice gives the same bytes (a unit test checks it), so a publish can
be reproduced and a file's sha256 means one graph.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from model_store.exceptions import VariantError
from model_store.predictor import ONNX_INPUT, ONNX_OUTPUT

OPSET = 17


def export_onnx(model: nn.Module, height: int, width: int) -> bytes:
    """Serialize `model` (eval mode, fp32, on the CPU) as an ONNX graph for `height` x `width` inputs.

    `model` is left as it was. Raises VariantError when the exporter refuses the network.
    """
    was_training = model.training
    model.eval()
    example = torch.zeros((1, 3, height, width), dtype=torch.float32)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # torch 2.14 announces that dynamo=False is deprecated on every call; said once in docs/design.md.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx")
            torch.onnx.export(
                model, (example,), buffer,  # type: ignore[arg-type]  # a file object works (torch's own docs)
                dynamo=False, opset_version=OPSET,
                input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                do_constant_folding=True, export_params=True,
            )
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:  # type: ignore[attr-defined]
        raise VariantError(f"the network cannot be exported to ONNX: {str(exc).splitlines()[0]}") from exc
    finally:
        model.train(was_training)
    return buffer.getvalue()
