"""A torchvision-compatible ResNet that serving can build without importing torchvision.

`import torchvision` costs about 1.3 s of cold start (it pulls in `torch._dynamo`), so the
loader builds the network here instead. Module names, parameter shapes and the forward pass
match `torchvision.models.resnetNN` exactly (a unit test compares logits), so a state dict
saved from torchvision loads strictly. Only `fc` differs: it is the manifest's `Head`.

Building on the `meta` device allocates nothing; the loader then assigns the safetensors
tensors with `load_state_dict(..., assign=True)`, which is what keeps cold start short.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from model_store.exceptions import ArchitectureError
from model_store.manifest import Architecture, Head

# depth -> (block type, blocks per layer), as in torchvision.models.resnet
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}
_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
_MAX_LISTED = 8


def feature_count(depth: int) -> int:
    """Width of the pooled features that feed `fc`: 512 for basic blocks, 2048 for bottlenecks."""
    block, _ = _layout(depth)
    return 512 * _EXPANSION[block]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "ResNet v1.5"), 1x1 expand (ResNet-50+)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """The torchvision ResNet trunk (stem, four stages, global average pool) plus a head `fc`."""

    def __init__(self, depth: int, fc: nn.Module) -> None:
        super().__init__()
        block_name, blocks = _layout(depth)
        block = BasicBlock if block_name == "basic" else Bottleneck
        self.depth = depth
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = fc

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, count: int,
                    stride: int) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, count))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def build_head(head: Head, features: int, num_classes: int) -> nn.Module:
    """`fc` as the manifest describes it; Sequential indices match a hand-written torchvision head."""
    if head.type == "linear":
        return nn.Linear(features, num_classes)
    hidden = int(head.hidden or 0)
    layers: list[nn.Module] = [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
    if head.dropout:
        layers.append(nn.Dropout())  # the rate is irrelevant: it is an identity in eval mode
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


def build_model(arch: Architecture, num_classes: int, device: str | torch.device = "cpu") -> ResNet:
    """Build the network for `arch` with `num_classes` outputs.

    On a real device the weights are initialised as torchvision does (so the model can also be
    trained). On `meta` nothing is allocated or initialised: load weights with
    `model.load_state_dict(state_dict, assign=True)`.
    """
    if num_classes < 1:
        raise ArchitectureError(f"a model needs at least one class, not {num_classes}")
    with torch.device(device):
        model = ResNet(arch.depth, build_head(arch.head, feature_count(arch.depth), num_classes))
    if torch.device(device).type != "meta":
        _init_like_torchvision(model)
    return model


def detect_architecture(state_dict: Mapping[str, Tensor]) -> tuple[Architecture, int]:
    """Read depth, head and class count from state-dict keys and shapes, then check every key fits.

    Depth comes from the number of blocks per stage (`layerN.K.` keys) and the block type
    (a `conv3` means bottleneck); the head from the `fc.*` keys. Raises ArchitectureError
    naming what does not match.
    """
    blocks = _blocks_per_layer(state_dict)
    block_name = "bottleneck" if any(k.startswith("layer1.0.conv3.") for k in state_dict) else "basic"
    depth = next((d for d, layout in RESNET_LAYOUTS.items() if layout == (block_name, blocks)), None)
    if depth is None:
        known = ", ".join(f"resnet{d} {b} {list(n)}" for d, (b, n) in RESNET_LAYOUTS.items())
        raise ArchitectureError(
            f"{block_name} blocks per layer {list(blocks)} match no torchvision ResNet (known: {known})"
        )
    head, num_classes = _detect_head(state_dict)
    arch = Architecture(depth=depth, head=head)
    check_state_dict(arch, num_classes, state_dict)
    return arch, num_classes


def check_state_dict(arch: Architecture, num_classes: int, state_dict: Mapping[str, Tensor]) -> None:
    """Raise ArchitectureError listing missing keys, unexpected keys and shape mismatches, if any.

    Compared against a `meta` model, so it costs no memory and gives a clearer message than
    `load_state_dict`'s, before anything is loaded.
    """
    expected = {k: tuple(v.shape) for k, v in build_model(arch, num_classes, device="meta").state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: weights {list(got[k])}, model {list(expected[k])}"
              for k in expected if k in got and got[k] != expected[k]]
    problems = [f"{title} ({len(items)}): {_listing(items)}"
                for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", shapes)) if items]
    if problems:
        raise ArchitectureError(
            f"weights do not fit {_describe(arch, num_classes)}: " + "; ".join(problems)
        )


def _layout(depth: int) -> tuple[str, tuple[int, int, int, int]]:
    try:
        return RESNET_LAYOUTS[depth]
    except KeyError:
        raise ArchitectureError(f"unsupported ResNet depth {depth}: expected one of {sorted(RESNET_LAYOUTS)}") from None


def _blocks_per_layer(state_dict: Mapping[str, Tensor]) -> tuple[int, int, int, int]:
    highest = {layer: -1 for layer in "1234"}
    for key in state_dict:
        match = _LAYER_KEY.match(key)
        if match:
            highest[match[1]] = max(highest[match[1]], int(match[2]))
    absent = [f"layer{n}" for n, top in highest.items() if top < 0]
    if absent:
        sample = _listing(list(state_dict)[:_MAX_LISTED])
        raise ArchitectureError(
            f"not a torchvision ResNet state dict: no keys for {', '.join(absent)} (first keys: {sample})"
        )
    return (highest["1"] + 1, highest["2"] + 1, highest["3"] + 1, highest["4"] + 1)


def _detect_head(state_dict: Mapping[str, Tensor]) -> tuple[Head, int]:
    fc_keys = sorted(k for k in state_dict if k.startswith("fc."))
    if "fc.weight" in state_dict:
        return Head(type="linear"), _rows(state_dict, "fc.weight")
    if "fc.0.weight" in state_dict:
        hidden = _rows(state_dict, "fc.0.weight")
        if "fc.2.weight" in state_dict:
            return Head(type="mlp", hidden=hidden, dropout=False), _rows(state_dict, "fc.2.weight")
        if "fc.3.weight" in state_dict:
            return Head(type="mlp", hidden=hidden, dropout=True), _rows(state_dict, "fc.3.weight")
    raise ArchitectureError(
        "unrecognised classifier head: expected fc.weight (Linear) or fc.0.weight with fc.2.weight "
        "(Linear, ReLU, Linear) or fc.3.weight (Linear, ReLU, Dropout, Linear); "
        f"found fc keys: {_listing(fc_keys) if fc_keys else 'none'}"
    )


def _rows(state_dict: Mapping[str, Tensor], key: str) -> int:
    weight = state_dict[key]
    if weight.dim() != 2:
        raise ArchitectureError(f"{key} should be a 2-D Linear weight, but has shape {list(weight.shape)}")
    return int(weight.shape[0])


def _describe(arch: Architecture, num_classes: int) -> str:
    head = arch.head
    if head.type == "linear":
        shape = "Linear"
    else:
        shape = f"Linear({head.hidden}), ReLU, {'Dropout, ' if head.dropout else ''}Linear"
    return f"{arch.label} with head {shape} and {num_classes} classes"


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _init_like_torchvision(model: nn.Module) -> None:
    """torchvision's ResNet initialisation (He-normal convs, unit BatchNorm); Linear keeps PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
