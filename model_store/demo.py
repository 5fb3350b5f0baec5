"""A deterministic, untrained dog-breed model so the whole stack runs with no download and no data.

`make demo`, the emulator tests and the benchmarks need a model of the real shape (ResNet-50,
the 128-unit head of the original training job, 133 classes) that every machine rebuilds
bit for bit. Random numbers come from numpy's PCG64 bit stream (fixed by its algorithm, not
by a library version or a CPU), turned into floats with exact integer arithmetic and one
correctly-rounded float32 multiply per weight, so no platform math library is involved.

The demo publishes the faster variants too (the int8 ONNX graph calibrated on generated
pictures, and the fp32 ONNX graph when it measures faster than torch here), so `make demo`,
`make serve` and the benchmarks show the fast path without any user data. Calibration is not
training: `trained` stays false.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from model_store.manifest import Architecture, Head, Manifest, Preprocessing, dog_breed_classes
from model_store.resnet import build_model

DEMO_ARCH = Architecture(family="resnet", depth=50, head=Head(type="mlp", hidden=128, dropout=False))
DEMO_SOURCE = "demo: deterministic untrained ResNet-50 (model_store.demo, seed {seed})"
DEMO_CALIBRATION_IMAGES = 32
_MANTISSA = 1 << 23


def demo_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """ResNet-50 weights with 133 outputs, identical for the same seed on every machine.

    The scales are torchvision's: convolutions He-uniform on fan-out (the variance of its
    He-normal), Linear layers PyTorch's default range 1/sqrt(fan_in), BatchNorm an identity in
    eval mode. Like any untrained ResNet it gives much the same answer for every image, with a
    clear margin between classes (which keeps quantized variants comparable with it).
    """
    bits = np.random.PCG64(seed)
    model = build_model(DEMO_ARCH, len(dog_breed_classes()), device="meta")
    state: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            out_channels, _, kh, kw = module.weight.shape
            bound = math.sqrt(6.0 / (out_channels * kh * kw))
            state[f"{prefix}.weight"] = _uniform(module.weight.shape, bound, bits)
        elif isinstance(module, nn.BatchNorm2d):
            state[f"{prefix}.weight"] = torch.ones(module.num_features, dtype=torch.float32)
            state[f"{prefix}.bias"] = torch.zeros(module.num_features, dtype=torch.float32)
            state[f"{prefix}.running_mean"] = torch.zeros(module.num_features, dtype=torch.float32)
            state[f"{prefix}.running_var"] = torch.ones(module.num_features, dtype=torch.float32)
            state[f"{prefix}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)
            state[f"{prefix}.weight"] = _uniform(module.weight.shape, bound, bits)
            state[f"{prefix}.bias"] = _uniform((module.out_features,), bound, bits)
    return state


def publish_demo(store_uri: str, name: str, version: str, alias: str | None = None, *,
                 variants: bool = True, progress: bool = True) -> Manifest:
    """Publish the seed-0 demo model, marked `trained: false`, with the `resize224` preprocessing.

    With `variants`, also int8 (calibrated on `demo_pictures`) and the fp32 ONNX graph, each
    kept only if it passes its gate (`model_store.variants`).
    """
    from model_store.publish import publish_state_dict  # publish imports the store: only when needed

    seed = 0
    return publish_state_dict(
        demo_state_dict(seed), store_uri, name, version,
        arch=DEMO_ARCH, class_names=dog_breed_classes(), preprocess=Preprocessing.preset("resize224"),
        trained=False, source=DEMO_SOURCE.format(seed=seed), alias=alias, progress=progress,
        calibration=demo_pictures(DEMO_CALIBRATION_IMAGES, seed) if variants else None, graph=variants,
    )


def demo_pictures(count: int, seed: int = 0, size: tuple[int, int] = (256, 192)) -> list[Image.Image]:
    """Deterministic photo-like pictures (gradient backgrounds, blurred shapes, grain) to calibrate on.

    Calibration needs activations spread like real photos': smooth regions, edges, colour and
    texture. Drawn from a seeded PCG64 stream: the same seed gives the same pictures.
    """
    bits = np.random.PCG64(seed + 1)
    draws = np.random.Generator(bits)
    width, height = size
    pictures = []
    for _ in range(count):
        top, bottom = draws.integers(0, 256, 3), draws.integers(0, 256, 3)
        ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        background = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1)
        image = Image.fromarray(background.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(draws.integers(2, 7))):
            x0, y0 = int(draws.integers(-width // 4, width)), int(draws.integers(-height // 4, height))
            x1, y1 = x0 + int(draws.integers(16, width)), y0 + int(draws.integers(16, height))
            fill = tuple(int(c) for c in draws.integers(0, 256, 3))
            (draw.ellipse if draws.random() < 0.6 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        image = image.filter(ImageFilter.GaussianBlur(float(draws.uniform(0.5, 3.0))))
        grain = draws.normal(0.0, float(draws.uniform(2.0, 14.0)), (height, width, 3))
        noisy = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        pictures.append(Image.fromarray(noisy, "RGB"))
    return pictures


def _uniform(shape: Sequence[int], bound: float, bits: np.random.PCG64) -> torch.Tensor:
    """Uniform in [-bound, bound) from the top 24 bits of each raw 64-bit draw (exact in float32)."""
    count = math.prod(shape)
    raw = np.asarray(bits.random_raw(count), dtype=np.uint64)
    signed = (raw >> np.uint64(40)).astype(np.int32) - np.int32(_MANTISSA)
    values = signed.astype(np.float32) * np.float32(bound / _MANTISSA)
    return torch.from_numpy(values.reshape(tuple(shape)))
