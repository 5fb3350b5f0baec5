"""Image -> model input, exactly as the torchvision transforms used in training, without torch.

The manifest's `Preprocessing` is the contract; this module reproduces torchvision's PIL path
step by step (`Resize` calls `PIL.Image.resize` with the same filter, `CenterCrop` rounds and
pads the same way, `ToTensor` divides by 255, `Normalize` subtracts then divides), so serving
gives the logits training saw, to the bit. Only numpy and Pillow are imported: a process serving
an ONNX variant never imports torch; `to_tensor` imports it when training asks.

It is also the fast path: one resize, a crop that is a view of the resized pixels (not a copy),
and one conversion to float that also reorders HWC to CHW. The conversion runs in numpy, on one
thread: for a 224x224 image torch's thread pool costs more to wake than the work (0.5 ms instead
of 0.25 ms on 2 vCPUs), and IEEE float32 division gives the same bits either way. Resampling only
the crop (Pillow's `resize(box=...)`) saves about 40% of the resize for `imagenet` (0.7 ms on a
576x432 image), but Pillow takes the box in float32, which moves values by one level (up to a
fifth of them, at some image sizes), so it is no longer torchvision's output: it is used only
for an image the JPEG decoder already reduced (`exact=False`), whose pixels are not a full
decode's anyway. A 256-entry lookup table per channel gives the same bits as the division, but
numpy's gather is slower (0.7 ms). Both are in docs/handler.md, "Decoding and preprocessing speed".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from model_store.manifest import Preprocessing

if TYPE_CHECKING:
    import torch

_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resized_size(width: int, height: int, spec: Preprocessing) -> tuple[int, int]:
    """(width, height) after the resize step, computed as torchvision's `Resize` does."""
    if spec.resize_mode == "exact":
        return spec.size[1], spec.size[0]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.size[0], int(spec.size[0] * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """torchvision `CenterCrop` as a PIL box; edges beyond the image are padded with zeros by PIL.

    Where the crop is larger than the image torchvision pads first (floor of half the excess on
    the left/top), otherwise it rounds half the excess to even; both are reproduced per edge.
    """
    def offset(size: int) -> int:
        return -((crop - size) // 2) if crop > size else round((size - crop) / 2.0)

    left, top = offset(width), offset(height)
    return left, top, left + crop, top + crop


def to_array(image: Image.Image, spec: Preprocessing, *, exact: bool = True) -> np.ndarray:
    """An RGB PIL image -> C-contiguous float32 array `[3, H, W]`, the model's input for one image.

    `exact=False` is for an image the decoder already reduced (JPEG DCT scaling), whose pixels
    differ from a full decode's anyway: where the crop lies inside the resized image, only the
    pixels the crop keeps are resampled (Pillow's `resize(box=...)`, about 40% less work). The
    box reaches Pillow as float32, so a value may move by one level (see the module docstring);
    everything else is the exact path.

    >>> to_array(Image.new("RGB", (640, 480)), Preprocessing.preset("imagenet")).shape
    (3, 224, 224)
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = resized_size(image.width, image.height, spec)
    box = None
    if spec.crop is not None and (spec.crop, spec.crop) != (width, height):
        box = crop_box(width, height, spec.crop)
    inside = box is not None and box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
    if (width, height) != image.size:
        if not exact and box is not None and inside:
            image, box = _resample_crop(image, (width, height), box, spec), None
        else:
            image = image.resize((width, height), _PIL_FILTERS[spec.interpolation])
    if box is not None and not inside:
        image, box = image.crop(box), None  # PIL pads the part outside the image with zeros
    pixels = np.asarray(image)  # uint8 [H, W, 3], read only
    if box is not None:
        pixels = pixels[box[1]:box[3], box[0]:box[2]]
    out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    np.divide(pixels.transpose(2, 0, 1), np.float32(255), out=out, dtype=np.float32)  # HWC -> CHW, one pass
    if spec.mean is not None and spec.std is not None:
        out -= np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        out /= np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    return out


def _resample_crop(image: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int],
                   spec: Preprocessing) -> Image.Image:
    """Resize `image` to `size` and crop `box` of it, resampling only the pixels inside `box`.

    The same box in source coordinates at the same scale: Pillow reads the filter's support from
    beyond the box's edges, so the edges are not blurred differently.
    """
    scale_x, scale_y = image.width / size[0], image.height / size[1]
    left, top, right, bottom = box
    return image.resize((right - left, bottom - top), _PIL_FILTERS[spec.interpolation],
                        box=(left * scale_x, top * scale_y, right * scale_x, bottom * scale_y))


def to_tensor(image: Image.Image, spec: Preprocessing) -> torch.Tensor:
    """`to_array` as a torch tensor (sharing its memory), for training."""
    import torch  # here, not at module level: serving an ONNX variant must not pay for it

    return torch.from_numpy(to_array(image, spec))


def draft_size(spec: Preprocessing) -> tuple[int, int]:
    """(width, height) a JPEG decoder may reduce to (`Image.draft`) without starving the resize.

    `draft` keeps both edges at least this large, so an `exact` resize still downsamples to its
    target and a `shorter_side` resize still finds a shorter side of at least `size[0]`.
    """
    if spec.resize_mode == "exact":
        return spec.size[1], spec.size[0]
    return spec.size[0], spec.size[0]
