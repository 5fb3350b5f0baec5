"""The training model: the serving builder's keys, local pretrained weights, a frozen backbone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from model_store.manifest import Architecture, Head
from model_store.resnet import build_model
from training.exceptions import ConfigError, WeightsError
from training.model import create_model, freeze_backbone, load_pretrained, parse_architecture, set_train_mode


def test_architecture_names_and_head_widths() -> None:
    # GIVEN / WHEN the original project's flags and a plain one
    mlp = parse_architecture("resnet50", head_hidden=128)
    linear = parse_architecture("ResNet18")
    # THEN they become manifest architectures
    assert mlp == Architecture(depth=50, head=Head(type="mlp", hidden=128))
    assert linear == Architecture(depth=18, head=Head(type="linear"))
    for bad in ("vgg16", "resnet20"):
        with pytest.raises(ConfigError, match="--arch"):
            parse_architecture(bad)
    with pytest.raises(ConfigError, match="--head-hidden"):
        parse_architecture("resnet18", head_hidden=0)


def test_imagenet_weights_load_the_backbone_and_leave_the_new_head(tmp_path: Path) -> None:
    # GIVEN a torchvision-style ImageNet checkpoint (1000-class fc) saved as .pth
    torch.manual_seed(1)
    imagenet = build_model(Architecture(depth=18), 1000).state_dict()
    torch.save(imagenet, tmp_path / "resnet18-imagenet.pth")
    # WHEN a 5-class model with an MLP head is created from it
    torch.manual_seed(2)
    model, origin = create_model(Architecture(depth=18, head=Head(type="mlp", hidden=16)), 5,
                                 tmp_path / "resnet18-imagenet.pth")
    # THEN every backbone tensor comes from the file and the head is new
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in imagenet.items() if not k.startswith("fc."))
    assert state["fc.2.weight"].shape == (5, 16)
    assert "new head" in origin


def test_weights_with_a_fitting_head_load_completely(tmp_path: Path) -> None:
    # GIVEN an earlier run's safetensors with the same head and classes
    arch = Architecture(depth=18, head=Head(type="mlp", hidden=8))
    earlier = build_model(arch, 3).state_dict()
    save_file({k: v.contiguous() for k, v in earlier.items()}, str(tmp_path / "earlier.safetensors"))
    # WHEN it is the --pretrained file
    model = build_model(arch, 3)
    origin = load_pretrained(model, tmp_path / "earlier.safetensors")
    # THEN the head is loaded too
    assert all(torch.equal(model.state_dict()[k], v) for k, v in earlier.items())
    assert "and head" in origin


def test_weights_of_another_depth_or_unsafe_pickles_are_refused(tmp_path: Path) -> None:
    # GIVEN ResNet-34 weights, and a .pth that would run code when unpickled
    torch.save(build_model(Architecture(depth=34), 10).state_dict(), tmp_path / "r34.pth")

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[()]]:
            return (os.getcwd, ())  # harmless stand-in for os.system

    torch.save({"conv1.weight": Exploit()}, tmp_path / "evil.pth")
    model = build_model(Architecture(depth=18), 3)
    # WHEN / THEN both fail with a message naming the file
    with pytest.raises(WeightsError, match=r"r34.pth does not fit this architecture \(.*unexpected: layer"):
        load_pretrained(model, tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="evil.pth"):
        load_pretrained(model, tmp_path / "evil.pth")


def test_a_frozen_backbone_trains_only_the_head_and_keeps_its_batchnorm_statistics() -> None:
    # GIVEN a model with its backbone frozen
    model = build_model(Architecture(depth=18, head=Head(type="mlp", hidden=4)), 2)
    freeze_backbone(model)
    # WHEN it is put in training mode
    set_train_mode(model, frozen_backbone=True)
    # THEN only fc parameters learn and every BatchNorm stays in eval mode
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"}
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.fc.training
    # AND a full fine-tune trains them all
    set_train_mode(model, frozen_backbone=False)
    assert all(m.training for m in norms)
