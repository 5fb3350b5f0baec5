"""Our preprocessing against torchvision's transforms on the same PIL images: the same bits."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from model_store.manifest import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from model_store.preprocess import crop_box, draft_size, to_array, to_tensor

REPO_ROOT = Path(__file__).resolve().parents[2]

ODD_SIZES = [(301, 197), (197, 301), (225, 223), (1001, 777), (100, 60), (224, 224), (256, 257)]


def noisy_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A gradient plus noise: neighbouring pixels differ, so any resampling difference shows."""
    rng = np.random.default_rng(seed + width * 7 + height)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) % 256], axis=-1)
    pixels = np.clip(base + rng.integers(-40, 41, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def reference_pipeline(spec: Preprocessing) -> transforms.Compose:
    """The torchvision transforms a training script would have written for `spec`."""
    modes = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC,
             "nearest": transforms.InterpolationMode.NEAREST}
    size = spec.size if spec.resize_mode == "exact" else spec.size[0]
    steps: list[object] = [transforms.Resize(size, interpolation=modes[spec.interpolation])]
    if spec.crop is not None:
        steps.append(transforms.CenterCrop(spec.crop))
    steps.append(transforms.ToTensor())
    if spec.mean is not None:
        steps.append(transforms.Normalize(spec.mean, spec.std))
    return transforms.Compose(steps)


@pytest.mark.parametrize("preset", ["resize224", "imagenet"])
@pytest.mark.parametrize(("width", "height"), ODD_SIZES)
def test_presets_equal_torchvision(preset: str, width: int, height: int) -> None:
    # GIVEN an odd-sized RGB image and a preset
    image, spec = noisy_image(width, height), Preprocessing.preset(preset)
    # WHEN both pipelines turn it into the model's input
    expected, got = reference_pipeline(spec)(image), to_array(image, spec)
    # THEN shapes, dtype and every bit agree
    assert got.shape == expected.shape == (3, 224, 224)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, expected.numpy())


