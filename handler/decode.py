"""Untrusted bytes -> an RGB PIL image, or a precise 4xx.

Only formats we mean to serve reach Pillow's parsers (checked by magic bytes, then Pillow is told
the format), the decompression-bomb guard stays on, truncated files are refused rather than
half-decoded, EXIF orientation is applied, and every pixel layout ends as 8-bit RGB (alpha
composited on white). Large JPEGs are decoded at reduced size (DCT scaling) when the photo is at
least twice the model's input: the cheapest pixels are the ones never decoded.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from handler.config import DEFAULT_MAX_IMAGE_PIXELS
from handler.exceptions import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

SERVED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


def register_served_formats() -> None:
    """Import the served formats' Pillow plugins now, at init, and only those.

    Left to Pillow, the first request pays for importing them (about 20 ms), and the first WebP
    for `Image.init()`, which imports all ~40 plugins (TIFF, PSD, ... included).
    """
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401


register_served_formats()
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}


def configure_pillow(max_image_pixels: int) -> None:
    """Make Pillow's own bomb guard use our limit, and its warning band a refusal, process-wide.

    Pillow warns between `MAX_IMAGE_PIXELS` and twice that and raises above. The "error" filter
    for `DecompressionBombWarning` is installed here, once, for the whole process (warning
    filters are global state: setting them per call, with `warnings.catch_warnings`, is not
    thread-safe, and batches decode on worker threads). It only makes Pillow stop earlier:
    `decode` refuses the warning band itself, from the header, with or without the filter.
    """
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def sniff_format(data: bytes) -> str | None:
    """The image format named by the leading magic bytes, or None when they name no image we know.

    Formats we recognise but do not serve (TIFF, HEIC/AVIF, JPEG 2000, ICO, PSD) are named too, so
    they get 415 rather than "not an image".
    """
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM") and len(head) >= 18:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return "HEIC"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if head.startswith((b"\x00\x00\x01\x00", b"8BPS")):
        return "ICO/PSD"
    return None


class Decoded(NamedTuple):
    """A decoded image, and whether libjpeg reduced it (DCT scaling) on the way."""

    image: Image.Image
    reduced: bool  # True: not the pixels a full decode gives, so not the pixels training saw either


def decode(
    data: bytes,
    draft: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Decoded:
    """Decode `data` to an RGB image, reducing JPEG decoding toward `draft` = (width, height).

    `reduced` says whether libjpeg decoded at reduced size. Raises `BadRequestError`
    (`not_an_image`), `UnsupportedMediaTypeError` or `PayloadTooLargeError` (`image_too_large`);
    never anything else for any input bytes.

    >>> decode(open("dog.jpg", "rb").read(), draft=(224, 224)).image.mode
    'RGB'
    """
    if not data:
        raise BadRequestError("the image is empty: send the image file's bytes", code="not_an_image")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadRequestError(
            "the body is not an image: expected JPEG, PNG, WebP, GIF or BMP bytes", code="not_an_image"
        )
    if fmt not in SERVED_FORMATS:
        raise UnsupportedMediaTypeError(f"{fmt} images are not served: send JPEG, PNG, WebP, GIF or BMP")
    # Pillow only warns between its MAX_IMAGE_PIXELS and twice that: here the warning band is a
    # refusal too, checked from the header rather than through warning filters (process-wide
    # state, which a decode on another thread must not depend on; see `configure_pillow`).
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        _check_pixels(image, limit)
        orientation = _orientation(image)
        full_size = image.size
        if fmt == "JPEG" and draft is not None:
            _reduce_jpeg(image, draft, orientation)
        reduced = image.size != full_size
        image.load()
        _check_pixels(image, limit)  # a GIF frame may widen the canvas while it loads
        if orientation not in (None, 1):
            ImageOps.exif_transpose(image, in_place=True)
        return Decoded(to_rgb(image), reduced)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLargeError(
            f"the image has more than the {max_pixels:,} pixels this function accepts", code="image_too_large"
        ) from None
    except (BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError):
        raise
    except MemoryError:
        raise PayloadTooLargeError("the image is too large to decode", code="image_too_large") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise many types on malformed input
        raise BadRequestError(
            f"the {fmt} image cannot be decoded ({_reason(exc)})", code="not_an_image"
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: alpha over white, 16-bit scaled (not clipped), CMYK converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = _sixteen_bit_to_gray(image)
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise BadRequestError("the image has no pixels", code="not_an_image")
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"the image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}",
            code="image_too_large",
        )


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation (1-8), read from the header without decoding pixels."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not refuse an otherwise good photo
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _reduce_jpeg(image: Image.Image, draft: tuple[int, int], orientation: int | None) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while both edges stay at least `draft`."""
    target_w, target_h = draft
    if orientation in _SWAPS_AXES:  # the draft target is for the upright image
        target_w, target_h = target_h, target_w
    if image.width >= 2 * target_w and image.height >= 2 * target_h and image.mode in ("RGB", "L"):
        image.draft(image.mode, (target_w, target_h))


def _sixteen_bit_to_gray(image: Image.Image) -> Image.Image:
    """16-bit grayscale -> 8-bit by keeping the high byte (Pillow's own convert clips at 255)."""
    pixels = np.asarray(image)
    scaled = (np.clip(pixels.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    return Image.fromarray(scaled)  # 2-D uint8 -> mode "L"


def _reason(exc: BaseException) -> str:
    """A short, safe reason: Pillow's messages name the problem and never echo the payload."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
