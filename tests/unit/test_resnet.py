"""Our ResNet builder against torchvision: same keys, same logits, and detection from keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from model_store.exceptions import ArchitectureError
from model_store.manifest import Architecture, Head
from model_store.resnet import build_model, check_state_dict, detect_architecture

REPO_ROOT = Path(__file__).resolve().parents[2]


def torchvision_resnet(depth: int, head: Head, num_classes: int, device: str = "cpu", seed: int = 0) -> nn.Module:
    """torchvision's ResNet with `fc` replaced the way a user's training script does it."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        features = model.fc.in_features
        if head.type == "linear":
            model.fc = nn.Linear(features, num_classes)
        else:
            layers: list[nn.Module] = [nn.Linear(features, head.hidden or 0), nn.ReLU(inplace=True)]
            if head.dropout:
                layers.append(nn.Dropout(0.3))
            layers.append(nn.Linear(head.hidden or 0, num_classes))
            model.fc = nn.Sequential(*layers)
    return model


def randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Give BatchNorm non-trivial statistics, so that a mix-up of BN buffers would change the logits."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            with torch.no_grad():
                module.running_mean = torch.randn(n, generator=generator) * 0.1
                module.running_var = torch.rand(n, generator=generator) + 0.5
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


HEADS = [
    Head(type="linear"),
    Head(type="mlp", hidden=128, dropout=False),
    Head(type="mlp", hidden=64, dropout=True),
]


@pytest.mark.parametrize(
    ("depth", "head"),
    [(18, HEADS[0]), (18, HEADS[1]), (18, HEADS[2]), (50, HEADS[0]), (50, HEADS[1])],
    ids=["18-linear", "18-mlp", "18-mlp-dropout", "50-linear", "50-mlp"],
)
def test_logits_equal_torchvision(depth: int, head: Head) -> None:
    # GIVEN a torchvision ResNet with a replaced head and non-trivial BatchNorm statistics
    reference = torchvision_resnet(depth, head, num_classes=133, seed=depth)
    randomise_batchnorm(reference, seed=depth)
    reference.eval()
    images = torch.rand((2, 3, 96, 112), generator=torch.Generator().manual_seed(1))
    # WHEN its weights are assigned to our model built on the meta device
    ours = build_model(Architecture(depth=depth, head=head), 133, device="meta")
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    ours.eval()
    with torch.inference_mode():
        expected, got = reference(images), ours(images)
    # THEN both give the same logits
    assert got.shape == (2, 133)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_state_dict_keys_and_shapes_match_torchvision(depth: int) -> None:
    # GIVEN torchvision's model and ours, both on the meta device
    reference = torchvision_resnet(depth, Head(type="mlp", hidden=32), num_classes=7, device="meta")
    # WHEN ours is built for the same architecture
    ours = build_model(Architecture(depth=depth, head=Head(type="mlp", hidden=32)), 7, device="meta")
    # THEN keys come in the same order with the same shapes
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in reference.state_dict().items()]


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
@pytest.mark.parametrize("head", HEADS, ids=["linear", "mlp", "mlp-dropout"])
def test_detect_architecture(depth: int, head: Head) -> None:
    # GIVEN a torchvision state dict (meta tensors: only keys and shapes matter)
    state = torchvision_resnet(depth, head, num_classes=120, device="meta").state_dict()
    # WHEN the architecture is detected from it
    arch, num_classes = detect_architecture(state)
    # THEN depth, head and class count are what built it
    assert arch == Architecture(depth=depth, head=head)
    assert num_classes == 120


def test_build_on_cpu_initialises_like_torchvision() -> None:
    # GIVEN / WHEN a model built on the CPU
    model = build_model(Architecture(depth=18), 10)
    # THEN its convolutions have He fan-out scale and BatchNorm starts as identity
    conv = model.state_dict()["layer2.0.conv1.weight"]
    expected_std = (2.0 / (conv.shape[0] * 9)) ** 0.5
    assert abs(conv.std().item() - expected_std) < 0.1 * expected_std
    assert torch.equal(model.bn1.weight, torch.ones(64)) and torch.equal(model.bn1.bias, torch.zeros(64))
    assert model.state_dict()["fc.weight"].shape == (10, 512)