@pytest.mark.parametrize(
    "spec",
    [
        Preprocessing(resize_mode="exact", size=(200, 150), interpolation="bicubic"),
        Preprocessing(resize_mode="exact", size=(97, 131), interpolation="nearest"),
        Preprocessing(resize_mode="shorter_side", size=(160,), crop=200),  # crop larger than the short side
        Preprocessing(resize_mode="shorter_side", size=(150,), crop=151, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        Preprocessing(resize_mode="exact", size=(120, 90), crop=101),  # pads one edge, crops the other
    ],
    ids=["bicubic", "nearest", "crop-over-short-side", "odd-crop-normalized", "exact-then-crop"],
)
@pytest.mark.parametrize(("width", "height"), [(301, 197), (197, 301)])
def test_other_specs_equal_torchvision(spec: Preprocessing, width: int, height: int) -> None:
    # GIVEN an odd-sized image and a less common preprocessing
    image = noisy_image(width, height, seed=3)
    # WHEN both pipelines run
    expected, got = reference_pipeline(spec)(image), to_array(image, spec)
    # THEN they agree to the bit, padding included
    assert got.shape == expected.shape
    assert np.array_equal(got, expected.numpy())


@pytest.mark.parametrize(("width", "height"), [(576, 432), (538, 870), (1001, 777), (301, 197)])
def test_a_reduced_image_resamples_only_the_crop_within_one_level_of_the_exact_path(
        width: int, height: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an image the JPEG decoder already reduced, and the imagenet preset (resize 256, crop 224)
    image, spec = noisy_image(width, height, seed=5), Preprocessing.preset("imagenet")
    exact = to_array(image, spec)
    resizes: list[tuple[object, ...]] = []
    original = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        resizes.append((size, kwargs.get("box")))
        return original(self, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", spy)
    # WHEN it is preprocessed without the bit-exact requirement
    fast = to_array(image, spec, exact=False)
    # THEN Pillow resampled only the 224x224 crop, once
    assert len(resizes) == 1 and resizes[0][0] == (224, 224) and resizes[0][1] is not None
    # AND the shape and layout are the model's, and no value is more than one level (1/255) away
    assert fast.shape == exact.shape == (3, 224, 224) and fast.flags.c_contiguous and fast.dtype == np.float32
    levels = np.abs(fast - exact) * np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1) * 255
    assert levels.max() <= 1.0 + 1e-3
    # AND the crop is where torchvision puts it (a shifted or mirrored crop would differ by far more)
    assert np.mean(levels > 0.5) < 0.25


@pytest.mark.parametrize(
    "spec",
    [Preprocessing(resize_mode="shorter_side", size=(160,), crop=200),  # the crop pads: exact path
     Preprocessing.preset("resize224")],  # no crop: exact path
    ids=["crop-over-short-side", "no-crop"],
)
def test_a_reduced_image_keeps_the_exact_path_where_there_is_no_crop_inside_the_image(spec: Preprocessing) -> None:
    # GIVEN a preprocessing whose crop pads, or that has no crop
    image = noisy_image(640, 480, seed=6)
    # WHEN / THEN exact=False changes nothing: every bit is torchvision's
    assert np.array_equal(to_array(image, spec, exact=False), reference_pipeline(spec)(image).numpy())


def test_non_rgb_input_is_converted_first() -> None:
    # GIVEN a greyscale image
    grey = noisy_image(150, 120).convert("L")
    # WHEN it is preprocessed
    got = to_tensor(grey, Preprocessing.preset("resize224"))
    # THEN it is treated as the RGB image it converts to
    expected = reference_pipeline(Preprocessing.preset("resize224"))(grey.convert("RGB"))
    assert torch.equal(got, expected)


def test_input_image_is_not_modified() -> None:
    # GIVEN an image the right size already (no resize, so the tensor is made from its own bytes)
    image = noisy_image(224, 224)
    before = image.tobytes()
    # WHEN it is preprocessed with normalization
    to_tensor(image, Preprocessing(resize_mode="exact", size=(224, 224), mean=(0.5,) * 3, std=(0.2,) * 3))
    # THEN its pixels are untouched
    assert image.tobytes() == before


@pytest.mark.parametrize(
    ("width", "height", "crop", "box"),
    [(256, 341, 224, (16, 58, 240, 282)), (256, 257, 224, (16, 16, 240, 240)), (200, 300, 223, (-11, 38, 212, 261))],
)
def test_crop_box_rounds_and_pads_like_torchvision(width: int, height: int, crop: int,
                                                   box: tuple[int, int, int, int]) -> None:
    # GIVEN / WHEN a centre crop box is computed
    # THEN it follows torchvision: round half to even when cropping, floor of half the excess when padding
    assert crop_box(width, height, crop) == box


def test_draft_size_exact_is_the_target() -> None:
    # GIVEN / WHEN / THEN an exact resize may decode down to exactly its (width, height)
    assert draft_size(Preprocessing.preset("resize224")) == (224, 224)
    assert draft_size(Preprocessing(resize_mode="exact", size=(200, 300))) == (300, 200)


def test_draft_size_shorter_side_keeps_the_shorter_side() -> None:
    # GIVEN a 1600x1200 JPEG and the imagenet preset (shorter side 256)
    spec = Preprocessing.preset("imagenet")
    jpeg = noisy_image(1600, 1200)
    buffer = io.BytesIO()
    jpeg.save(buffer, format="JPEG")
    decoded = Image.open(buffer)
    # WHEN the decoder is allowed to reduce to draft_size
    decoded.draft("RGB", draft_size(spec))
    # THEN it did reduce, but the shorter side still covers the resize
    assert decoded.size[0] < 1600 and min(decoded.size) >= 256
    assert to_tensor(decoded.convert("RGB"), spec).shape == (3, 224, 224)


@pytest.mark.parametrize("preset", ["resize224", "imagenet"])
def test_to_tensor_is_to_array_as_a_tensor(preset: str) -> None:
    # GIVEN an image and a preset (training and int8 calibration still want torch tensors)
    image, spec = noisy_image(333, 250, seed=5), Preprocessing.preset(preset)
    # WHEN it is preprocessed both ways
    tensor, array = to_tensor(image, spec), to_array(image, spec)
    # THEN the tensor is the same float32 [3, H, W], contiguous, bit for bit
    assert tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert np.array_equal(tensor.numpy(), array)


def test_preprocessing_does_not_import_torch() -> None:
    # GIVEN a fresh interpreter (a runtime serving an ONNX variant must never import torch)
    code = ("import sys; from PIL import Image; "
            "from model_store.manifest import Preprocessing; from model_store.preprocess import to_array; "
            "to_array(Image.new('RGB', (300, 200)), Preprocessing.preset('imagenet')); "
            "print('torch' in sys.modules)")
    # WHEN it imports the preprocessing and preprocesses an image
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=120, check=True)
    # THEN torch was never imported
    assert result.stdout.strip() == "False"
