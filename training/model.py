"""The network being trained: `model_store.resnet.build_model`, so the keys are what serving loads.

Building the training model with the serving builder (torchvision-initialised, torchvision key
names) means a trained state dict always fits the manifest's architecture: there is no second
definition of the head to drift. Pretrained weights come only from a local file (a torchvision
`resnetNN-*.pth`, a `.safetensors`, or an earlier SageMaker `model.tar.gz`); nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from model_store.exceptions import ModelStoreError
from model_store.manifest import Architecture, Head
from model_store.resnet import build_model
from model_store.weights import read_state_dict
from training.exceptions import ConfigError, WeightsError

_ARCH_RE = re.compile(r"^resnet(\d+)$")


def parse_architecture(name: str, head_hidden: int | None = None) -> Architecture:
    """`resnet50` (+ optional hidden width) -> Architecture; a hidden width makes the MLP head
    `Linear(features, hidden), ReLU, Linear(hidden, classes)` of the original SageMaker project."""
    match = _ARCH_RE.match(name.strip().lower())
    if not match:
        raise ConfigError(f"--arch {name!r}: expected resnet18, resnet34, resnet50, resnet101 or resnet152")
    if head_hidden is not None and head_hidden < 1:
        raise ConfigError(f"--head-hidden must be a positive width, not {head_hidden}")
    head = Head(type="mlp", hidden=head_hidden) if head_hidden else Head(type="linear")
    try:
        return Architecture(depth=int(match[1]), head=head)
    except ModelStoreError as exc:
        raise ConfigError(f"--arch {name!r}: {exc}") from exc


def create_model(arch: Architecture, num_classes: int, pretrained: Path | None = None) -> tuple[nn.Module, str]:
    """A freshly initialised model, with `pretrained` loaded over it; returns (model, what was loaded)."""
    model = build_model(arch, num_classes)
    if pretrained is None:
        return model, "random initialisation"
    return model, load_pretrained(model, pretrained)


def load_pretrained(model: nn.Module, path: Path) -> str:
    """Load the backbone from `path` (never unpickling objects); the head too if its shapes fit.

    An ImageNet checkpoint has a 1000-class `fc`: it is skipped and the new head keeps its
    initialisation. Any backbone key that is missing or has the wrong shape is an error, since
    it means the file is for another depth.
    """
    try:
        loaded = read_state_dict(path)
    except ModelStoreError as exc:
        raise WeightsError(f"--pretrained {path}: {exc}") from exc
    own = model.state_dict()
    head_fits = all(k in loaded and loaded[k].shape == v.shape for k, v in own.items() if k.startswith("fc."))
    backbone = {k: v for k, v in own.items() if not k.startswith("fc.")}
    missing = [k for k in backbone if k not in loaded]
    wrong = [k for k, v in backbone.items() if k in loaded and loaded[k].shape != v.shape]
    unexpected = [k for k in loaded if k not in own and not k.startswith("fc.")]
    if missing or wrong or unexpected:
        detail = "; ".join(f"{title}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for title, keys in (("missing", missing), ("wrong shape", wrong),
                                               ("unexpected", unexpected)) if keys)
        raise WeightsError(f"--pretrained {path} does not fit this architecture ({detail}); "
                           "check --arch matches the file")
    chosen: dict[str, Tensor] = {k: loaded[k] for k in own if k in loaded and (head_fits or not k.startswith("fc."))}
    model.load_state_dict(chosen, strict=False)
    return f"{path.name} (backbone{' and head' if head_fits else '; new head'})"


def freeze_backbone(model: nn.Module) -> None:
    """Only `fc` learns: the usual transfer-learning recipe when data is small."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("fc.")


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """Train mode (`model` may be DDP-wrapped); a frozen backbone also keeps its BatchNorm statistics (eval mode), or they
    would drift towards the new data while the weights that depend on them stay fixed."""
    model.train()
    if frozen_backbone:  # the head has no BatchNorm, so every BatchNorm belongs to the backbone
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
