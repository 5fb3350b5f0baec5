"""int8 post-training static quantization of our ResNet, stored as plain tensors (never a pickle).

Publishing calibrates activation ranges on real images, quantizes weights per output channel
and writes every number the int8 network needs into a safetensors file:

    <conv>.weight             int8 [out, in, kh, kw]     (BatchNorm already folded in)
    <conv>.weight_scale       float64 [out]              (one value for a per-tensor layer)
    <conv>.weight_zero_point  int64 [out]
    <conv>.bias               float32 [out]
    <conv>.scale / .zero_point   float64 [1] / int64 [1]   the conv's output activation
    quant.scale / .zero_point                            the input image
    layerN.K.skip_add_relu.scale / .zero_point           each residual add
    fc.*                      float32: the head stays fp32 (negligible cost, full-precision logits)

plus header metadata (format, engine, weight scheme). Loading rebuilds the quantized modules from
those tensors: nothing is unpickled and no calibration runs at cold start.

Why eager mode on our own modules: the network is ours (`model_store.resnet`), so fusing
Conv+BN+ReLU and making the residual add quantizable is a few lines here, and the result is a
fixed set of modules that can be rebuilt from tensors. FX graph mode is deprecated with it; PT2E
needs `torch.export` at publish and inductor (`torch.compile`) to run fast, which is cold start
we cannot afford. torch 2.14 marks `torch.ao.quantization` deprecated (moving to torchao) but
ships it; the durable part is the file above, not the module classes: only this file maps the
tensors onto torch.ao's kernels, so moving to other int8 kernels changes this file, not the
published versions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq

from model_store.exceptions import ArchitectureError, ChecksumError, VariantError
from model_store.manifest import Architecture
from model_store.resnet import BasicBlock, Bottleneck, ResNet, build_model

INT8_FORMAT_PREFIX = "safetensors-int8-"
FILE_FORMAT = "breedserve-int8"
LAYOUT_VERSION = "1"
ENGINE_PREFERENCE = ("x86", "fbgemm", "onednn", "qnnpack")
_PER_CHANNEL = "per_channel"
_PER_TENSOR = "per_tensor"
_CHEAP_PACKING = "qnnpack"


def int8_format(engine: str) -> str:
    """The manifest `format` of an int8 file: it names the kernel engine its calibration was made for."""
    return f"{INT8_FORMAT_PREFIX}{engine}"


def engine_of(format_name: str) -> str | None:
    """`safetensors-int8-x86` -> `x86`; None for a format that is not int8."""
    if not format_name.startswith(INT8_FORMAT_PREFIX):
        return None
    return format_name[len(INT8_FORMAT_PREFIX):] or None


def supported_engines() -> tuple[str, ...]:
    """Quantized kernel engines this torch build runs on this CPU (x86: x86/fbgemm/onednn; arm64: qnnpack)."""
    return tuple(e for e in torch.backends.quantized.supported_engines if e != "none")


def default_engine() -> str:
    """The engine int8 variants are made for here: `x86` on x86-64, `qnnpack` on arm64."""
    available = supported_engines()
    for engine in ENGINE_PREFERENCE:
        if engine in available:
            return engine
    raise VariantError("this torch build has no quantized engine: int8 variants cannot be made or served")


def check_engine(engine: str) -> str:
    """Refuse an engine this machine cannot run, naming the ones it can."""
    if engine not in supported_engines():
        raise VariantError(
            f"int8 weights for the {engine!r} quantized engine cannot run here (this machine supports "
            f"{', '.join(supported_engines()) or 'none'}): serve another variant, or publish an int8 "
            "variant calibrated for this architecture"
        )
    return engine


@contextmanager
def using_engine(engine: str) -> Iterator[None]:
    """Pack and run quantized kernels with `engine`, restoring the previous engine afterwards."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = check_engine(engine)
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """torch.ao warns that it is deprecated on every call; say it once in the docs, not in every log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r".*(deprecated|reduce_range).*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        yield


# --- the quantizable network -------------------------------------------------------------------

class QuantizableBlock(nn.Module):
    """A ResNet block whose ReLUs are separate modules and whose skip add is a quantizable op.

    It takes over the block's own conv/bn modules (same names, so the same state-dict keys):
    eager-mode quantization needs one ReLU per use to fuse it into its convolution, and
    `FloatFunctional.add_relu` so the residual add gets its own output scale.
    """

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        self.bottleneck = isinstance(block, Bottleneck)
        self.conv1, self.bn1, self.relu1 = block.conv1, block.bn1, nn.ReLU()
        self.conv2, self.bn2 = block.conv2, block.bn2
        if isinstance(block, Bottleneck):
            self.relu2 = nn.ReLU()
            self.conv3, self.bn3 = block.conv3, block.bn3
        self.downsample = block.downsample
        self.skip_add_relu: nnq.FloatFunctional | nnq.QFunctional = nnq.FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        if self.bottleneck:
            out = self.relu2(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        else:
            out = self.bn2(self.conv2(out))
        return self.skip_add_relu.add_relu(out, identity)

    def fusion_groups(self) -> list[list[str]]:
        """Which modules fold into one quantized convolution (names relative to the block)."""
        groups = [["conv1", "bn1", "relu1"]]
        groups += [["conv2", "bn2", "relu2"], ["conv3", "bn3"]] if self.bottleneck else [["conv2", "bn2"]]
        if self.downsample is not None:
            groups.append(["downsample.0", "downsample.1"])
        return groups


class QuantizableResNet(nn.Module):
    """Our ResNet between a QuantStub and a DeQuantStub; the head (`fc`) runs in fp32 after dequantizing."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.quant: nn.Module = torch.ao.quantization.QuantStub()
        self.conv1, self.bn1, self.relu, self.maxpool = model.conv1, model.bn1, model.relu, model.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Sequential(*(QuantizableBlock(cast(BasicBlock | Bottleneck, block)) for block in layer))
            for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
        )
        self.avgpool = model.avgpool
        self.dequant: nn.Module = torch.ao.quantization.DeQuantStub()
        self.fc: nn.Module = model.fc

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.quant(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dequant(torch.flatten(self.avgpool(x), 1))
        return self.fc(x)

    def blocks(self) -> Iterator[tuple[str, QuantizableBlock]]:
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            for position, block in enumerate(layer):
                yield f"layer{index}.{position}", cast(QuantizableBlock, block)

    def fusion_groups(self) -> list[list[str]]:
        groups = [["conv1", "bn1", "relu"]]
        for prefix, block in self.blocks():
            groups += [[f"{prefix}.{name}" for name in group] for group in block.fusion_groups()]
        return groups


# --- publish time: calibrate and convert -------------------------------------------------------

def quantize_static(model: ResNet, calibration: Iterable[Tensor], engine: str) -> QuantizableResNet:
    """Fuse, calibrate on `calibration` batches (`[N, 3, H, W]`, preprocessed) and convert to int8.

    `model` is left untouched (its modules are copied). Activations use the engine's default
    observer (a histogram, which ignores outliers), weights its default (per channel on x86).
    """
    import copy

    from torch.ao.quantization import convert, fuse_modules, get_default_qconfig, prepare

    with _quiet_deprecations(), using_engine(engine):
        qmodel = QuantizableResNet(copy.deepcopy(model)).eval()
        fuse_modules(qmodel, qmodel.fusion_groups(), inplace=True)
        qmodel.qconfig = get_default_qconfig(engine)
        qmodel.fc.qconfig = None  # type: ignore[assignment]  # the head stays fp32
        prepare(qmodel, inplace=True)
        seen = 0
        with torch.inference_mode():
            for batch in calibration:
                qmodel(batch)
                seen += int(batch.shape[0])
        if seen == 0:
            raise VariantError("int8 calibration needs at least one image")
        convert(qmodel, inplace=True)
    return qmodel


def int8_tensors(qmodel: QuantizableResNet) -> tuple[dict[str, Tensor], str]:
    """The converted network as plain tensors (see the module docstring) and its weight scheme."""
    tensors: dict[str, Tensor] = {}
    schemes: set[str] = set()
    for name, module in qmodel.named_modules():
        if isinstance(module, nnq.Conv2d):  # ConvReLU2d included
            weight = module.weight()
            scheme = _scheme(weight)
            schemes.add(scheme)
            tensors[f"{name}.weight"] = weight.int_repr().contiguous()
            if scheme == _PER_CHANNEL:
                scales, zero_points = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
            else:
                scales, zero_points = torch.tensor([weight.q_scale()]), torch.tensor([weight.q_zero_point()])
            tensors[f"{name}.weight_scale"] = scales.to(torch.float64).contiguous()
            tensors[f"{name}.weight_zero_point"] = zero_points.to(torch.int64).contiguous()
            bias = module.bias()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().to(torch.float32).contiguous()
            _activation(tensors, name, module.scale, module.zero_point)
        elif isinstance(module, (nnq.Quantize, nnq.QFunctional)):
            _activation(tensors, name, module.scale, module.zero_point)
    for key, value in qmodel.fc.state_dict().items():
        tensors[f"fc.{key}"] = value.detach().float().contiguous() if value.is_floating_point() else value
    if len(schemes) > 1:
        raise VariantError(f"mixed weight quantization schemes {sorted(schemes)}: expected one")
    return tensors, schemes.pop() if schemes else _PER_CHANNEL


def save_int8(qmodel: QuantizableResNet, path: Path, engine: str) -> None:
    """Write the int8 network as safetensors (atomically), its engine and scheme in the header."""
    from safetensors.torch import save_file

    tensors, scheme = int8_tensors(qmodel)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": FILE_FORMAT, "layout": LAYOUT_VERSION,
                                           "engine": engine, "weight_scheme": scheme})
    tmp.replace(path)