def test_meta_build_allocates_nothing() -> None:
    # GIVEN / WHEN a ResNet-152 built on the meta device
    model = build_model(Architecture(depth=152), 133, device="meta")
    # THEN every tensor is on meta (nothing allocated, nothing initialised)
    assert {t.device.type for t in model.state_dict().values()} == {"meta"}


def test_missing_layer_keys_are_named() -> None:
    # GIVEN a state dict that is not a ResNet
    state = {"features.0.weight": torch.zeros(3, 3), "classifier.weight": torch.zeros(2, 3)}
    # WHEN / THEN detection says which stages have no keys
    with pytest.raises(ArchitectureError, match=r"no keys for layer1, layer2, layer3, layer4"):
        detect_architecture(state)


def test_unknown_block_layout_is_reported() -> None:
    # GIVEN a ResNet-18 state dict with a third block in layer2
    state = torchvision_resnet(18, HEADS[0], 10, device="meta").state_dict()
    for key in [k for k in state if k.startswith("layer2.1.")]:
        state[key.replace("layer2.1.", "layer2.2.")] = state[key]
    # WHEN / THEN the error lists the counted blocks and the known layouts
    with pytest.raises(ArchitectureError, match=r"basic blocks per layer \[2, 3, 2, 2\] match no torchvision"):
        detect_architecture(state)


def test_unknown_head_lists_fc_keys() -> None:
    # GIVEN a ResNet-18 whose fc is an unusual Sequential
    state = torchvision_resnet(18, HEADS[0], 10, device="meta").state_dict()
    del state["fc.weight"], state["fc.bias"]
    state["fc.1.weight"] = torch.empty(10, 512, device="meta")
    # WHEN / THEN the error names what was found
    with pytest.raises(ArchitectureError, match=r"found fc keys: fc\.1\.weight"):
        detect_architecture(state)


def test_missing_unexpected_and_mismatched_keys_are_listed() -> None:
    # GIVEN a ResNet-18 state dict with one key missing, one extra and one wrong shape
    state = torchvision_resnet(18, HEADS[1], 10, device="meta").state_dict()
    del state["layer3.0.bn1.running_var"]
    state["layer3.0.extra.weight"] = torch.empty(1, device="meta")
    state["fc.0.bias"] = torch.empty(64, device="meta")
    # WHEN / THEN the error lists all three, by name and shape
    with pytest.raises(ArchitectureError) as caught:
        detect_architecture(state)
    message = str(caught.value)
    assert "missing keys (1): layer3.0.bn1.running_var" in message
    assert "unexpected keys (1): layer3.0.extra.weight" in message
    assert "fc.0.bias: weights [64], model [128]" in message


def test_depth_given_by_flag_that_does_not_fit_is_explained() -> None:
    # GIVEN ResNet-18 weights
    state = torchvision_resnet(18, HEADS[0], 10, device="meta").state_dict()
    # WHEN they are checked against a ResNet-34
    with pytest.raises(ArchitectureError) as caught:
        check_state_dict(Architecture(depth=34), 10, state)
    # THEN the message names the target and the missing blocks, shortened
    message = str(caught.value)
    assert message.startswith("weights do not fit resnet34 with head Linear and 10 classes")
    assert "missing keys" in message and "layer1.2.conv1.weight" in message and "more)" in message


def test_serving_modules_do_not_import_torchvision() -> None:
    # GIVEN a fresh interpreter
    code = ("import sys, model_store.resnet, model_store.preprocess, model_store.weights; "
            "print('torchvision' in sys.modules)")
    # WHEN it imports what serving uses
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=120, check=True)
    # THEN torchvision was never imported
    assert result.stdout.strip() == "False"