# --- load time: rebuild from tensors ------------------------------------------------------------

def load_int8(arch: Architecture, num_classes: int, path: Path, engine: str) -> QuantizableResNet:
    """Rebuild the int8 network from a verified file; the engine is set for this process.

    Raises VariantError when the engine cannot run here or the file is not a breedserve int8
    file, ArchitectureError when its tensors do not fit `arch`.
    """
    from safetensors import SafetensorError, safe_open

    check_engine(engine)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            header = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise ChecksumError(f"{path} is not a readable safetensors file: {exc}") from exc
    if header.get("format") != FILE_FORMAT or header.get("layout") != LAYOUT_VERSION:
        raise VariantError(f"{path} is not a breedserve int8 file of layout {LAYOUT_VERSION} "
                           f"(header says format={header.get('format')!r}, layout={header.get('layout')!r})")
    if header.get("engine") != engine:
        raise VariantError(f"{path} was calibrated for the {header.get('engine')!r} engine, "
                           f"but the manifest says {engine!r}")
    scheme = header.get("weight_scheme")
    if scheme not in (_PER_CHANNEL, _PER_TENSOR):
        raise VariantError(f"{path} has an unknown weight scheme {scheme!r}")
    with _quiet_deprecations():
        # Module constructors pack a placeholder weight each; qnnpack packs lazily (about 0.3 ms
        # where fbgemm takes tens of ms for a 3x3 layer), and every one is replaced below anyway.
        with using_engine(_CHEAP_PACKING if _CHEAP_PACKING in supported_engines() else engine):
            qmodel = quantized_structure(arch, num_classes)
        # The engine is process-wide: weights are packed for it now and the kernels run with it later.
        torch.backends.quantized.engine = engine
        _fill(qmodel, tensors, scheme, path, arch, num_classes)
    return qmodel.eval()


def quantized_structure(arch: Architecture, num_classes: int) -> QuantizableResNet:
    """The converted network's modules, empty: what `convert` produces, built without calibrating."""
    qmodel = QuantizableResNet(build_model(arch, num_classes, device="meta")).eval()
    for group in qmodel.fusion_groups():
        conv = qmodel.get_submodule(group[0])
        assert isinstance(conv, nn.Conv2d)
        kind = nniq.ConvReLU2d if len(group) == 3 else nnq.Conv2d
        _replace(qmodel, group[0], kind(conv.in_channels, conv.out_channels, conv.kernel_size,
                                         stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                                         groups=conv.groups, bias=True))
        for name in group[1:]:
            _replace(qmodel, name, nn.Identity())
    qmodel.quant = nnq.Quantize(1.0, 0, torch.quint8)
    qmodel.dequant = nnq.DeQuantize()
    for _, block in qmodel.blocks():
        block.skip_add_relu = nnq.QFunctional()
    return qmodel


def _fill(qmodel: QuantizableResNet, tensors: dict[str, Tensor], scheme: str, path: Path,
          arch: Architecture, num_classes: int) -> None:
    """Put every stored number into its module; every tensor must be used and every module filled."""
    where = f"{path} ({arch.label}, {num_classes} classes)"

    def take(key: str, dtype: torch.dtype) -> Tensor:
        if key not in tensors:
            raise ArchitectureError(f"{where} has no {key!r}: it was made for another architecture")
        value = tensors.pop(key)
        if value.dtype != dtype:
            raise VariantError(f"{where}: {key} is {value.dtype}, expected {dtype}")
        return value

    for name, module in qmodel.named_modules():
        if isinstance(module, nnq.Conv2d):
            expected = module.weight().shape
            raw = take(f"{name}.weight", torch.int8)
            if raw.shape != expected:
                raise ArchitectureError(f"{where}: {name}.weight has shape {list(raw.shape)}, "
                                        f"the architecture needs {list(expected)}")
            scales = take(f"{name}.weight_scale", torch.float64)
            zero_points = take(f"{name}.weight_zero_point", torch.int64)
            channels = raw.shape[0] if scheme == _PER_CHANNEL else 1
            if scales.shape != (channels,) or zero_points.shape != (channels,):
                raise VariantError(f"{where}: {name} needs {channels} weight scale(s) and zero point(s)")
            if scheme == _PER_CHANNEL:
                weight = torch._make_per_channel_quantized_tensor(raw, scales, zero_points, 0)
            else:
                weight = torch._make_per_tensor_quantized_tensor(raw, float(scales[0]), int(zero_points[0]))
            module.set_weight_bias(weight, take(f"{name}.bias", torch.float32))
            module.scale, module.zero_point = _take_activation(take, name)
        elif isinstance(module, nnq.Quantize):
            scale, zero_point = _take_activation(take, name)
            module.scale = torch.tensor([scale])
            module.zero_point = torch.tensor([zero_point], dtype=torch.long)
        elif isinstance(module, nnq.QFunctional):
            module.scale, module.zero_point = _take_activation(take, name)
    head = {key.removeprefix("fc."): tensors.pop(key) for key in [k for k in tensors if k.startswith("fc.")]}
    try:
        qmodel.fc.load_state_dict(head, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArchitectureError(f"{where}: the head does not fit: {first}") from exc
    if tensors:
        extra = sorted(tensors)
        raise ArchitectureError(f"{where} holds tensors the architecture has no place for: "
                                f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")


def _take_activation(take: Callable[[str, torch.dtype], Tensor], name: str) -> tuple[float, int]:
    scale = take(f"{name}.scale", torch.float64)
    zero_point = take(f"{name}.zero_point", torch.int64)
    if scale.numel() != 1 or zero_point.numel() != 1 or not float(scale[0]) > 0:
        raise VariantError(f"{name}: the activation needs one positive scale and one zero point")
    return float(scale[0]), int(zero_point[0])


def _activation(tensors: dict[str, Tensor], name: str, scale: float | Tensor,
                zero_point: int | Tensor) -> None:
    tensors[f"{name}.scale"] = torch.tensor([float(scale)], dtype=torch.float64)
    tensors[f"{name}.zero_point"] = torch.tensor([int(zero_point)], dtype=torch.int64)


def _scheme(weight: Tensor) -> str:
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        if weight.q_per_channel_axis() != 0:
            raise VariantError("per-channel weights must be quantized along the output channels (axis 0)")
        return _PER_CHANNEL
    if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return _PER_TENSOR
    raise VariantError(f"unsupported weight quantization scheme {weight.qscheme()}")


def _replace(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)

